//! One run's thread: the state machine. It waits for a slot, spawns the child, then
//! `select!`s over output chunks, the child's exit, control messages and timers, turning
//! bytes into entries and moving the run from `queued` to its final state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, Receiver, Sender};
use shared_child::SharedChild;

use crate::admission::{Admission, Ticket};
use crate::capture::OutputCapture;
use crate::deadline;
use crate::gpu::GpuMonitor;
use crate::logfile::LogWriter;
use crate::metrics::{Joiner, MetricRules};
use crate::process::{self, EngineContainment, RunProcesses, Signal};
use crate::spawn_error::SpawnError;
use crate::{
    EngineConfig, Entry, Level, Line, LineEnd, LineSplitter, RunSpec, RunState, Stream, Timestamp,
};

/// Asks a run to stop. Sent on the run's control channel from any thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Graceful stop: SIGTERM to the group, SIGKILL after the grace period.
    Stop(StopReason),
    /// SIGKILL to the group now.
    Kill,
}

/// Why a run is being stopped; decides its final state and the words in its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    Cancelled,
    Shutdown,
    TimedOut,
}

/// What the reader threads send. A chunk carries the time its `read()` returned: the two
/// readers send on one channel, and one may be descheduled between its read and its send,
/// so the channel's order alone could put a later stdout read before an earlier stderr
/// one. The run thread orders what is waiting by this time (see `on_input`).
enum Input {
    Chunk(Stream, Vec<u8>, Timestamp),
    Eof(Stream),
}

impl Input {
    fn stream(&self) -> Stream {
        match self {
            Input::Chunk(stream, _, _) | Input::Eof(stream) => *stream,
        }
    }
}

/// Chunks in flight between the readers and the run thread. When the run thread falls
/// behind, readers block, the pipe fills, and the child waits: backpressure reaches only
/// the child.
const INPUT_CAPACITY: usize = 64;
/// Reads shorter than this, less than `BURST_GAP` apart, count as a burst of small writes;
/// the reader then pauses `BURST_PAUSE` before reading again (see `spawn_reader`). A
/// 64 KiB pipe holds milliseconds of even a fast line-by-line writer, so the pause only
/// batches; a child that fills the pipe just waits as it would for a slow reader.
const SMALL_READ: usize = 4096;
const BURST_GAP: Duration = Duration::from_micros(50);
const BURST_PAUSE: Duration = Duration::from_micros(500);
/// Bytes one `read()` may return.
const READ_BUFFER: usize = 64 * 1024;
/// How many stderr lines are kept for a failed run's `error_message`.
const STDERR_TAIL_LINES: usize = 20;
/// Most characters of `error_message`.
const ERROR_MESSAGE_CHARS: usize = 500;
/// Most entries (and bytes) made before they are handed to the log and the capture.
const MAX_BATCH_ENTRIES: usize = 4096;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often the process group is checked while waiting for the last members to die.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long after SIGKILL the run waits for its group's members to be gone. A killed
/// process is not gone at once: it first closes its files (the pipes) and frees its
/// memory (a CUDA process can take seconds to give back GPU memory), and one stuck in
/// uninterruptible sleep (a hung NFS or driver call) dies only when that call returns.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// Everything a run thread needs; moved into it.
pub(crate) struct RunContext {
    pub run_id: String,
    pub spec: RunSpec,
    pub config: Arc<EngineConfig>,
    pub capture: Arc<OutputCapture>,
    pub control: Receiver<Control>,
    pub admission: Arc<Admission>,
    pub gpu: Arc<GpuMonitor>,
    /// Where the run's processes are held together (its cgroup, or its process group).
    pub containment: Arc<EngineContainment>,
    /// The run's place in the admission queue, taken at submit.
    pub ticket: Ticket,
}

/// Starts the run's thread.
pub(crate) fn start(ctx: RunContext, name: String) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        let capture = Arc::clone(&ctx.capture);
        // A bug in the engine must not leave a run hanging forever: its slot, GPU tracking
        // and process group are released by guards as the panic unwinds, and here the run
        // ends `failed` with the reason.
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ctx))) {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            log::error!("run {}: internal error: {what}", capture.status().run_id);
            if !capture.is_finished() {
                capture.finish(|s| {
                    s.status = RunState::Failed;
                    s.cancelling = false;
                    s.waiting_for = None;
                    s.error_message = Some(format!("internal error in runstream: {what}"));
                    s.completed_at = Some(Timestamp::now());
                });
            }
        }
    })
}

