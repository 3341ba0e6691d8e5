//! The engine: admission, the registry of runs, and shutdown.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Sender};

use crate::admission::Admission;
use crate::capture::{OutputCapture, Subscription};
use crate::deadline;
use crate::gpu::GpuMonitor;
use crate::process::{Containment, EngineContainment};
use crate::run::{self, Control, RunContext, StopReason};
use crate::{EngineConfig, From, RunSpec, RunState, RunStatus, Timestamp};

/// Runs child processes, captures their output and stops them. Sync and thread-based:
/// each run has one thread that owns its state, plus one reader thread per pipe and one
/// waiter thread.
///
/// Dropping the engine shuts it down (see [`Engine::shutdown`]) with a deadline of
/// `default_grace` + 1 s: every run gets SIGTERM, what is alive at the deadline gets
/// SIGKILL, so no child is left running. Drop does not run when the program dies by a
/// signal: a program that should stop its runs on Ctrl-C or SIGTERM calls
/// [`Engine::shutdown`] from a signal handler thread (the crate's README shows one with
/// signal-hook).
///
/// ```
/// use runstream::{Engine, EngineConfig, RunSpec, RunState};
/// let engine = Engine::new(EngineConfig::default());
/// let run = engine.submit(RunSpec::new("echo").arg("hello")).unwrap();
/// let status = run.wait();
/// assert_eq!(status.status, RunState::Completed);
/// let lines: Vec<String> = run.capture().read(0, 100).0.iter().map(|e| e.message.clone()).collect();
/// assert!(lines.contains(&"hello".to_string()));
/// ```
pub struct Engine {
    config: Arc<EngineConfig>,
    admission: Arc<Admission>,
    gpu: Arc<GpuMonitor>,
    runs: Mutex<Registry>,
    accepting: AtomicBool,
    containment: Arc<EngineContainment>,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, RunHandle>,
    order: Vec<RunHandle>,
}

/// Why [`Engine::submit`] refused a run. (A run that fails to *spawn* is not refused: it
/// is submitted and ends `failed` with an `error_message`.)
#[derive(Debug)]
#[non_exhaustive]
pub enum SubmitError {
    /// The engine is shutting down and admits nothing new.
    ShuttingDown,
    /// The spec cannot be run (empty program, NUL bytes in an argument).
    InvalidSpec(String),
    /// The run's thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::ShuttingDown => write!(f, "the engine is shutting down"),
            SubmitError::InvalidSpec(why) => write!(f, "invalid run spec: {why}"),
            SubmitError::Thread(e) => write!(f, "cannot create a thread for the run: {e}"),
        }
    }
}

impl StdError for SubmitError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SubmitError::Thread(e) => Some(e),
            _ => None,
        }
    }
}

