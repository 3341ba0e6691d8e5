//! GPU awareness: what each NVIDIA GPU is doing, how much GPU memory each run uses, and
//! holding runs that need GPU memory until it is free.
//!
//! Readings come from a [`GpuSource`]: [`NvmlSource`] (feature `gpu`) reads NVML, which is
//! loaded at run time, so the same binary runs on machines without a driver — then every
//! report says why it has no GPU. Tests supply their own source.

mod attribution;
mod monitor;
#[cfg(feature = "gpu")]
mod nvml;

use std::fmt::Debug;
use std::sync::Arc;

use serde::Serialize;

pub use attribution::Attribution;
pub use monitor::{GpuMonitor, RunGpuUsage};
#[cfg(feature = "gpu")]
pub use nvml::{NvmlSource, NVML_LIBRARY_VAR};

/// One GPU as its driver reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GpuDevice {
    /// Index in the driver's order.
    pub index: u32,
    /// Product name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Stable identifier (`GPU-…`).
    pub uuid: String,
    /// Memory in all, bytes.
    pub memory_total_bytes: u64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory free, bytes.
    pub memory_free_bytes: u64,
    /// Percent of the last sample period in which a kernel ran.
    pub utilization_gpu_percent: Option<u32>,
    /// Percent of the last sample period in which memory was read or written.
    pub utilization_memory_percent: Option<u32>,
    /// Degrees Celsius.
    pub temperature_celsius: Option<u32>,
    /// Watts.
    pub power_watts: Option<f64>,
    /// Processes using the GPU for compute.
    pub processes: Vec<GpuProcess>,
    /// Why `processes` could not be read (then it is empty, and says nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes_error: Option<String>,
}

/// A process using a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    /// Its pid (often a grandchild of a run's leader, e.g. `python` under `sh`).
    pub pid: u32,
    /// GPU memory it uses, bytes, when the driver says (not under Windows WDDM).
    pub used_memory_bytes: Option<u64>,
    /// Percent of the last sample period in which its kernels ran on the streaming
    /// multiprocessors, when the driver has a sample for it.
    pub sm_utilization_percent: Option<u32>,
}

/// Why a sample has no reading.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuError {
    /// No GPU can be read here: no library, no driver, no permission (NVML never
    /// started). Runs that need GPU memory fail rather than wait for ever.
    Unavailable(String),
    /// GPUs could be read, but this reading failed (a GPU fell off the bus, a timeout,
    /// an unsupported query): the next sample may work. Runs that need GPU memory wait.
    Reading(String),
}

impl GpuError {
    /// The reason, in words.
    pub fn reason(&self) -> &str {
        match self {
            GpuError::Unavailable(reason) | GpuError::Reading(reason) => reason,
        }
    }

    /// Whether the next sample may work (a [`GpuError::Reading`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, GpuError::Reading(_))
    }
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for GpuError {}

/// Where GPU readings come from. One sweep of every device per call.
///
/// ```
/// use runstream::gpu::{GpuDevice, GpuError, GpuSource};
/// #[derive(Debug)]
/// struct OneFakeCard;
/// impl GpuSource for OneFakeCard {
///     fn sample(&self) -> Result<Vec<GpuDevice>, GpuError> {
///         Ok(vec![GpuDevice { memory_total_bytes: 32 << 30, memory_free_bytes: 32 << 30, ..GpuDevice::default() }])
///     }
/// }
/// ```
pub trait GpuSource: Send + Sync + Debug {
    /// Every device now, or why there is no reading (no driver, no permission, a GPU
    /// lost, …).
    fn sample(&self) -> Result<Vec<GpuDevice>, GpuError>;
}

/// A source that never has a GPU, and says why.
#[derive(Debug)]
pub struct NoGpu(pub String);

impl GpuSource for NoGpu {
    fn sample(&self) -> Result<Vec<GpuDevice>, GpuError> {
        Err(GpuError::Unavailable(self.0.clone()))
    }
}

/// NVML when built with the `gpu` feature (the library named by `RUNSTREAM_NVML_LIBRARY`
/// when set, else the driver's), else a source that says so.
pub fn default_source() -> Arc<dyn GpuSource> {
    #[cfg(feature = "gpu")]
    return Arc::new(NvmlSource::from_env());
    #[cfg(not(feature = "gpu"))]
    return Arc::new(NoGpu("runstream was built without the gpu feature".into()));
}