/// Holds an admission slot; gives it back when dropped (also when a panic unwinds).
struct Slot<'a>(&'a Admission);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn run(ctx: RunContext) {
    let ticket = &ctx.ticket;
    // A stop that raced the admission wins: a cancelled queued run never spawns.
    let cancelled_while_queued = select! {
        recv(ticket.admitted) -> admitted => match admitted {
            Ok(Err(reason)) => {
                // It needs a GPU and none can be read: it would wait forever.
                let message = format!(
                    "needs {} MiB of GPU memory, but no GPU can be used: {reason}",
                    ctx.spec.gpu_memory_mb
                );
                let mut out = Output::new(&ctx, None);
                out.system(Level::Error, message.clone());
                ctx.capture.finish(|s| {
                    s.status = RunState::Failed;
                    s.waiting_for = None;
                    s.error_message = Some(message);
                    s.completed_at = Some(Timestamp::now());
                });
                return;
            }
            _ => !ctx.control.is_empty(),
        },
        recv(ctx.control) -> _ => true,
    };
    if cancelled_while_queued {
        // Cancelled (or the engine went away) while queued: never spawn.
        ctx.admission.withdraw(ticket.id);
        let mut out = Output::new(&ctx, None);
        out.system(Level::Info, "cancelled while queued; never started".into());
        out.commit();
        ctx.capture.finish(|s| {
            s.status = RunState::Cancelled;
            s.waiting_for = None;
            s.completed_at = Some(Timestamp::now());
        });
        return;
    }
    let _slot = Slot(&ctx.admission);
    let mut log_error = None;
    let log = ctx.config.log_dir.as_ref().and_then(|dir| {
        let path = dir.join(format!("{}.jsonl", ctx.run_id));
        match LogWriter::create(path.clone()) {
            Ok(w) => {
                ctx.capture.set_log(w.locator());
                Some(w)
            }
            Err(e) => {
                log::error!("cannot create run log {}: {e}", path.display());
                log_error = Some(format!(
                    "cannot create the run's log {}: {e}",
                    path.display()
                ));
                None
            }
        }
    });
    let mut out = Output::new(&ctx, log);
    if log_error.is_some() {
        ctx.capture.update_status(false, |s| {
            s.log_complete = Some(false);
            s.log_missing_from = Some(0);
        });
    }
    if let Some(why) = log_error {
        // Said in the run itself: its readers rely on the log to resume from any seq.
        out.system(
            Level::Error,
            format!("{why}; going on without it: entries evicted from memory are lost"),
        );
    }
    let cgroup = match ctx.containment.create_run(&ctx.run_id) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            out.system(
                Level::Warning,
                format!("{why}; the run is held by its process group alone"),
            );
            None
        }
    };
    if let Some(mb) = ctx.spec.memory_max_mb {
        match process::limit_memory(cgroup.as_ref(), mb) {
            Ok(()) => out.system(Level::Info, format!("memory limit {mb} MiB (memory.max)")),
            Err(why) => out.system(
                Level::Warning,
                format!("memory_max_mb {mb} is not enforced: {why}"),
            ),
        }
    }
    // Marks every process of the run (its environment is inherited), so that crash
    // recovery finds them without a cgroup too.
    let spec = ctx.spec.clone().env(RUN_ID_VARIABLE, &ctx.run_id);
    let started_at = Some(Timestamp::now());
    let containment = ctx.containment.info();
    let kind = process::run_kind(containment, cgroup.is_some());
    let cgroup_dir = cgroup.as_ref().map(|c| format!("{}", c.dir().display()));
    // Called before the child may run its program: with its pid (and cgroup) on disk, a
    // crash of runstream from now on leaves nothing that recovery cannot find.
    let on_pid = |pid: u32| {
        ctx.capture.update_status(true, |s| {
            s.status = RunState::Running;
            s.waiting_for = None;
            s.started_at = started_at;
            s.pid = Some(pid);
            s.process_start_time = process::process_start_time(pid);
            s.containment = Some(kind.into());
            s.cgroup = cgroup_dir.clone();
        })
    };
    match process::spawn_contained(&spec, cgroup.as_ref(), &on_pid) {
        Ok(spawned) => {
            let pipes = [&spawned.stdout, &spawned.stderr]
                .into_iter()
                .filter_map(process::pipe_inode)
                .collect();
            let procs = RunProcesses::new(spawned.group.clone(), cgroup, pipes);
            ctx.gpu
                .track(ticket.id, &spawned.group, &ctx.run_id, &ctx.capture);
            // The supervisor untracks the run from the GPU monitor as it finishes.
            let (stdout, stderr) = (spawned.stdout, spawned.stderr);
            let mut supervisor = Supervisor::new(&ctx, spawned.child, procs, out);
            match supervisor.start_threads(stdout, stderr) {
                Ok(()) => supervisor.run(),
                Err(e) => supervisor.fail_setup(e),
            }
        }
        Err(e) => {
            process::discard_cgroup(cgroup);
            ctx.capture.update_status(false, |s| {
                s.pid = None; // the process that was forked never ran the program
                s.process_start_time = None;
            });
            ctx.gpu.cancel_reservation(ticket.id);
            out.system(Level::Error, format!("failed to start: {}", e.message));
            ctx.capture.finish(|s| {
                s.status = RunState::Failed;
                s.waiting_for = None;
                s.started_at = started_at;
                s.error_message = Some(e.message);
                s.spawn_error = Some(e.kind);
                s.completed_at = Some(Timestamp::now());
            });
        }
    }
}

/// The environment variable every run's child gets: its run id. Crash recovery finds a lost
/// run's processes by it (`/proc/PID/environ`), and a program can read its own run id.
pub(crate) const RUN_ID_VARIABLE: &str = "RUNSTREAM_RUN_ID";

/// Turns lines into entries and hands them, in batches, to the log file and the capture.
struct Output {
    run_id: String,
    capture: Arc<OutputCapture>,
    log: Option<LogWriter>,
    /// `EngineConfig::max_log_bytes`.
    max_log_bytes: Option<u64>,
    next_seq: u64,
    batch: Vec<Entry>,
    batch_bytes: usize,
    /// Bytes the batch will take in the log file.
    batch_log_bytes: u64,
    stderr_tail: VecDeque<String>,
    progress: Option<f64>,
    /// Per stream (stdout, stderr): the level of the line whose text went out as `none`
    /// pieces so far, if one is open.
    open_line_level: [Option<Level>; 2],
    /// Set while the log cannot be written (a full disk).
    log_failure: Option<LogFailure>,
    /// The latest entry's timestamp: entries' timestamps never decrease.
    last_timestamp: Timestamp,
    /// How metrics are found in the run's lines (`None`: they are not looked for), and
    /// the lines in pieces being joined.
    metric_rules: Option<MetricRules>,
    metric_lines: Joiner,
}

/// The log file could not be written: entries from `first_missing` on are in memory only.
struct LogFailure {
    first_missing: u64,
    /// When to try again (at the first commit from then on, and at every `system` entry,
    /// the run's last one included).
    retry_at: Instant,
}

/// How often a log that could not be written is tried again.
const LOG_RETRY: Duration = Duration::from_secs(1);

