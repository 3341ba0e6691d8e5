//! A run's state machine states and the snapshot of everything known about a run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{SpawnErrorKind, Timestamp};

/// Where a run is in its life: `queued → running → completed | failed | cancelled | timed_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a free slot (see `EngineConfig::max_concurrent`).
    Queued,
    /// The child was spawned and has not finished.
    Running,
    /// The child exited with code 0.
    Completed,
    /// The child exited non-zero or by a signal it was not sent by us, or could not start.
    Failed,
    /// Stopped by `cancel()` (or by engine shutdown).
    Cancelled,
    /// Stopped because it ran past its timeout.
    TimedOut,
}

impl RunState {
    /// Whether the run is over (no more output will come).
    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }

    /// The name used in JSON: `queued`, `running`, `completed`, `failed`, `cancelled`,
    /// `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed_out",
        }
    }

    /// Every state, in lifecycle order.
    pub const ALL: [RunState; 6] = [
        RunState::Queued,
        RunState::Running,
        RunState::Completed,
        RunState::Failed,
        RunState::Cancelled,
        RunState::TimedOut,
    ];

    /// Parses the JSON name back.
    pub fn parse(name: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A snapshot of a run: its state, times, process and outcome.
///
/// Taken with [`RunHandle::status`](crate::RunHandle::status); subscribers also receive one
/// on every change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// The run id, `run_{YYYYMMDD_HHMMSS}_{module_id}_{8 hex}`.
    pub run_id: String,
    /// The module this run came from (`cmd` for a raw command).
    pub module_id: String,
    /// Current state.
    pub status: RunState,
    /// True while a stop was asked for and the process group has not finished yet.
    pub cancelling: bool,
    /// When the run was submitted.
    pub created_at: Timestamp,
    /// When the child was spawned (or the spawn attempted).
    pub started_at: Option<Timestamp>,
    /// When the run finished.
    pub completed_at: Option<Timestamp>,
    /// Seconds from start (or creation, if it never started) to completion or now.
    pub duration_seconds: Option<f64>,
    /// The child's pid, which is also its process group id.
    pub pid: Option<u32>,
    /// The child's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended the child, when one did.
    pub signal: Option<i32>,
    /// Why the run failed or stopped: the spawn error, or the last lines of stderr
    /// (at most 500 characters).
    pub error_message: Option<String>,
    /// Why the run could not be started, when it could not: its program or working
    /// directory is missing, its interpreter is, the system is out of processes. The
    /// `error_message` says it in words.
    #[serde(default)]
    pub spawn_error: Option<SpawnErrorKind>,
    /// Why a queued run is still waiting: `"slot"` (a free concurrency slot),
    /// `"gpu_memory"` (enough free GPU memory), or `"gpu_memory: REASON"` while the GPUs
    /// cannot be read (a GPU lost, a timeout) and the run waits for the next reading.
    pub waiting_for: Option<String>,
    /// The last progress percentage the run printed (`45%` in a `\r` update or in a line
    /// that mentions progress), if any.
    pub progress_percent: Option<f64>,
    /// GPU memory the run's process group uses now, bytes (known once a GPU process of
    /// the run was seen; unknown where the driver does not attribute memory to
    /// processes, e.g. Windows WDDM or a container with its own PID namespace).
    #[serde(default)]
    pub gpu_memory_bytes: Option<u64>,
    /// The most GPU memory the run's process group used, bytes.
    #[serde(default)]
    pub gpu_memory_peak_bytes: Option<u64>,
    /// SM utilisation of the run's processes over the last GPU sample, percent (unknown
    /// when the driver has no sample for them).
    #[serde(default)]
    pub gpu_utilization_percent: Option<u32>,
    /// GPU memory (MiB) the run asked to have free before it starts (0: none).
    #[serde(default)]
    pub gpu_memory_mb: u64,
    /// When the child started, in clock ticks after boot (`/proc/PID/stat` field 22).
    /// With the pid it names the process uniquely, so after a restart a reused pid is
    /// never signalled.
    #[serde(default)]
    pub process_start_time: Option<u64>,
    /// Labels from the `RunSpec`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many entries the run made, once it is finished (`None` before). The log file
    /// may hold fewer, when it reached `EngineConfig::max_log_bytes`.
    #[serde(default)]
    pub total_entries: Option<u64>,
    /// What held the run's processes together: `cgroup`, `process_group` or `job_object`
    /// (see [`Containment`](crate::Containment)); `None` until it is spawned.
    #[serde(default)]
    pub containment: Option<String>,
    /// The run's own cgroup (kind `cgroup`), written before the child is spawned, so that
    /// after a crash whatever is left in it can be found and killed.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// CPU time of all the run's processes, seconds (`cpu.stat` of its cgroup), once it is
    /// finished; `None` without a cgroup.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// The most memory the run's processes used at once, bytes (`memory.peak` of its
    /// cgroup), once it is finished; `None` without the memory controller.
    #[serde(default)]
    pub memory_peak_bytes: Option<u64>,
    /// The run's own metric patterns (from `RunSpec::metric_pattern`), kept so that its
    /// metrics can be read again from its log after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_patterns: Vec<String>,
}

impl RunStatus {
    /// Seconds the run took (or has taken so far).
    pub(crate) fn refresh_duration(&mut self) {
        let from = self.started_at.unwrap_or(self.created_at);
        let to = self.completed_at.unwrap_or_else(Timestamp::now);
        self.duration_seconds = Some(to.seconds_since(from).max(0.0));
    }
}
