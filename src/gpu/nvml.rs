//! The NVML source: NVML initialised once (it loads `libnvidia-ml.so.1`, or the library
//! named by `RUNSTREAM_NVML_LIBRARY`), then one sweep of every device per sample.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};

use super::{GpuDevice, GpuError, GpuProcess, GpuSource};

/// The setting that names the NVML library to load instead of the driver's (a path, or a
/// name the dynamic loader finds). The project's tests point it at a scripted NVML.
pub const NVML_LIBRARY_VAR: &str = "RUNSTREAM_NVML_LIBRARY";

/// How long after a failed NVML init the first retry comes; each failure doubles it.
const INIT_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two NVML init attempts.
const INIT_RETRY_MAX: Duration = Duration::from_secs(60);

/// Reads GPUs through NVML. Initialises on first use. A failed init (no library, no
/// driver, no permission) is every sample's answer until it is tried again, after 1 s,
/// then 2, 4, … up to 60 s: a driver that was still starting, or one installed later, is
/// picked up without a restart.
#[derive(Default)]
pub struct NvmlSource {
    /// The library to load; `None`: the driver's.
    library: Option<OsString>,
    nvml: Mutex<Init>,
}

/// Where NVML's initialisation stands.
#[derive(Default)]
enum Init {
    #[default]
    NotTried,
    /// Boxed: the function table is almost 10 KB.
    Ready(Box<Ready>),
    Failed {
        reason: String,
        retry_at: Instant,
        backoff: Duration,
    },
}

/// NVML, started.
struct Ready {
    nvml: Nvml,
    /// Per device, the newest process utilisation sample read (NVML's µs timestamp): the
    /// next sweep asks for newer ones only.
    utilization_seen: HashMap<u32, u64>,
}

impl NvmlSource {
    /// NVML from `library` (a path, or a name the dynamic loader finds) instead of the
    /// driver's `libnvidia-ml.so.1` / `nvml.dll`.
    pub fn with_library(library: impl Into<OsString>) -> NvmlSource {
        NvmlSource {
            library: Some(library.into()),
            ..NvmlSource::default()
        }
    }

    /// NVML from the library named by `RUNSTREAM_NVML_LIBRARY` when it is set (and not
    /// empty), else the driver's.
    pub fn from_env() -> NvmlSource {
        match std::env::var_os(NVML_LIBRARY_VAR) {
            Some(library) if !library.is_empty() => NvmlSource::with_library(library),
            _ => NvmlSource::default(),
        }
    }
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl GpuSource for NvmlSource {
    fn sample(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let mut state = self.nvml.lock().unwrap_or_else(|e| e.into_inner());
        let backoff = match &mut *state {
            Init::Ready(ready) => return ready.sweep(),
            Init::Failed {
                reason, retry_at, ..
            } if Instant::now() < *retry_at => return Err(GpuError::Unavailable(reason.clone())),
            Init::Failed { backoff, .. } => (*backoff * 2).min(INIT_RETRY_MAX),
            Init::NotTried => INIT_RETRY_FIRST,
        };
        match init(self.library.as_deref()) {
            Ok(nvml) => {
                let mut ready = Box::new(Ready {
                    nvml,
                    utilization_seen: HashMap::new(),
                });
                let sample = ready.sweep();
                *state = Init::Ready(ready);
                sample
            }
            Err(reason) => {
                *state = Init::Failed {
                    reason: reason.clone(),
                    retry_at: Instant::now() + backoff,
                    backoff,
                };
                Err(GpuError::Unavailable(reason))
            }
        }
    }
}

impl Ready {
    /// One reading of every device. A device that cannot be read fails the reading,
    /// named; a process list or utilisation that cannot be read is said in the device.
    fn sweep(&mut self) -> Result<Vec<GpuDevice>, GpuError> {
        let nvml = &self.nvml;
        let count = nvml
            .device_count()
            .map_err(|e| reading_error(e, String::new()))?;
        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            let on_device = |e: NvmlError| reading_error(e, format!("GPU {index}: "));
            let device = nvml.device_by_index(index).map_err(on_device)?;
            let memory = memory_info(nvml, &device).map_err(on_device)?;
            let utilization = device.utilization_rates().ok();
            let seen = self.utilization_seen.entry(index).or_default();
            let sm = process_sm_utilization(&device, seen);
            let (processes, processes_error) = match device.running_compute_processes() {
                Ok(processes) => (processes, None),
                Err(e) => (Vec::new(), Some(describe(e))),
            };
            let processes = processes
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_utilization_percent: sm.get(&p.pid).copied(),
                })
                .collect();
            devices.push(GpuDevice {
                index,
                name: device.name().unwrap_or_default(),
                uuid: device.uuid().unwrap_or_default(),
                memory_total_bytes: memory.total,
                memory_used_bytes: memory.used,
                memory_free_bytes: memory.free,
                utilization_gpu_percent: utilization.as_ref().map(|u| u.gpu),
                utilization_memory_percent: utilization.as_ref().map(|u| u.memory),
                temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
                power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                processes,
                processes_error,
            });
        }
        Ok(devices)
    }
}