impl Output {
    fn new(ctx: &RunContext, log: Option<LogWriter>) -> Output {
        Output {
            run_id: ctx.run_id.clone(),
            capture: Arc::clone(&ctx.capture),
            log,
            max_log_bytes: ctx.config.max_log_bytes,
            next_seq: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_log_bytes: 0,
            stderr_tail: VecDeque::new(),
            progress: None,
            open_line_level: [None, None],
            log_failure: None,
            last_timestamp: Timestamp::from_micros(i64::MIN),
            // The spec was validated at submit: its patterns compile.
            metric_rules: ctx
                .config
                .extract_metrics
                .then(|| MetricRules::new(&ctx.spec.metric_patterns).unwrap_or_default()),
            metric_lines: Joiner::default(),
        }
    }

    fn push_line(&mut self, stream: Stream, line: Line, timestamp: Timestamp) {
        let open = &mut self.open_line_level[stream_index(stream)];
        // The empty end of a line already handed out in pieces (a slow progress bar's
        // `\r` or final `\n`) is that line's: it keeps its level, not stderr's ERROR.
        let level = match open.take() {
            Some(level) if line.message.is_empty() => level,
            _ => Level::classify(&line.message, stream, line.end),
        };
        if line.end == LineEnd::None {
            *open = Some(level);
        }
        if stream == Stream::Stderr && line.end != LineEnd::Cr && !line.message.trim().is_empty() {
            if self.stderr_tail.len() == STDERR_TAIL_LINES {
                self.stderr_tail.pop_front();
            }
            self.stderr_tail.push_back(line.message.clone());
        }
        if let Some(p) = progress_percent(&line.message, line.end) {
            self.progress = Some(p);
        }
        let mut entry = Entry::new(
            self.next_seq,
            self.monotonic(timestamp),
            stream,
            level,
            line.message,
            line.end,
        );
        if let Some(rules) = &self.metric_rules {
            let metrics =
                self.metric_lines
                    .metrics(rules, stream, &entry.message, entry.end, entry.seq);
            entry.set_metrics(metrics);
        }
        self.push(entry);
    }

    /// `ts`, or the previous entry's timestamp if that is later: read times order one
    /// batch, and a chunk read before the previous batch's (its reader was descheduled
    /// before sending) still never goes back in time.
    fn monotonic(&mut self, ts: Timestamp) -> Timestamp {
        self.last_timestamp = ts.max(self.last_timestamp);
        self.last_timestamp
    }

    fn push(&mut self, mut entry: Entry) {
        if self.log_would_pass_limit(entry.json().len() as u64 + 1) {
            // The warning goes in first, as the log's last entry: the file passes its limit
            // by at most that one entry. This one takes the next seq, in memory only.
            let metrics: Box<[crate::metrics::Metric]> = entry.metrics().into();
            self.end_full_log();
            let message = std::mem::take(&mut entry.message);
            // Not before the warning: timestamps never go back.
            let ts = self.monotonic(entry.timestamp);
            let (stream, level, end) = (entry.stream, entry.level, entry.end);
            entry = Entry::new(self.next_seq, ts, stream, level, message, end);
            entry.set_metrics(metrics);
        }
        self.batch_log_bytes += entry.json().len() as u64 + 1;
        self.batch_bytes += entry.size_in_memory();
        self.batch.push(entry);
        self.next_seq += 1;
        // A few MiB of short lines are hundreds of thousands of entries: hand them on in
        // bounded batches so memory stays near the ring's caps.
        if self.batch.len() >= MAX_BATCH_ENTRIES || self.batch_bytes >= MAX_BATCH_BYTES {
            self.commit();
        }
    }

    /// Adds one of the engine's own entries and sends it on at once. A log that could not
    /// be written is tried again with it (the run's last entry is a system entry).
    fn system(&mut self, level: Level, message: String) {
        log::debug!("{}: {message}", self.run_id);
        if let Some(failure) = self.log_failure.as_mut() {
            failure.retry_at = Instant::now();
        }
        let now = self.monotonic(Timestamp::now());
        let entry = Entry::new(
            self.next_seq,
            now,
            Stream::System,
            level,
            message,
            LineEnd::Lf,
        );
        self.push(entry);
        self.commit();
    }

