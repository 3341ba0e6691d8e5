//! Engine-wide settings; every default is written once, in `impl Default`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::gpu::GpuSource;

/// Settings for an [`Engine`](crate::Engine).
///
/// ```
/// use std::time::Duration;
/// use runstream::EngineConfig;
/// let config = EngineConfig {
///     max_concurrent: 2,
///     log_dir: Some("runstream-data/runs".into()),
///     ..EngineConfig::default()
/// };
/// assert_eq!(config.default_grace, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How many runs may be live at once; the rest wait `queued`, first in first out.
    /// Defaults to the number of CPUs.
    pub max_concurrent: usize,
    /// Where each run's full output goes, as `{run_id}.jsonl`. With it, a subscriber can
    /// start from any seq and lose nothing; without it, evicted entries are gone.
    /// Defaults to `None`.
    pub log_dir: Option<PathBuf>,
    /// Most bytes of one run's log file. A run that reaches it goes on, and the log ends
    /// with a warning entry: later output is kept only in the memory ring, so one chatty
    /// run cannot fill the disk. `None`: no limit. Defaults to 1 GiB (about five million
    /// short lines).
    pub max_log_bytes: Option<u64>,
    /// Most entries kept in memory per run. Defaults to 10 000.
    pub ring_max_entries: usize,
    /// Most bytes kept in memory per run. Defaults to 16 MiB.
    pub ring_max_bytes: usize,
    /// Longer lines are cut into several `end: none` entries. Defaults to 64 KiB.
    pub max_line_bytes: usize,
    /// Time between SIGTERM and SIGKILL when a run does not say otherwise. Defaults to 5 s.
    pub default_grace: Duration,
    /// After the child exits, how long its output pipes may stay open before the run
    /// finishes without them (a process that left the group, e.g. with `setsid`, may hold
    /// them). A deadline counted from the exit: output that keeps coming does not move it
    /// (on Linux, where the pipes' holders can be found; elsewhere it counts from the last
    /// byte). Output left in pipes that nobody else holds is drained whatever the time.
    /// Defaults to 500 ms.
    pub leak_timeout: Duration,
    /// A partial line (no newline yet) is handed out as an `end: none` entry once its
    /// stream has been quiet this long, or at the latest ten times this long after it
    /// started (a child adding a dot every 50 ms is never quiet). Defaults to 100 ms.
    pub partial_flush: Duration,
    /// Where GPU readings come from. Defaults to `None`: NVML when built with the `gpu`
    /// feature (and a source that reports "no GPU" without it).
    pub gpu_source: Option<Arc<dyn GpuSource>>,
    /// How often GPUs are sampled while runs are live or wait for GPU memory. Defaults to
    /// 1 s.
    pub gpu_sample_interval: Duration,
    /// Put each run in a cgroup v2 of its own where one can be made (Linux, as root or
    /// with a delegated cgroup): then no process of a run can get away from a stop, and
    /// runs report CPU time and peak memory. Where none can be made, or with `false`, runs
    /// are held by their process group alone. [`Engine::containment`](crate::Engine::containment)
    /// says which is in use. Defaults to `true`.
    pub cgroups: bool,
    /// Whether metrics are read from the output (see [`crate::metrics`]). Defaults to true.
    pub extract_metrics: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_concurrent: std::thread::available_parallelism().map_or(1, |n| n.get()),
            log_dir: None,
            max_log_bytes: Some(1 << 30),
            ring_max_entries: 10_000,
            ring_max_bytes: 16 * 1024 * 1024,
            max_line_bytes: 64 * 1024,
            default_grace: Duration::from_secs(5),
            leak_timeout: Duration::from_millis(500),
            partial_flush: Duration::from_millis(100),
            gpu_source: None,
            gpu_sample_interval: Duration::from_secs(1),
            cgroups: true,
            extract_metrics: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = EngineConfig::default();
        assert!(c.max_concurrent >= 1);
        assert_eq!(c.log_dir, None);
        assert_eq!(c.max_log_bytes, Some(1 << 30));
        assert_eq!(c.ring_max_entries, 10_000);
        assert_eq!(c.ring_max_bytes, 16 << 20);
        assert_eq!(c.max_line_bytes, 64 << 10);
        assert_eq!(c.default_grace, Duration::from_secs(5));
        assert_eq!(c.leak_timeout, Duration::from_millis(500));
        assert_eq!(c.partial_flush, Duration::from_millis(100));
        assert!(c.gpu_source.is_none());
        assert_eq!(c.gpu_sample_interval, Duration::from_secs(1));
        assert!(c.cgroups);
        assert!(c.extract_metrics);
    }
}