/// The `nvmlMemory_t` of `nvml.h` (the v1 memory call's answer).
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

/// A device's memory: through `nvmlDeviceGetMemoryInfo_v2` (what nvml-wrapper calls), or,
/// where the driver predates it (before R510: the R470 long-term branch is still common on
/// clusters), through the v1 call.
fn memory_info(nvml: &Nvml, device: &Device<'_>) -> Result<Memory, NvmlError> {
    match device.memory_info() {
        Ok(m) => Ok(Memory {
            total: m.total,
            free: m.free,
            used: m.used,
        }),
        Err(NvmlError::FailedToLoadSymbol(_)) if nvml.lib().nvmlDeviceGetMemoryInfo.is_ok() => {
            let mut memory = Memory::default();
            // SAFETY: the symbol was found (checked above, so the call does not panic);
            // the handle is a live device of this NVML; `memory` has nvmlMemory_t's layout
            // and outlives the call.
            let rc = unsafe {
                nvml.lib()
                    .nvmlDeviceGetMemoryInfo(device.handle(), (&mut memory as *mut Memory).cast())
            };
            nvml_try(rc).map(|()| memory)
        }
        Err(e) => Err(e),
    }
}

/// SM utilisation per pid from the samples newer than `seen` (the newest sample of each
/// pid), and `seen` moved to the newest. Empty when NVML has none (`NotFound`: nothing ran
/// kernels since) or cannot say (not supported): those processes' utilisation is unknown.
fn process_sm_utilization(device: &Device<'_>, seen: &mut u64) -> HashMap<u32, u32> {
    let since = (*seen > 0).then_some(*seen);
    let mut newest: HashMap<u32, (u64, u32)> = HashMap::new();
    for sample in device.process_utilization_stats(since).unwrap_or_default() {
        let entry = newest.entry(sample.pid).or_insert((0, 0));
        if sample.timestamp >= entry.0 {
            *entry = (sample.timestamp, sample.sm_util);
        }
        *seen = (*seen).max(sample.timestamp);
    }
    newest.into_iter().map(|(pid, (_, sm))| (pid, sm)).collect()
}

/// The NVML library. A unix machine with only the driver has `libnvidia-ml.so.1` and not
/// the unversioned `libnvidia-ml.so` (that link comes with development packages), which is
/// all `Nvml::init()` looks for. On Windows the driver installs `nvml.dll` in System32.
#[cfg(not(windows))]
const NVML_LIBRARY: &str = "libnvidia-ml.so.1";
#[cfg(windows)]
const NVML_LIBRARY: &str = "nvml.dll";

/// Loads NVML: `library` when given (and nothing else), else the driver's library name
/// first, then `Nvml::init()`'s default.
fn init(library: Option<&OsStr>) -> Result<Nvml, String> {
    if let Some(library) = library {
        return Nvml::builder()
            .lib_path(library)
            .init()
            .map_err(|e| match e {
                NvmlError::LibloadingError(inner) => format!(
                    "cannot load the NVML library {} (set by {NVML_LIBRARY_VAR}): {inner}",
                    library.to_string_lossy()
                ),
                other => describe(other),
            });
    }
    Nvml::builder()
        .lib_path(OsStr::new(NVML_LIBRARY))
        .init()
        .or_else(|first| Nvml::init().map_err(|_| first))
        .map_err(describe)
}

/// A failed reading: transient, except for a function the library lacks (that one will
/// never be there: the driver is older than what runstream needs).
fn reading_error(e: NvmlError, context: String) -> GpuError {
    let permanent = matches!(e, NvmlError::FailedToLoadSymbol(_));
    let reason = format!("{context}{}", describe(e));
    match permanent {
        true => GpuError::Unavailable(reason),
        false => GpuError::Reading(reason),
    }
}

/// The real reason, in words: library not found, driver not loaded, no permission, a
/// function missing from the library.
fn describe(e: NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => {
            format!(
                "NVML library not found ({NVML_LIBRARY}; is the NVIDIA driver installed?): {inner}"
            )
        }
        NvmlError::FailedToLoadSymbol(inner) => {
            format!(
                "the NVML library lacks a function runstream needs (a driver too old?): {inner}"
            )
        }
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        NvmlError::GpuLost => "the GPU fell off the bus or cannot be reached".into(),
        NvmlError::Timeout => "NVML timed out".into(),
        NvmlError::NotSupported => "not supported on this GPU".into(),
        NvmlError::Unknown => "NVML reported an internal driver error".into(),
        other => format!("NVML error: {other}"),
    }
}
