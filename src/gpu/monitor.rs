//! The GPU monitor: one sampler thread (running only while runs are live or waiting for GPU
//! memory), per-run GPU memory found through process groups, and the memory promised to
//! runs that were just admitted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::attribution::{self, Attribution, Lack};
use super::{GpuDevice, GpuError, GpuSource};
use crate::capture::OutputCapture;
use crate::process;

/// One run's GPU use, for `/api/gpu`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunGpuUsage {
    /// The run.
    pub run_id: String,
    /// GPU memory its process group uses now, bytes; `None`: unknown (the driver does not
    /// attribute memory to processes here: see [`Attribution`]), never a made-up 0.
    pub gpu_memory_bytes: Option<u64>,
    /// The most it has used, bytes, as far as known.
    pub gpu_memory_peak_bytes: Option<u64>,
    /// Percent of the last sample period in which its processes' kernels ran on the
    /// streaming multiprocessors (summed over its processes); `None`: unknown (no sample
    /// since the last sweep: NVML says NotFound when nothing ran).
    pub gpu_utilization_percent: Option<u32>,
}

/// Samples GPUs, maps GPU processes to runs, and keeps GPU memory promises for admission.
pub struct GpuMonitor {
    source: Arc<dyn GpuSource>,
    interval: Duration,
    state: Mutex<MonitorState>,
    wake: Condvar,
    on_sample: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

#[derive(Default)]
struct MonitorState {
    last: Option<(Instant, Result<Vec<GpuDevice>, GpuError>)>,
    /// Live runs by process group id.
    runs: HashMap<u32, TrackedRun>,
    /// Whether the last reading could be attributed to processes.
    attribution: Attribution,
    promises: Vec<Promise>,
    waiting_runs: usize,
    sampler_running: bool,
    stopped: bool,
}

struct TrackedRun {
    group: process::ProcessGroup,
    capture: Arc<OutputCapture>,
    /// What subscribers were last told.
    usage: RunGpuUsage,
    /// One of its processes was on a GPU at the last sample.
    on_gpu: bool,
}

/// GPU memory set aside for an admitted run until the driver shows its processes using
/// memory on that device, so two runs never both count the same free gigabytes.
#[derive(Debug)]
struct Promise {
    ticket: u64,
    pgid: Option<u32>,
    device: u32,
    bytes: u64,
    /// The device's memory in use when the promise was made.
    used_before: u64,
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor")
            .field("source", &self.source)
            .field("interval", &self.interval)
            .finish()
    }
}

/// The answer when there is no reading: why, and whether the next sample may work.
fn unavailable(e: &GpuError) -> Value {
    json!({"available": false, "reason": e.reason(), "transient": e.is_transient()})
}