impl Engine {
    /// An engine with `config`. Starts no thread until a run is submitted.
    pub fn new(config: EngineConfig) -> Engine {
        if let Some(dir) = &config.log_dir {
            if let Err(e) = crate::logfile::create_private_dir(dir) {
                log::error!("cannot create log directory {}: {e}", dir.display());
            }
        }
        let source = config
            .gpu_source
            .clone()
            .unwrap_or_else(crate::gpu::default_source);
        let gpu = GpuMonitor::new(source, config.gpu_sample_interval);
        let admission = Arc::new(Admission::new(config.max_concurrent, Arc::clone(&gpu)));
        // New GPU readings may let a run that waits for GPU memory start.
        let weak = Arc::downgrade(&admission);
        gpu.set_on_sample(Box::new(move || {
            if let Some(admission) = weak.upgrade() {
                admission.recheck();
            }
        }));
        let containment = Arc::new(EngineContainment::detect(config.cgroups));
        match &containment.info().reason {
            None => log::debug!(
                "runs are contained in cgroups under {:?}",
                containment.info().cgroup_dir
            ),
            Some(why) => log::debug!("runs are contained in process groups: {why}"),
        }
        Engine {
            admission,
            gpu,
            containment,
            config: Arc::new(config),
            runs: Mutex::new(Registry::default()),
            accepting: AtomicBool::new(true),
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// How runs' processes are held together: in a cgroup of their own each, or by their
    /// process group (job object on Windows), and why.
    pub fn containment(&self) -> &Containment {
        self.containment.info()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits a run. Never blocks: when `max_concurrent` runs are live, the run waits
    /// `queued` and starts when a slot frees, in submission order.
    pub fn submit(&self, spec: RunSpec) -> Result<RunHandle, SubmitError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        spec.validate().map_err(SubmitError::InvalidSpec)?;
        let created_at = Timestamp::now();
        let mut registry = self.registry();
        let run_id = loop {
            let id = new_run_id(created_at, &spec.module_id);
            if !registry.by_id.contains_key(&id) {
                break id;
            }
        };
        let status = RunStatus {
            run_id: run_id.clone(),
            module_id: spec.module_id.clone(),
            status: RunState::Queued,
            cancelling: false,
            created_at,
            started_at: None,
            completed_at: None,
            duration_seconds: None,
            pid: None,
            exit_code: None,
            signal: None,
            error_message: None,
            spawn_error: None,
            // Set by the admission queue while the run waits.
            waiting_for: None,
            progress_percent: None,
            process_start_time: None,
            total_entries: None,
            gpu_memory_bytes: None,
            gpu_memory_peak_bytes: None,
            gpu_utilization_percent: None,
            gpu_memory_mb: spec.gpu_memory_mb,
            labels: spec.labels.clone(),
            containment: None,
            cgroup: None,
            cpu_seconds: None,
            memory_peak_bytes: None,
            metric_patterns: spec.metric_patterns.clone(),
        };
        let status_file = (self.config.log_dir.as_ref()).map(|d| d.join(format!("{run_id}.json")));
        let capture = Arc::new(OutputCapture::new(
            status,
            self.config.ring_max_entries,
            self.config.ring_max_bytes,
            status_file,
        ));
        let queued = Arc::clone(&capture);
        let ticket = self.admission.enqueue(
            spec.gpu_memory_mb,
            Box::new(move |why, announce| {
                queued.update_status(announce, |s| {
                    if s.status == RunState::Queued {
                        s.waiting_for = Some(why.to_string());
                    }
                })
            }),
        );
        let (control_tx, control_rx) = unbounded();
        let handle = RunHandle {
            inner: Arc::new(RunInner {
                id: run_id.clone(),
                capture: Arc::clone(&capture),
                control: control_tx,
            }),
        };
        let ctx = RunContext {
            run_id: run_id.clone(),
            spec,
            config: Arc::clone(&self.config),
            capture,
            control: control_rx,
            admission: Arc::clone(&self.admission),
            gpu: Arc::clone(&self.gpu),
            containment: Arc::clone(&self.containment),
            ticket,
        };
        let ticket_id = ctx.ticket.id;
        if let Err(e) = run::start(ctx, format!("runstream-run-{run_id}")) {
            self.admission.withdraw(ticket_id);
            return Err(SubmitError::Thread(e));
        }
        registry.by_id.insert(run_id, handle.clone());
        registry.order.push(handle.clone());
        Ok(handle)
    }

    /// Adds a finished run whose output lives in a log file (a run loaded again after a
    /// restart). Its entries are read from the file on demand, not held in memory.
    pub fn adopt_finished(
        &self,
        status: RunStatus,
        log_file: &std::path::Path,
    ) -> std::io::Result<RunHandle> {
        let (index, entries) = match crate::logfile::scan_index(log_file) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
            Err(e) => return Err(e),
        };
        let log = crate::logfile::LogLocator {
            path: log_file.to_path_buf(),
            index,
        };
        let (control, _) = unbounded();
        let handle = RunHandle {
            inner: Arc::new(RunInner {
                id: status.run_id.clone(),
                capture: Arc::new(OutputCapture::from_log(status, log, entries)),
                control,
            }),
        };
        let mut registry = self.registry();
        registry
            .by_id
            .insert(handle.id().to_string(), handle.clone());
        registry.order.push(handle.clone());
        Ok(handle)
    }

    /// The run with this id.
    pub fn get(&self, run_id: &str) -> Option<RunHandle> {
        self.registry().by_id.get(run_id).cloned()
    }

    /// Every run, oldest first.
    pub fn list(&self) -> Vec<RunHandle> {
        self.registry().order.clone()
    }

    /// Runs live now (spawned, not finished) and runs waiting for a slot.
    pub fn counts(&self) -> (usize, usize) {
        self.admission.counts()
    }

    /// GPU readings and per-run GPU memory.
    pub fn gpu(&self) -> &Arc<GpuMonitor> {
        &self.gpu
    }

    /// Whether the engine still admits runs.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Stops admitting runs and stops every live or queued run, all in parallel, each with
    /// its own grace period (SIGTERM, then SIGKILL). Whatever is still alive at `deadline`
    /// is killed (SIGKILL to its group). Returns once every run is finished — subscribers
    /// then have their final status — or, if some run cannot be reaped, 5 s after the
    /// deadline, returning `false`.
    pub fn shutdown(&self, deadline: Duration) -> bool {
        self.accepting.store(false, Ordering::SeqCst);
        let runs = self.list();
        for run in &runs {
            if !run.capture().is_finished() {
                let _ = run.inner.control.send(Control::Stop(StopReason::Shutdown));
            }
        }
        let until = deadline::after(deadline);
        let mut all_done = true;
        for run in &runs {
            if run.capture().wait_finished(Some(until)).is_none() {
                let _ = run.inner.control.send(Control::Kill);
                all_done = false;
            }
        }
        if all_done {
            return true;
        }
        let until = Instant::now() + Duration::from_secs(5);
        runs.iter()
            .all(|run| run.capture().wait_finished(Some(until)).is_some())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let grace = self.config.default_grace;
        self.shutdown(grace.saturating_add(Duration::from_secs(1)));
        self.gpu.stop();
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("runs", &self.registry().order.len())
            .finish()
    }
}

/// `run_{YYYYMMDD_HHMMSS}_{module_id}_{8 hex}`.
fn new_run_id(created_at: Timestamp, module_id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; mixing in a counter and the time gives
    // ids that differ across runs and restarts without a random-number crate.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_i64(created_at.as_micros());
    hasher.write_u32(std::process::id());
    let module: String = module_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "run_{}_{module}_{:08x}",
        created_at.compact(),
        hasher.finish() as u32
    )
}

