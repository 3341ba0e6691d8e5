//! GPU telemetry through NVML (feature `gpu`). NVML is loaded at run time, so the same
//! binary runs on machines without an NVIDIA driver; then every report says why it is
//! unavailable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

/// One GPU as NVML reports it.
#[derive(Clone, Debug, Serialize)]
pub struct GpuDevice {
    /// Index in NVML's order.
    pub index: u32,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Stable identifier.
    pub uuid: String,
    /// Memory in bytes.
    pub memory_total_bytes: u64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory free, bytes.
    pub memory_free_bytes: u64,
    /// Percent of time a kernel ran, last sample period.
    pub utilization_gpu_percent: Option<u32>,
    /// Percent of time memory was read or written.
    pub utilization_memory_percent: Option<u32>,
    /// Degrees Celsius.
    pub temperature_celsius: Option<u32>,
    /// Watts.
    pub power_watts: Option<f64>,
    /// Processes using the GPU for compute.
    pub processes: Vec<GpuProcess>,
}

/// A process on a GPU.
#[derive(Clone, Debug, Serialize)]
pub struct GpuProcess {
    /// Its pid.
    pub pid: u32,
    /// GPU memory it uses, bytes (when the driver says).
    pub used_memory_bytes: Option<u64>,
}

/// A sample of every device, or why there is none.
pub type GpuSample = Result<Vec<GpuDevice>, String>;

/// Reads GPUs through NVML, at most once a second however often it is asked.
pub struct GpuMonitor {
    last: Mutex<Option<(Instant, GpuSample)>>,
    #[cfg(feature = "gpu")]
    nvml: Mutex<Option<Result<nvml_wrapper::Nvml, String>>>,
}

impl Default for GpuMonitor {
    fn default() -> Self {
        GpuMonitor {
            last: Mutex::new(None),
            #[cfg(feature = "gpu")]
            nvml: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GpuMonitor")
    }
}

/// How long a sample is reused.
const SAMPLE_TTL: Duration = Duration::from_secs(1);

impl GpuMonitor {
    /// The current sample (cached for a second).
    pub fn sample(&self) -> GpuSample {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, sample)) = last.as_ref() {
            if at.elapsed() < SAMPLE_TTL {
                return sample.clone();
            }
        }
        let sample = self.read();
        *last = Some((Instant::now(), sample.clone()));
        sample
    }

    #[cfg(not(feature = "gpu"))]
    fn read(&self) -> GpuSample {
        Err("runstream was built without the gpu feature".into())
    }

    #[cfg(feature = "gpu")]
    fn read(&self) -> GpuSample {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let mut nvml = self.nvml.lock().unwrap_or_else(|e| e.into_inner());
        let nvml =
            nvml.get_or_insert_with(|| nvml_wrapper::Nvml::init().map_err(describe_nvml_error));
        let nvml = nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml.device_count().map_err(describe_nvml_error)?;
        let mut devices = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index).map_err(describe_nvml_error)?;
            let memory = device.memory_info().map_err(describe_nvml_error)?;
            let utilization = device.utilization_rates().ok();
            let processes = device
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes),
                        UsedGpuMemory::Unavailable => None,
                    },
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
                power_watts: device.power_usage().ok().map(|mw| mw as f64 / 1000.0),
                processes,
            });
        }
        Ok(devices)
    }

    /// `/api/gpu`: the devices, or `{"available": false, "reason": …}`.
    pub fn report(&self) -> Value {
        match self.sample() {
            Ok(devices) => json!({"available": true, "devices": devices}),
            Err(reason) => json!({"available": false, "reason": reason}),
        }
    }

    /// A short summary for `/api/system/stats`.
    pub fn summary(&self) -> Value {
        match self.sample() {
            Ok(devices) => json!({
                "available": true,
                "count": devices.len(),
                "memory_total_bytes": devices.iter().map(|d| d.memory_total_bytes).sum::<u64>(),
                "memory_used_bytes": devices.iter().map(|d| d.memory_used_bytes).sum::<u64>(),
            }),
            Err(reason) => json!({"available": false, "reason": reason}),
        }
    }

    /// GPU gauges in Prometheus text format (nothing when unavailable).
    pub fn prometheus(&self) -> String {
        let Ok(devices) = self.sample() else {
            return "# HELP runstream_gpu_available Whether NVML could be read.\n# TYPE runstream_gpu_available gauge\nrunstream_gpu_available 0\n".into();
        };
        let mut out = String::from("# HELP runstream_gpu_available Whether NVML could be read.\n# TYPE runstream_gpu_available gauge\nrunstream_gpu_available 1\n");
        out.push_str("# HELP runstream_gpu_memory_used_bytes GPU memory in use.\n# TYPE runstream_gpu_memory_used_bytes gauge\n");
        for d in &devices {
            out.push_str(&format!(
                "runstream_gpu_memory_used_bytes{{gpu=\"{}\"}} {}\n",
                d.index, d.memory_used_bytes
            ));
        }
        out.push_str("# HELP runstream_gpu_memory_total_bytes GPU memory in all.\n# TYPE runstream_gpu_memory_total_bytes gauge\n");
        for d in &devices {
            out.push_str(&format!(
                "runstream_gpu_memory_total_bytes{{gpu=\"{}\"}} {}\n",
                d.index, d.memory_total_bytes
            ));
        }
        out
    }
}

#[cfg(feature = "gpu")]
fn describe_nvml_error(e: nvml_wrapper::error::NvmlError) -> String {
    use nvml_wrapper::error::NvmlError;
    match e {
        NvmlError::LibloadingError(inner) => format!(
            "NVML library not found (libnvidia-ml.so.1; is the NVIDIA driver installed?): {inner}"
        ),
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        other => format!("NVML error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_the_report_says_why() {
        // These machines have no NVIDIA driver; on one that does, the report lists devices.
        let report = GpuMonitor::default().report();
        if report["available"] == false {
            assert!(!report["reason"].as_str().unwrap().is_empty());
        } else {
            assert!(report["devices"].is_array());
        }
    }
}