    /// Writes the batch to the log (first, so whatever the ring evicts is on disk) and
    /// appends it to the capture.
    fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let news = self.write_log();
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_log_bytes = 0;
        self.capture
            .append(batch, self.log.as_ref().map(LogWriter::index));
        if let Some(p) = self.progress.take() {
            self.capture
                .update_status(false, |s| s.progress_percent = Some(p));
        }
        if let Some((level, message)) = news {
            self.system(level, message);
        }
    }

    /// When a log that could not be written is tried again, also while no output comes.
    fn log_retry_at(&self) -> Option<Instant> {
        self.log_failure.as_ref().map(|f| f.retry_at)
    }

    /// Tries the log again now (with nothing new to add: the run is quiet).
    fn retry_log(&mut self) {
        if let Some(failure) = self.log_failure.as_mut() {
            failure.retry_at = Instant::now();
        }
        if self.batch.is_empty() {
            // Its news is a system entry, whose commit also hands the capture the index.
            if let Some((level, message)) = self.write_log() {
                self.system(level, message);
            }
        } else {
            self.commit();
        }
    }

    /// Writes the batch to the log; after a failure, first what the log missed (from
    /// the ring), once the retry is due. Returns what to tell the run's readers, if the
    /// log just failed or came back.
    fn write_log(&mut self) -> Option<(Level, String)> {
        let log = self.log.as_mut()?;
        let Some(failure) = &mut self.log_failure else {
            let Err(e) = log.append_all(&self.batch) else {
                return None;
            };
            let first_missing = self.batch[0].seq;
            let what = format!("cannot write the run's log {}: {e}", log.path().display());
            log::error!("{}: {what}", self.run_id);
            self.capture.storage().failed(what.clone());
            self.log_failure = Some(LogFailure {
                first_missing,
                retry_at: Instant::now() + LOG_RETRY,
            });
            // Before this batch reaches the capture: readers find it in the ring only.
            self.capture.log_stops_growing();
            self.capture.update_status(true, |s| {
                s.log_complete = Some(false);
                s.log_missing_from.get_or_insert(first_missing);
            });
            return Some((
                Level::Error,
                format!(
                    "{what}; output from seq {first_missing} on is kept in memory only (the                      last {} lines) and written to the log when it can be again",
                    self.capture.max_entries()
                ),
            ));
        };
        if Instant::now() < failure.retry_at {
            return None;
        }
        let first_missing = failure.first_missing;
        let (missed, kept_from) = self.capture.ring_from(first_missing);
        let again = missed.iter().map(|e| e.as_ref()).chain(&self.batch);
        if log.append_all(again).is_err() {
            failure.retry_at = Instant::now() + LOG_RETRY;
            return None;
        }
        self.log_failure = None;
        self.capture.log_resumes();
        self.capture.storage().ok();
        log::info!("{}: the run's log is written again", self.run_id);
        if kept_from > first_missing {
            return Some((
                Level::Warning,
                format!(
                    "the run's log is written again from seq {kept_from}; entries                      {first_missing} to {} left memory before they could be written and                      are missing from it",
                    kept_from - 1
                ),
            ));
        }
        self.capture.update_status(true, |s| {
            if s.log_missing_from == Some(first_missing) {
                s.log_complete = Some(true);
                s.log_missing_from = None;
            }
        });
        Some((
            Level::Info,
            format!(
                "the run's log is written again: entries {first_missing} on were written                  from memory, none is missing"
            ),
        ))
    }

    /// Whether `bytes` more (one entry's line) would take the log past `max_log_bytes`,
    /// counting the batch not written yet.
    fn log_would_pass_limit(&self, bytes: u64) -> bool {
        self.log
            .as_ref()
            .zip(self.max_log_bytes)
            .is_some_and(|(log, max)| log.len() + self.batch_log_bytes + bytes > max)
    }

    /// The next entry would take the log past `max_log_bytes`: it ends with a warning
    /// entry instead and grows no more;
    /// later output lives in the ring only (readers that fall behind it get a `Gap`).
    fn end_full_log(&mut self) {
        let max = self.max_log_bytes.take().unwrap_or_default();
        let message = format!(
            "the run's log reached its limit of {max} bytes (max_log_bytes, runstream serve \
             --max-log-size): later output is kept only in memory (the last {} lines)",
            self.capture.max_entries()
        );
        log::warn!("{}: {message}", self.run_id);
        // The log's last entry (it is still open); then it holds exactly what came so far.
        self.system(Level::Warning, message);
        self.capture.log_stops_growing();
        self.log = None;
        let next = self.next_seq;
        self.capture.update_status(false, |s| {
            s.log_complete = Some(false);
            s.log_missing_from.get_or_insert(next);
        });
    }

    /// The last stderr lines, at most `ERROR_MESSAGE_CHARS` characters, newest kept.
    fn stderr_summary(&self) -> Option<String> {
        let text = Vec::from(self.stderr_tail.clone()).join("\n");
        let chars = text.chars().count();
        let text: String = text
            .chars()
            .skip(chars.saturating_sub(ERROR_MESSAGE_CHARS))
            .collect();
        (!text.is_empty()).then_some(text)
    }
}

/// The last `N%` (0–100) in a `\r` progress update or in a line that mentions progress.
fn progress_percent(message: &str, end: LineEnd) -> Option<f64> {
    let pos = message.rfind('%')?;
    // tqdm's bar reads `45%|####`; its last frame is ended by `\n`, not `\r`.
    let bar = message[pos + 1..].starts_with('|');
    if end != LineEnd::Cr && !bar && !message.to_ascii_lowercase().contains("progress") {
        return None;
    }
    // The number is the ASCII digits and dots just before the `%` (byte-wise: the
    // character before them may be several bytes long).
    let head = &message.as_bytes()[..pos];
    let digits = head
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    let value: f64 = message[pos - digits..pos].parse().ok()?;
    (0.0..=100.0).contains(&value).then_some(value)
}

/// Watches one live child: the `select!` loop.
struct Supervisor<'a> {
    ctx: &'a RunContext,
    out: Output,
    /// The group, the cgroup, and strays found holding the pipes.
    procs: RunProcesses,
    child: Arc<SharedChild>,
    grace: Duration,
    splitters: [LineSplitter; 2],
    flush_at: [Option<Instant>; 2],
    /// When each stream's pending partial line started waiting.
    pending_since: [Option<Instant>; 2],
    input: Receiver<Input>,
    exited: Receiver<std::io::Result<std::process::ExitStatus>>,
    control: Receiver<Control>,
    open_streams: usize,
    stopper: Option<process::ReadStopper>,
    stop_reason: Option<StopReason>,
    timeout_at: Option<Instant>,
    kill_at: Option<Instant>,
    /// When SIGKILL went to the group.
    killed_at: Option<Instant>,
    exit: Option<(Option<i32>, Option<i32>)>,
    /// When the output pipes stop being waited for: a fixed time after the leader's exit
    /// (`EngineConfig::leak_timeout`), not moved by output that keeps coming.
    leak_at: Option<Instant>,
    /// Who held the pipes at the leak deadline (outside the group and cgroup), once it
    /// passed with the pipes open.
    leak_holders: Option<Vec<process::PipeHolder>>,
    group_poll_at: Option<Instant>,
    /// Set by `finish`; a supervisor dropped without it (a panic) kills its group.
    finished: bool,
}