/// A submitted run. Cheap to clone; any thread may hold one.
#[derive(Clone)]
pub struct RunHandle {
    inner: Arc<RunInner>,
}

struct RunInner {
    id: String,
    capture: Arc<OutputCapture>,
    control: Sender<Control>,
}

impl RunHandle {
    /// The run id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// A snapshot of the run's state, times, pid, exit code, signal and error message.
    pub fn status(&self) -> RunStatus {
        self.inner.capture.status()
    }

    /// The run's output buffer (for reading entries without subscribing).
    pub fn capture(&self) -> &Arc<OutputCapture> {
        &self.inner.capture
    }

    /// The run's metric series so far (live while it runs; read from its log for a run
    /// loaded after a restart). See [`crate::metrics`].
    pub fn metrics(&self) -> Vec<crate::metrics::MetricSeries> {
        self.inner.capture.metrics()
    }

    /// Follows the run's output and status from `from` on.
    pub fn subscribe(&self, from: From) -> Subscription {
        OutputCapture::subscribe(&self.inner.capture, from)
    }

    /// Stops the run gracefully; callable from any thread, any number of times.
    ///
    /// A queued run is cancelled without ever being spawned. A live run's **whole process
    /// group** gets SIGTERM, then SIGCONT (so that a stopped process runs its handler): the
    /// child and every descendant that did not leave the group with `setsid`/`setpgid`.
    /// With cgroup containment (Linux, see [`Engine::containment`]) every process of the
    /// run's cgroup gets them too, and none can have left it. On Linux, processes outside
    /// both that hold the run's output pipes get them as well, also after the child has
    /// exited. When the grace period (the spec's, default 5 s) ends, whatever is left gets
    /// SIGKILL (`cgroup.kill` for the cgroup). A descendant that left the group and holds
    /// no pipe is not signalled without a cgroup. The final state is `cancelled`.
    ///
    /// On Windows the child and all its descendants are in a job object none of them can
    /// leave: the graceful step is `CTRL_BREAK_EVENT` to the child's console process group
    /// (processes that started a group of their own, or that have no console in common with
    /// runstream, do not get it), and when the grace period ends the whole job is
    /// terminated (exit code 1). See docs/PLATFORMS.md.
    ///
    /// Returns `false` when the run had already finished (nothing to do).
    pub fn cancel(&self) -> bool {
        if self.inner.capture.is_finished() {
            return false;
        }
        self.inner
            .control
            .send(Control::Stop(StopReason::Cancelled))
            .is_ok()
    }

    /// Sends SIGKILL to the run's process group now (on Windows: terminates its job),
    /// without a grace period (what a second Ctrl-C does). A queued run is cancelled.
    /// Returns `false` when already finished.
    pub fn kill(&self) -> bool {
        if self.inner.capture.is_finished() {
            return false;
        }
        self.inner.control.send(Control::Kill).is_ok()
    }

    /// Blocks until the run is finished; returns its final status.
    pub fn wait(&self) -> RunStatus {
        loop {
            if let Some(status) = self.inner.capture.wait_finished(None) {
                return status;
            }
        }
    }

    /// Blocks until the run is finished or `timeout` passes.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<RunStatus> {
        self.inner
            .capture
            .wait_finished(Some(deadline::after(timeout)))
    }
}

impl fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle")
            .field("id", &self.inner.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_have_the_documented_shape() {
        let t = Timestamp::parse("2026-11-26T08:09:10Z").unwrap();
        let a = new_run_id(t, "train model");
        let b = new_run_id(t, "train model");
        assert_ne!(a, b);
        assert!(a.starts_with("run_20261126_080910_train_model_"), "{a}");
        let hex = a.rsplit('_').next().unwrap();
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
