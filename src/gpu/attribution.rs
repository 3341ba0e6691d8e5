//! Whether NVML's per-process numbers can be attributed to runs here, and, where they
//! cannot, why: then a run's GPU memory is unknown (never 0) and the VRAM queue goes by
//! the devices' free memory.

use serde::Serialize;

use super::GpuDevice;

/// Whether GPU memory can be attributed to processes, hence to runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// The driver says which process uses how much GPU memory, and those processes are
    /// ones runstream can see.
    pub per_process: bool,
    /// Why not, when `per_process` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which case, when `per_process` is false.
    #[serde(skip)]
    pub(crate) lack: Option<Lack>,
}

/// What keeps GPU memory from being attributed to processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lack {
    /// A device's process list cannot be read: no run's memory is known.
    ListUnreadable,
    /// Processes are listed without their memory (Windows WDDM): the memory of runs with
    /// such a process is unknown; the processes are still matched to runs.
    NoMemoryPerProcess,
    /// No listed pid is visible here (a container with its own PID namespace): no run can
    /// be matched, so no run's memory is known.
    PidsHidden,
}

impl Attribution {
    fn unavailable(reason: String, lack: Lack) -> Attribution {
        Attribution {
            per_process: false,
            reason: Some(format!("per-process attribution unavailable: {reason}")),
            lack: Some(lack),
        }
    }

    /// Whether no run's GPU memory can be known from this reading.
    pub(crate) fn no_run_known(&self) -> bool {
        matches!(self.lack, Some(Lack::ListUnreadable | Lack::PidsHidden))
    }
}

/// Judges one sweep. `visible` says whether a pid names a process runstream can see.
pub(crate) fn judge(devices: &[GpuDevice], visible: impl Fn(u32) -> bool) -> Attribution {
    if let Some(d) = devices.iter().find(|d| d.processes_error.is_some()) {
        let why = d.processes_error.as_deref().unwrap_or_default();
        return Attribution::unavailable(
            format!("GPU {}: its processes cannot be listed ({why})", d.index),
            Lack::ListUnreadable,
        );
    }
    let processes = || devices.iter().flat_map(|d| &d.processes);
    let without_memory = processes()
        .filter(|p| p.used_memory_bytes.is_none())
        .count();
    if without_memory > 0 {
        return Attribution::unavailable(
            format!(
                "the driver reports no GPU memory for {without_memory} of the processes it \
                 lists (as under Windows WDDM, e.g. GeForce cards: only TCC mode reports \
                 it); the GPU memory of a run with such a process is unknown, and runs \
                 waiting for GPU memory go by the devices' free memory"
            ),
            Lack::NoMemoryPerProcess,
        );
    }
    // NVML reports pids of its own (the host's) PID namespace. In a container with a PID
    // namespace of its own none of them names a process here.
    let in_use = devices.iter().any(|d| d.memory_used_bytes > 0);
    let listed = processes().count();
    if in_use && listed > 0 && !processes().any(|p| visible(p.pid)) {
        return Attribution::unavailable(
            format!(
                "none of the {listed} GPU processes NVML lists is visible here (runstream \
                 seems to run in a container with its own PID namespace, and NVML reports \
                 the host's pids); a run's GPU memory is unknown, and runs waiting for GPU \
                 memory go by the devices' free memory"
            ),
            Lack::PidsHidden,
        );
    }
    Attribution {
        per_process: true,
        ..Attribution::default()
    }
}

/// Whether `pid` names a live process runstream can see.
#[cfg(unix)]
pub(crate) fn visible(pid: u32) -> bool {
    crate::process::proc_stat(pid).is_some()
}

/// Windows has no PID namespaces: every pid NVML lists is one of this machine's.
#[cfg(windows)]
pub(crate) fn visible(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuProcess;

    fn device(processes: &[(u32, Option<u64>)]) -> GpuDevice {
        GpuDevice {
            memory_used_bytes: 1 << 30,
            processes: processes
                .iter()
                .map(|&(pid, used_memory_bytes)| GpuProcess {
                    pid,
                    used_memory_bytes,
                    ..GpuProcess::default()
                })
                .collect(),
            ..GpuDevice::default()
        }
    }

    #[test]
    fn each_reason_is_told_and_visible_processes_are_attributed() {
        let mine = |pid| pid == 7;
        assert!(judge(&[device(&[(7, Some(1))])], mine).per_process);
        assert!(judge(&[device(&[])], mine).per_process, "nothing listed");
        let wddm = judge(&[device(&[(7, None), (8, Some(1))])], mine);
        assert!(!wddm.per_process && !wddm.no_run_known());
        assert!(wddm
            .reason
            .unwrap()
            .contains("no GPU memory for 1 of the processes"));
        let hidden = judge(&[device(&[(8, Some(1)), (9, Some(1))])], mine);
        assert!(!hidden.per_process && hidden.no_run_known());
        assert_eq!(hidden.lack, Some(Lack::PidsHidden));
        assert!(hidden
            .reason
            .unwrap()
            .contains("none of the 2 GPU processes"));
        let mut broken = device(&[]);
        broken.processes_error = Some("not supported".into());
        let broken = judge(&[broken], mine);
        assert_eq!(
            broken.reason.as_deref(),
            Some("per-process attribution unavailable: GPU 0: its processes cannot be listed (not supported)")
        );
    }
}