impl<'a> Supervisor<'a> {
    /// A supervisor for a child that was just spawned. Nothing watches it yet: see
    /// [`Supervisor::start_threads`].
    fn new(
        ctx: &'a RunContext,
        child: SharedChild,
        procs: RunProcesses,
        out: Output,
    ) -> Supervisor<'a> {
        let max_line = ctx.config.max_line_bytes;
        Supervisor {
            ctx,
            out,
            procs,
            child: Arc::new(child),
            grace: ctx.spec.grace.unwrap_or(ctx.config.default_grace),
            splitters: [LineSplitter::new(max_line), LineSplitter::new(max_line)],
            flush_at: [None, None],
            pending_since: [None, None],
            input: never(),
            exited: never(),
            control: ctx.control.clone(),
            open_streams: 2,
            stopper: None,
            stop_reason: None,
            timeout_at: ctx.spec.timeout.map(deadline::after),
            kill_at: None,
            killed_at: None,
            exit: None,
            leak_at: None,
            leak_holders: None,
            group_poll_at: None,
            finished: false,
        }
    }

    /// Starts what watches the child: the stop pipe, a reader thread per pipe, and the
    /// waiter thread (last: once it runs, only it may reap the child). Fails when the
    /// system cannot make one of them (`RLIMIT_NPROC`, out of descriptors); the caller
    /// then calls [`Supervisor::fail_setup`].
    fn start_threads(
        &mut self,
        stdout: os_pipe::PipeReader,
        stderr: os_pipe::PipeReader,
    ) -> Result<(), SpawnError> {
        let (stopper, watch) = process::read_stopper()
            .map_err(|e| SpawnError::resources("cannot create a pipe", &e))?;
        self.stopper = Some(stopper);
        let (input_tx, input) = bounded(INPUT_CAPACITY);
        self.input = input;
        let thread_error = |e: std::io::Error| SpawnError::resources("cannot create a thread", &e);
        spawn_reader(Stream::Stdout, stdout, &watch, input_tx.clone()).map_err(thread_error)?;
        spawn_reader(Stream::Stderr, stderr, &watch, input_tx).map_err(thread_error)?;
        let (exit_tx, exited) = bounded(1);
        let waiter_child = Arc::clone(&self.child);
        let pid = waiter_child.id();
        thread::Builder::new()
            .name(format!("runstream-wait-{pid}"))
            .spawn(move || {
                let status = waiter_child.wait();
                process::leader_reaped(pid);
                let _ = exit_tx.send(status);
            })
            .map_err(thread_error)?;
        self.exited = exited;
        Ok(())
    }

    /// The child exists but cannot be watched: it is killed with its group and reaped
    /// here (no waiter thread runs), and the run fails with the reason. Left alone it
    /// would run unwatched, its output lost, and stay a zombie of this process for ever.
    fn fail_setup(mut self, e: SpawnError) {
        self.finished = true;
        let _ = self.procs.signal(Signal::Kill);
        let _ = self.child.kill();
        let _ = self.child.wait();
        process::leader_reaped(self.child.id());
        // Readers already started see EOF (the child is gone) or the stop pipe close.
        #[allow(clippy::drop_non_drop)]
        drop(self.stopper.take());
        log::error!("run {}: failed to start: {}", self.ctx.run_id, e.message);
        self.out.system(
            Level::Error,
            format!(
                "failed to start: {}; process {} was killed",
                e.message,
                self.procs.group().id()
            ),
        );
        if let Err(why) = self.procs.remove_cgroup() {
            log::warn!("run {}: {why}", self.ctx.run_id);
        }
        self.ctx.gpu.untrack(self.procs.group().id());
        self.ctx.capture.finish(|s| {
            s.status = RunState::Failed;
            s.cancelling = false;
            s.error_message = Some(e.message);
            s.spawn_error = Some(e.kind);
            s.completed_at = Some(Timestamp::now());
        });
    }

    fn run(mut self) {
        while !self.is_done() {
            let next_timer = [
                self.timeout_at,
                self.kill_at,
                self.flush_at[0],
                self.flush_at[1],
                self.leak_at,
                self.group_poll_at,
                self.out.log_retry_at(),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next_timer.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            select! {
                recv(self.input) -> msg => match msg {
                    Ok(input) => self.on_input(input),
                    Err(_) => {
                        self.open_streams = 0;
                        self.input = never();
                    }
                },
                recv(self.exited) -> status => {
                    self.exited = never();
                    // Output already read comes first: it was written before the exit.
                    if let Ok(input) = self.input.try_recv() {
                        self.on_input(input);
                    }
                    self.on_exit(status.ok().and_then(Result::ok));
                },
                recv(self.control) -> msg => match msg {
                    Ok(Control::Stop(reason)) => self.stop(reason),
                    Ok(Control::Kill) => self.kill_now("kill requested"),
                    // The engine is gone: nobody can ask for anything any more, so stop.
                    Err(_) => {
                        self.control = never();
                        self.stop(StopReason::Shutdown);
                    }
                },
                default(wait) => {}
            }
            self.on_timers();
        }
        self.finish();
    }

    fn on_input(&mut self, first: Input) {
        let timestamp = Timestamp::now();
        if self.exit.is_some() && !process::CAN_FIND_PIPE_HOLDERS {
            // Where who holds the pipes cannot be known, the leak deadline counts from the
            // last byte, so that output still flowing is drained.
            self.leak_at = Some(deadline::after(self.ctx.config.leak_timeout));
        }
        let mut lines = Vec::new();
        // Take what else is already waiting, so one batch (one lock, one wake-up) covers
        // many reads when the child is fast; then put it in read order.
        let mut waiting = vec![first];
        while waiting.len() < INPUT_CAPACITY {
            match self.input.try_recv() {
                Ok(input) => waiting.push(input),
                Err(_) => break,
            }
        }
        for input in in_read_order(waiting) {
            match input {
                Input::Chunk(stream, bytes, timestamp) => {
                    let i = stream_index(stream);
                    self.splitters[i].push(&bytes, &mut lines);
                    for line in lines.drain(..) {
                        self.out.push_line(stream, line, timestamp);
                    }
                    // A partial line goes out once this stream has been quiet for a while,
                    // or, for a child that keeps adding to one line (dots every 50 ms), once
                    // it has waited ten quiet periods.
                    if self.splitters[i].has_pending() {
                        let now = Instant::now();
                        let since = *self.pending_since[i].get_or_insert(now);
                        let quiet = self.ctx.config.partial_flush;
                        let longest = quiet.saturating_mul(10);
                        self.flush_at[i] =
                            Some(deadline::later(now, quiet).min(deadline::later(since, longest)));
                    } else {
                        self.flush_at[i] = None;
                        self.pending_since[i] = None;
                    }
                }
                Input::Eof(stream) => {
                    let i = stream_index(stream);
                    self.splitters[i].finish(&mut lines);
                    for line in lines.drain(..) {
                        self.out.push_line(stream, line, timestamp);
                    }
                    self.flush_at[i] = None;
                    self.pending_since[i] = None;
                    self.open_streams -= 1;
                }
            }
        }
        self.out.commit();
    }

    fn on_exit(&mut self, status: Option<std::process::ExitStatus>) {
        self.exit = Some(status.map_or((None, None), process::exit_parts));
        // Like a container or a systemd unit: what is left of the run goes too (its group,
        // and with a cgroup every process in it). When a stop is under way, all of it got
        // SIGTERM already, and SIGKILL is due.
        if self.killed_at.is_none() && self.stop_reason.is_none() {
            let left = self.procs.alive();
            if !left.is_empty() {
                let why = format!("{} process(es) of the run outlived the leader", left.len());
                if self.grace.is_zero() {
                    self.kill_now(&why);
                } else {
                    self.signal(Signal::Term, &why, "");
                    self.kill_at.get_or_insert(deadline::after(self.grace));
                }
            }
        }
        // A deadline, not a window that output moves forward: a process that left the
        // group and keeps writing must not keep the run (and its cancel) waiting.
        self.leak_at = Some(deadline::after(self.ctx.config.leak_timeout));
    }

    /// Graceful stop: SIGTERM to the group (and cgroup, and the processes outside them
    /// that hold the output pipes) now, SIGKILL when the grace period ends. Cancel,
    /// timeout and shutdown all come through here.
    fn stop(&mut self, reason: StopReason) {
        if self.stop_reason.is_some() {
            return; // already stopping: stopping is idempotent
        }
        if self.exit.is_some() {
            // A process that left the group but holds the pipes is the run's too.
            let strays = self.procs.pipe_holders_outside();
            self.procs.adopt(strays);
            if self.procs.alive().is_empty() {
                // The leader is gone and nothing of the run is alive: the run is just
                // draining its output, and ends as its leader did.
                return;
            }
        }
        self.stop_reason = Some(reason);
        self.ctx
            .capture
            .update_status(true, |s| s.cancelling = true);
        if self.kill_at.is_some() || self.killed_at.is_some() {
            // What outlived the leader got SIGTERM already (and SIGKILL is due): the stop
            // changes how the run is reported, and new strays get SIGKILL with the rest.
            return;
        }
        let why = match reason {
            StopReason::Cancelled => "cancel requested".to_string(),
            StopReason::Shutdown => "engine shutting down".to_string(),
            StopReason::TimedOut => format!(
                "timed out after {} s",
                self.ctx.spec.timeout.unwrap_or_default().as_secs_f64()
            ),
        };
        if self.grace.is_zero() {
            self.kill_now(&format!("{why} (no grace period)"));
        } else {
            self.signal(
                Signal::Term,
                &why,
                &format!(" (grace period {} s)", self.grace.as_secs_f64()),
            );
            self.kill_at = Some(deadline::after(self.grace));
        }
        // Looked for after the group got its signal, so that the stop is not delayed by
        // the scan: a process that left the group but holds the pipes goes too.
        let strays = self.procs.pipe_holders_outside();
        self.stop_new_strays(strays, &why);
    }

    /// Adopts `strays` (processes outside the group holding the pipes) into a stop under
    /// way: those not known yet get SIGTERM now (SIGKILL at once without a grace period),
    /// and SIGKILL with the rest when the grace period ends.
    fn stop_new_strays(&mut self, strays: Vec<process::PipeHolder>, why: &str) {
        let new = self.procs.adopt(strays);
        let signal = match self.grace.is_zero() || self.killed_at.is_some() {
            true => Signal::Kill,
            false => Signal::Term,
        };
        let reached: Vec<_> = new.into_iter().filter(|h| h.signal(signal)).collect();
        if !reached.is_empty() {
            self.out.system(
                Level::Warning,
                format!(
                    "{why}: sent {} to {}, which held the output pipe",
                    signal.name(),
                    process::describe_holders(&reached)
                ),
            );
        }
        if signal == Signal::Term && self.kill_at.is_none() {
            self.kill_at = Some(deadline::after(self.grace));
        }
    }

    fn kill_now(&mut self, why: &str) {
        if self.stop_reason.is_none() && self.exit.is_none() {
            self.stop_reason = Some(StopReason::Cancelled);
            self.ctx
                .capture
                .update_status(true, |s| s.cancelling = true);
        }
        self.signal(Signal::Kill, why, "");
        self.killed_at.get_or_insert_with(Instant::now);
        self.kill_at = None;
        if self.exit.is_some() {
            // Dying processes release the pipes shortly: one more leak window, once.
            self.leak_at = Some(deadline::after(self.ctx.config.leak_timeout));
        }
    }

    /// Signals the run's processes and logs "{why}: sent SIGTERM to process group
    /// N{note}", or "{why}: could not send …: {error}".
    fn signal(&mut self, signal: Signal, why: &str, note: &str) {
        let id = self.procs.group().id();
        match self.procs.signal(signal).message(signal, id) {
            Some(Ok(sent)) => self
                .out
                .system(Level::Warning, format!("{why}: {sent}{note}")),
            Some(Err(failed)) => self.out.system(Level::Error, format!("{why}: {failed}")),
            None => {}
        }
        if signal == Signal::Kill && self.exit.is_none() {
            // The leader is unreaped, so its pid is still ours: also kill it directly in
            // case it left its group.
            let _ = self.child.kill();
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.timeout_at) {
            self.timeout_at = None;
            self.stop(StopReason::TimedOut);
        }
        if due(self.kill_at) {
            self.kill_at = None;
            if self.exit.is_none() || !self.procs.alive().is_empty() {
                self.kill_now("grace period ended");
            }
        }
        if due(self.leak_at) && self.open_streams > 0 && self.leak_holders.is_none() {
            if self.procs.pipes_held_by_others() {
                self.on_leak_deadline();
            } else {
                // Every writer is gone: what is left in the pipes is finite (a slow run
                // thread, a busy machine). Drain it all, looking again now and then.
                self.leak_at = Some(deadline::after(self.ctx.config.leak_timeout));
            }
        }
        for i in 0..2 {
            // Input already waiting may finish the line: read it before cutting anything.
            if due(self.flush_at[i]) && self.input.is_empty() {
                self.flush_at[i] = None;
                self.pending_since[i] = None;
                let mut lines = Vec::new();
                self.splitters[i].flush(&mut lines);
                let stream = [Stream::Stdout, Stream::Stderr][i];
                let ts = Timestamp::now();
                for line in lines {
                    self.out.push_line(stream, line, ts);
                }
                self.out.commit();
            }
        }
        if due(self.group_poll_at) {
            self.group_poll_at = None;
        }
        if due(self.out.log_retry_at()) {
            self.out.retry_log();
        }
    }

    /// The leader exited a while ago and its pipes are still open: finds who holds them,
    /// for the log. During a stop, those outside the run's group get SIGTERM now and
    /// SIGKILL with the rest when the grace period ends.
    fn on_leak_deadline(&mut self) {
        let holders = self.procs.pipe_holders_outside();
        if self.stop_reason.is_some() {
            self.stop_new_strays(holders.clone(), "stopping");
        }
        self.leak_holders = Some(holders);
    }

    /// Over when the leader has exited, its output is drained (or the leak deadline
    /// passed with the pipes still open), and nothing of the run that is being stopped is
    /// left alive (or, after SIGKILL, what is left did not die within [`KILL_SETTLE`]).
    fn is_done(&mut self) -> bool {
        if self.exit.is_none() {
            return false;
        }
        let leak_passed =
            self.leak_at.is_some_and(|t| t <= Instant::now()) && self.leak_holders.is_some();
        if self.open_streams > 0 && !leak_passed {
            return false;
        }
        if self.killed_at.is_none() && self.kill_at.is_none() {
            return true; // nothing of the run is being stopped
        }
        let left = self.procs.alive();
        if left.is_empty() {
            return true;
        }
        if self.killed_at.is_some_and(|t| t.elapsed() >= KILL_SETTLE) {
            self.out.system(
                Level::Error,
                format!(
                    "{} process(es) of the run still alive {} s after SIGKILL \
                     (stuck in uninterruptible sleep?): pids {left:?}; finished without them",
                    left.len(),
                    KILL_SETTLE.as_secs()
                ),
            );
            return true;
        }
        self.group_poll_at = Some(Instant::now() + GROUP_POLL);
        false
    }

    fn finish(mut self) {
        self.finished = true;
        // What the readers had already read when the leak deadline passed.
        for _ in 0..INPUT_CAPACITY {
            match self.input.try_recv() {
                Ok(input) => self.on_input(input),
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        for i in 0..2 {
            self.splitters[i].finish(&mut lines);
            let stream = [Stream::Stdout, Stream::Stderr][i];
            for line in lines.drain(..) {
                self.out.push_line(stream, line, Timestamp::now());
            }
        }
        // Said last, after the output the child wrote before it exited.
        let (exit_code, signal) = self.exit.unwrap_or((None, None));
        let message = match (exit_code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s} ({})", process::signal_name(s)),
            (None, None) => "exited; its status could not be read".to_string(),
        };
        let level = if exit_code == Some(0) {
            Level::Info
        } else {
            Level::Warning
        };
        self.out.system(level, message);
        if self.open_streams > 0 {
            let holders = match self.leak_holders.take() {
                Some(found) => found,
                None => self.procs.pipe_holders_outside(),
            };
            let by = match holders.is_empty() {
                true => "by a process that left its process group, e.g. with setsid".to_string(),
                false => format!(
                    "by {} (outside the run's process group, e.g. after setsid)",
                    process::describe_holders(&holders)
                ),
            };
            self.out.system(
                Level::Warning,
                format!(
                    "the output pipe was still held open {} s after the process exited, \
                     {by}; finished without it",
                    self.ctx.config.leak_timeout.as_secs_f64()
                ),
            );
        }
        let usage = self.procs.usage();
        let oom = usage.oom_kills > 0 && self.stop_reason.is_none();
        if oom {
            self.out
                .system(Level::Error, self.oom_message(usage.oom_kills));
        }
        if let Err(why) = self.procs.remove_cgroup() {
            self.out.system(Level::Warning, why);
        }
        self.out.commit();
        // Wake readers still blocked on a pipe a stray process holds, so they exit. (On
        // Windows there is nothing to wake and the stopper is an empty type.)
        #[allow(clippy::drop_non_drop)]
        drop(self.stopper.take());
        let state = match self.stop_reason {
            Some(StopReason::TimedOut) => RunState::TimedOut,
            Some(StopReason::Cancelled | StopReason::Shutdown) => RunState::Cancelled,
            None if oom => RunState::Failed,
            None if exit_code == Some(0) => RunState::Completed,
            None => RunState::Failed,
        };
        let error_message = match state {
            RunState::Failed if oom => Some(self.oom_message(usage.oom_kills)),
            RunState::Failed => {
                Some(
                    self.out
                        .stderr_summary()
                        .unwrap_or_else(|| match (exit_code, signal) {
                            (Some(c), _) => format!("exited with code {c}"),
                            (_, Some(s)) => {
                                format!("killed by signal {s} ({})", process::signal_name(s))
                            }
                            _ => "failed".into(),
                        }),
                )
            }
            RunState::TimedOut => Some(format!(
                "timed out after {} s",
                self.ctx.spec.timeout.unwrap_or_default().as_secs_f64()
            )),
            _ => None,
        };
        // Untracked before the run reads as finished, so that whoever waited for the end
        // never sees a finished run in the GPU report.
        self.ctx.gpu.untrack(self.procs.group().id());
        self.ctx.capture.finish(|s| {
            s.cpu_seconds = usage.cpu_seconds;
            s.memory_peak_bytes = usage.memory_peak_bytes;
            s.status = state;
            s.cancelling = false;
            s.exit_code = exit_code;
            s.signal = signal;
            s.error_message = error_message;
            s.completed_at = Some(Timestamp::now());
        });
    }
}

impl Supervisor<'_> {
    /// "killed by the kernel's OOM killer (2 processes): the run reached its memory limit
    /// of 100 MiB (memory_max_mb)".
    fn oom_message(&self, kills: u64) -> String {
        format!(
            "killed by the kernel's OOM killer ({kills} process(es)): the run reached its \
             memory limit of {} MiB (memory_max_mb)",
            self.ctx.spec.memory_max_mb.unwrap_or_default()
        )
    }
}