impl GpuMonitor {
    /// A monitor reading `source`, at most every `interval` while anything needs it.
    pub fn new(source: Arc<dyn GpuSource>, interval: Duration) -> Arc<GpuMonitor> {
        Arc::new(GpuMonitor {
            source,
            interval,
            state: Mutex::new(MonitorState::default()),
            wake: Condvar::new(),
            on_sample: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MonitorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every device, read at most `interval` ago (read now if older).
    pub fn sample(&self) -> Result<Vec<GpuDevice>, GpuError> {
        if let Some((at, sample)) = &self.lock().last {
            if at.elapsed() < self.interval {
                return sample.clone();
            }
        }
        let sample = self.source.sample();
        self.apply(&sample);
        sample
    }

    /// GPU use of every live run that is on a GPU now or was seen using GPU memory.
    pub fn runs(&self) -> Vec<RunGpuUsage> {
        let s = self.lock();
        let mut runs: Vec<_> = s
            .runs
            .values()
            .filter(|r| r.on_gpu || r.usage.gpu_memory_bytes.is_some())
            .map(|r| r.usage.clone())
            .collect();
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        runs
    }

    /// Whether the last reading could be attributed to processes, and why not.
    pub fn attribution(&self) -> Attribution {
        self.lock().attribution.clone()
    }

    /// `/api/gpu`: devices and per-run usage, or `{"available": false, "reason": …,
    /// "transient": …}` (`transient`: the GPUs were readable and the next sample may work).
    pub fn report(&self) -> Value {
        match self.sample() {
            Ok(devices) => json!({
                "available": true,
                "devices": devices,
                "runs": self.runs(),
                "attribution": self.attribution(),
            }),
            Err(e) => unavailable(&e),
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
                "runs_using_gpu": self.runs().len(),
            }),
            Err(e) => unavailable(&e),
        }
    }

    /// GPU gauges in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP runstream_gpu_available Whether GPUs could be read.\n# TYPE runstream_gpu_available gauge\n",
        );
        let Ok(devices) = self.sample() else {
            out.push_str("runstream_gpu_available 0\n");
            return out;
        };
        out.push_str("runstream_gpu_available 1\n");
        let mut gauge = |name: &str, help: &str, value: &dyn Fn(&GpuDevice) -> Option<f64>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for d in &devices {
                if let Some(v) = value(d) {
                    out.push_str(&format!(
                        "{name}{{gpu=\"{}\",uuid=\"{}\"}} {v}\n",
                        d.index, d.uuid
                    ));
                }
            }
        };
        gauge(
            "runstream_gpu_memory_used_bytes",
            "GPU memory in use.",
            &|d| Some(d.memory_used_bytes as f64),
        );
        gauge(
            "runstream_gpu_memory_total_bytes",
            "GPU memory in all.",
            &|d| Some(d.memory_total_bytes as f64),
        );
        gauge(
            "runstream_gpu_utilization_percent",
            "GPU utilisation.",
            &|d| d.utilization_gpu_percent.map(f64::from),
        );
        gauge(
            "runstream_gpu_temperature_celsius",
            "GPU temperature.",
            &|d| d.temperature_celsius.map(f64::from),
        );
        gauge("runstream_gpu_power_watts", "GPU power draw.", &|d| {
            d.power_watts
        });
        // Unknown values are left out, never written as 0.
        let runs = self.runs();
        let mut run_gauge =
            |name: &str, help: &str, value: &dyn Fn(&RunGpuUsage) -> Option<u64>| {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
                for r in &runs {
                    if let Some(v) = value(r) {
                        out.push_str(&format!("{name}{{run_id=\"{}\"}} {v}\n", r.run_id));
                    }
                }
            };
        run_gauge(
            "runstream_run_gpu_memory_bytes",
            "GPU memory used by a run's process group.",
            &|r| r.gpu_memory_bytes,
        );
        run_gauge(
            "runstream_run_gpu_utilization_percent",
            "SM utilisation of a run's processes over the last sample.",
            &|r| r.gpu_utilization_percent.map(u64::from),
        );
        out
    }

    /// Called after every sample (the engine re-checks its GPU queue there).
    pub(crate) fn set_on_sample(&self, hook: Box<dyn Fn() + Send + Sync>) {
        *self.on_sample.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Sets `bytes` aside on the device with the most memory free after earlier promises,
    /// for the run holding `ticket`. `Ok(false)`: none has enough now. `Err`: no reading
    /// now ([`GpuError::Unavailable`]: none ever, no GPU found).
    pub(crate) fn reserve(&self, ticket: u64, bytes: u64) -> Result<bool, GpuError> {
        let devices = self.sample()?;
        if devices.is_empty() {
            return Err(GpuError::Unavailable("no GPU found".into()));
        }
        let mut s = self.lock();
        let best = devices
            .iter()
            .map(|d| {
                let promised: u64 = s
                    .promises
                    .iter()
                    .filter(|p| p.device == d.index)
                    .map(|p| p.bytes)
                    .sum();
                (d, d.memory_free_bytes.saturating_sub(promised))
            })
            .max_by_key(|(_, free)| *free);
        match best {
            Some((device, free)) if free >= bytes => {
                s.promises.push(Promise {
                    ticket,
                    pgid: None,
                    device: device.index,
                    bytes,
                    used_before: device.memory_used_bytes,
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Forgets the promise of a run that will not start after all.
    pub(crate) fn cancel_reservation(&self, ticket: u64) {
        self.lock().promises.retain(|p| p.ticket != ticket);
    }

    /// How many runs wait for GPU memory: while any do, the sampler keeps sampling.
    pub(crate) fn set_waiting(self: &Arc<Self>, waiting: usize) {
        self.lock().waiting_runs = waiting;
        self.ensure_sampler();
    }

    /// Starts attributing GPU memory of process group `pgid` to this run.
    pub(crate) fn track(
        self: &Arc<Self>,
        ticket: u64,
        group: &process::ProcessGroup,
        run_id: &str,
        capture: &Arc<OutputCapture>,
    ) {
        let pgid = group.id();
        {
            let mut s = self.lock();
            for p in s.promises.iter_mut().filter(|p| p.ticket == ticket) {
                p.pgid = Some(pgid);
            }
            s.runs.insert(
                pgid,
                TrackedRun {
                    group: group.clone(),
                    capture: Arc::clone(capture),
                    usage: RunGpuUsage {
                        run_id: run_id.to_string(),
                        ..RunGpuUsage::default()
                    },
                    on_gpu: false,
                },
            );
        }
        self.ensure_sampler();
    }

    /// The run of group `pgid` is over: forget it and what was promised to it.
    pub(crate) fn untrack(&self, pgid: u32) {
        let mut s = self.lock();
        s.runs.remove(&pgid);
        s.promises.retain(|p| p.pgid != Some(pgid));
    }

    /// Stops the sampler thread (engine shutdown).
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    fn ensure_sampler(self: &Arc<Self>) {
        let mut s = self.lock();
        if s.sampler_running || s.stopped || (s.runs.is_empty() && s.waiting_runs == 0) {
            self.wake.notify_all();
            return;
        }
        s.sampler_running = true;
        drop(s);
        let monitor = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("runstream-gpu".into())
            .spawn(move || monitor.sampler());
        if let Err(e) = started {
            log::error!("cannot start the GPU sampler: {e}");
            self.lock().sampler_running = false;
        }
    }

    /// The sampler thread: samples while runs are live or waiting, then exits.
    fn sampler(&self) {
        loop {
            {
                let mut s = self.lock();
                if s.stopped || (s.runs.is_empty() && s.waiting_runs == 0) {
                    s.sampler_running = false;
                    return;
                }
            }
            // A failed sample is retried at the same interval: a transient error (a GPU
            // lost for a moment, a timeout) must not leave readings stale, and a source
            // that cannot start (no driver) answers from memory until its own retry.
            let sample = self.source.sample();
            self.apply(&sample);
            if let Some(hook) = self
                .on_sample
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                hook();
            }
            let s = self.lock();
            if s.stopped {
                continue;
            }
            drop(
                self.wake
                    .wait_timeout(s, self.interval)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
    }

    /// Stores a sample, attributes GPU processes to runs through their process groups,
    /// drops promises the driver now shows in use, and tells runs whose numbers changed.
    fn apply(&self, sample: &Result<Vec<GpuDevice>, GpuError>) {
        let mut changed = Vec::new();
        {
            let mut s = self.lock();
            s.last = Some((Instant::now(), sample.clone()));
            let Ok(devices) = sample else { return };
            let judged = attribution::judge(devices, attribution::visible);
            let mut per_group: HashMap<u32, Seen> = HashMap::new();
            let mut seen_on: HashSet<(u32, u32)> = HashSet::new();
            for d in devices {
                for p in &d.processes {
                    // The process on the GPU is often a grandchild (`sh` → `python`): it
                    // belongs to the run through the run's process group.
                    let owner = s.runs.iter().find(|(_, run)| run.group.contains(p.pid));
                    let Some(pgid) = owner.map(|(pgid, _)| *pgid) else {
                        continue;
                    };
                    per_group.entry(pgid).or_default().add(p);
                    seen_on.insert((pgid, d.index));
                }
            }
            s.promises.retain(|p| {
                let Some(pgid) = p.pgid else { return true };
                if seen_on.contains(&(pgid, p.device)) {
                    return false;
                }
                // The run's processes cannot be seen (other pids): the promise holds until
                // the device's memory in use grew by as much.
                let used = devices.iter().find(|d| d.index == p.device);
                !(judged.lack == Some(Lack::PidsHidden)
                    && used.is_some_and(|d| d.memory_used_bytes >= p.used_before + p.bytes))
            });
            for (pgid, run) in s.runs.iter_mut() {
                let seen = per_group.remove(pgid);
                let usage = run.next_usage(seen.as_ref(), judged.no_run_known());
                run.on_gpu = seen.is_some();
                if usage != run.usage {
                    run.usage = usage.clone();
                    changed.push((Arc::clone(&run.capture), usage));
                }
            }
            s.attribution = judged;
        }
        for (capture, usage) in changed {
            capture.update_gpu(
                usage.gpu_memory_bytes,
                usage.gpu_memory_peak_bytes,
                usage.gpu_utilization_percent,
            );
        }
    }
}

/// What one sample shows of one run's processes.
#[derive(Default)]
struct Seen {
    processes: usize,
    /// Memory of its processes; `None` once one of them has no number.
    bytes: Option<u64>,
    /// SM % summed over its processes that have a sample.
    sm: Option<u32>,
}

impl Seen {
    fn add(&mut self, p: &super::GpuProcess) {
        self.bytes = match self.processes {
            0 => p.used_memory_bytes,
            _ => self.bytes.zip(p.used_memory_bytes).map(|(a, b)| a + b),
        };
        self.processes += 1;
        if let Some(sm) = p.sm_utilization_percent {
            self.sm = Some(self.sm.unwrap_or(0) + sm);
        }
    }
}

impl TrackedRun {
    /// The run's numbers after a sample that showed `seen` of its processes.
    /// `no_run_known`: the reading cannot show any run's memory (see [`Attribution`]).
    fn next_usage(&self, seen: Option<&Seen>, no_run_known: bool) -> RunGpuUsage {
        let before = &self.usage;
        let memory = match seen {
            // Where the driver does not attribute memory (or pids are not ours), a run's
            // memory is unknown: never a made-up 0.
            _ if no_run_known => None,
            // `None` when one of its processes is listed without its memory (WDDM).
            Some(seen) => seen.bytes,
            // Off the GPU: 0 once it was seen using memory, unknown until then.
            None => before.gpu_memory_bytes.map(|_| 0),
        };
        let peak = match (before.gpu_memory_peak_bytes, memory) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        RunGpuUsage {
            run_id: before.run_id.clone(),
            gpu_memory_bytes: memory,
            gpu_memory_peak_bytes: peak,
            gpu_utilization_percent: seen.and_then(|s| s.sm),
        }
    }
}