impl Drop for Supervisor<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Unwinding from a bug: leave nothing of the run behind.
            let _ = self.procs.signal(Signal::Kill);
            let _ = self.child.kill();
            self.ctx.gpu.untrack(self.procs.group().id());
        }
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stderr => 1,
        _ => 0,
    }
}

/// Chunks waiting from both readers, in the order they were read (a stable sort: one
/// stream's chunks are already in order; an end of file stays right after its stream's
/// last chunk).
fn in_read_order(waiting: Vec<Input>) -> Vec<Input> {
    // One stream only (the usual case): already in order.
    let first = waiting.first().map(Input::stream);
    if waiting.iter().all(|input| Some(input.stream()) == first) {
        return waiting;
    }
    let mut last_read = [Timestamp::from_micros(i64::MIN); 2];
    let mut keyed: Vec<(Timestamp, Input)> = waiting
        .into_iter()
        .map(|input| {
            let i = stream_index(input.stream());
            if let Input::Chunk(_, _, at) = &input {
                last_read[i] = *at;
            }
            (last_read[i], input)
        })
        .collect();
    keyed.sort_by_key(|(at, _)| *at);
    keyed.into_iter().map(|(_, input)| input).collect()
}

fn spawn_reader(
    stream: Stream,
    mut pipe: os_pipe::PipeReader,
    watch: &process::StopWatch,
    tx: Sender<Input>,
) -> std::io::Result<()> {
    let watch = watch.try_clone()?;
    let body = move || {
        let mut buf = vec![0u8; READ_BUFFER];
        let mut last_read = Instant::now() - BURST_GAP;
        loop {
            match process::read_or_stop(&mut pipe, &watch, &mut buf) {
                Ok(Some(n)) if n > 0 => {
                    let chunk = Input::Chunk(stream, buf[..n].to_vec(), Timestamp::now());
                    if tx.send(chunk).is_err() {
                        return; // the run is over
                    }
                    // A child that writes many small pieces back to back (python -u: two
                    // writes per print) would wake this thread, and through it the run
                    // thread and every subscriber, once per write. In such a burst, let the
                    // pipe fill for 500 µs before reading again: one short pause per read
                    // instead of a wake-up per write. A lone line is read at once.
                    if n < SMALL_READ && last_read.elapsed() < BURST_GAP {
                        thread::sleep(BURST_PAUSE);
                    }
                    last_read = Instant::now();
                }
                Ok(None) => return, // stopped: the run finished without this pipe
                Ok(Some(_)) | Err(_) => {
                    let _ = tx.send(Input::Eof(stream));
                    return;
                }
            }
        }
    };
    thread::Builder::new()
        .name(format!("runstream-{}", stream.as_str()))
        .spawn(body)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_from_cr_updates_and_progress_lines() {
        assert_eq!(
            progress_percent(" 45%|####  | 45/100", LineEnd::Cr),
            Some(45.0)
        );
        assert_eq!(progress_percent("Progress: 12.5%", LineEnd::Lf), Some(12.5));
        assert_eq!(progress_percent("accuracy 95%", LineEnd::Lf), None);
        assert_eq!(progress_percent("150%", LineEnd::Cr), None);
        assert_eq!(progress_percent("no percent", LineEnd::Cr), None);
        // Multi-byte characters right before the number (random bytes decode to U+FFFD).
        assert_eq!(progress_percent("\u{fffd}12%", LineEnd::Cr), Some(12.0));
        assert_eq!(progress_percent("é%|", LineEnd::Lf), None);
        assert_eq!(progress_percent("%", LineEnd::Cr), None);
    }

    #[test]
    fn waiting_chunks_are_taken_in_read_order() {
        let at = Timestamp::from_micros;
        let chunk = |s, text: &str, t| Input::Chunk(s, text.as_bytes().to_vec(), at(t));
        // The stderr reader read first but sent last.
        let waiting = vec![
            chunk(Stream::Stdout, "a", 20),
            chunk(Stream::Stdout, "b", 30),
            Input::Eof(Stream::Stdout),
            chunk(Stream::Stderr, "x", 10),
            chunk(Stream::Stderr, "y", 25),
            Input::Eof(Stream::Stderr),
        ];
        let got: Vec<String> = in_read_order(waiting)
            .iter()
            .map(|input| match input {
                Input::Chunk(s, bytes, _) => {
                    format!("{}:{}", s.as_str(), String::from_utf8_lossy(bytes))
                }
                Input::Eof(s) => format!("{}:eof", s.as_str()),
            })
            .collect();
        assert_eq!(
            got,
            [
                "stderr:x",
                "stdout:a",
                "stderr:y",
                "stderr:eof",
                "stdout:b",
                "stdout:eof"
            ]
        );
    }
}
