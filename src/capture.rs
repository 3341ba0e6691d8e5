//! OutputCapture: a run's bounded ring of entries plus its status history, and the
//! `Subscription` cursors that read them at their own pace.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::logfile::{LogLocator, INDEX_EVERY};
use crate::metrics::{Joiner, MetricRules, MetricSeries, SeriesSet};
use crate::{Entry, RunStatus};

/// Most entries one `Subscription::next` call hands out, so one call never holds the lock
/// (or a log read) for long.
const MAX_BATCH: usize = 1024;

/// Where a subscription starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// From seq 0: everything still retained (with a log directory, everything).
    Start,
    /// From the entry after this seq (what an SSE `Last-Event-ID` resume needs).
    AfterSeq(u64),
    /// The last `n` entries, then live.
    Tail(u64),
}

/// What one [`Subscription::next`] call returns.
#[derive(Clone, Debug)]
pub enum Next {
    /// Entries in seq order, with no holes, continuing where the last call stopped.
    Entries(Vec<Arc<Entry>>),
    /// Entries `from_seq..=to_seq` were evicted from memory and no log file has them.
    Gap {
        /// First lost seq.
        from_seq: u64,
        /// Last lost seq (inclusive).
        to_seq: u64,
    },
    /// The run's state changed (or, first, the state it is in when the subscription starts).
    Status(RunStatus),
    /// The run's GPU use changed. Like a gauge, changes between two reads are
    /// coalesced: the latest numbers come once.
    Gpu {
        /// GPU memory its process group uses now, bytes; `None`: unknown (the driver
        /// does not attribute memory to processes here).
        memory_bytes: Option<u64>,
        /// The most it used, bytes, as far as known.
        peak_bytes: Option<u64>,
        /// SM utilisation of its processes over the last sample, percent; `None`: unknown.
        utilization_percent: Option<u32>,
    },
    /// The run is over and every entry was handed out; later calls return `End` again.
    End(RunStatus),
    /// Nothing happened within the timeout (time for an SSE keep-alive).
    Timeout,
}

/// One item of the blocking [`Iterator`] over a [`Subscription`].
#[derive(Clone, Debug)]
pub enum Event {
    /// One captured entry.
    Entry(Arc<Entry>),
    /// Entries `from_seq..=to_seq` were lost (only without a log directory).
    Gap {
        /// First lost seq.
        from_seq: u64,
        /// Last lost seq (inclusive).
        to_seq: u64,
    },
    /// The run's state changed.
    Status(RunStatus),
    /// The run's GPU use changed.
    Gpu {
        /// GPU memory its process group uses now, bytes; `None`: unknown.
        memory_bytes: Option<u64>,
        /// The most it used, bytes, as far as known.
        peak_bytes: Option<u64>,
        /// SM utilisation of its processes over the last sample, percent; `None`: unknown.
        utilization_percent: Option<u32>,
    },
    /// The run is over; the iterator ends after this.
    End(RunStatus),
}

/// Counters about one capture, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Entries captured so far (the next seq).
    pub entries: u64,
    /// Message bytes captured so far.
    pub bytes: u64,
    /// Entries that subscribers could not get because they were evicted with no log file.
    pub dropped: u64,
    /// Entries held in memory now.
    pub retained_entries: usize,
    /// Bytes held in memory now.
    pub retained_bytes: usize,
}

/// A run's output in memory: the newest entries within an entry cap and a byte cap (the
/// oldest go first), and every status change. One writer (the run thread) appends in
/// batches; any number of [`Subscription`]s read.
#[derive(Debug)]
pub struct OutputCapture {
    state: Mutex<CaptureState>,
    changed: Condvar,
    /// Names this capture in the process-wide cache of decoded log blocks.
    cache_id: u64,
    /// Where each announced status is saved (`{run_id}.json`), when there is a log dir.
    status_file: Option<PathBuf>,
    /// How metrics are found in entries read back from the log.
    metric_rules: MetricRules,
}

#[derive(Debug)]
struct CaptureState {
    entries: VecDeque<Arc<Entry>>,
    retained_bytes: usize,
    next_seq: u64,
    max_entries: usize,
    max_bytes: usize,
    log: Option<LogLocator>,
    /// `Some(n)`: the log holds entries `0..n` only (it reached its size limit); later
    /// ones are in the ring or lost. `None`: it holds every entry.
    log_end: Option<u64>,
    current: RunStatus,
    /// Announced status changes with the seq they happened before, in order.
    transitions: Vec<(u64, RunStatus)>,
    finished: bool,
    bytes_captured: u64,
    dropped: u64,
    /// Bumped on every GPU memory change, so subscribers notice one.
    gpu_version: u64,
    /// The run's metric series.
    series: SeriesSet,
    /// The series are still to be read from the log (a run loaded after a restart).
    series_in_log: bool,
}

impl CaptureState {
    fn first_seq(&self) -> u64 {
        self.next_seq - self.entries.len() as u64
    }

    /// Entries below this seq that the ring no longer holds are in the log (when there is
    /// one); from here to `first_seq` they are lost.
    fn on_disk(&self) -> u64 {
        let first = self.first_seq();
        self.log_end.map_or(first, |end| end.min(first))
    }
}

impl OutputCapture {
    /// An empty capture for a run whose first status is `status`.
    pub(crate) fn new(
        status: RunStatus,
        max_entries: usize,
        max_bytes: usize,
        status_file: Option<PathBuf>,
    ) -> OutputCapture {
        if let Some(path) = &status_file {
            crate::logfile::save_status(path, &status);
        }
        let metric_rules = MetricRules::new(&status.metric_patterns).unwrap_or_else(|e| {
            log::warn!(
                "run {}: {e}; using the built-in formats only",
                status.run_id
            );
            MetricRules::default()
        });
        static NEXT_CACHE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        OutputCapture {
            cache_id: NEXT_CACHE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            status_file,
            metric_rules,
            state: Mutex::new(CaptureState {
                entries: VecDeque::new(),
                retained_bytes: 0,
                next_seq: 0,
                max_entries: max_entries.max(1),
                max_bytes,
                log: None,
                log_end: None,
                transitions: vec![(0, status.clone())],
                current: status,
                finished: false,
                bytes_captured: 0,
                dropped: 0,
                gpu_version: 0,
                series: SeriesSet::default(),
                series_in_log: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// A finished run's capture whose entries live in its log file (a run loaded again
    /// after a restart): nothing of it is held in memory. Entries the run made beyond
    /// its log (which reached its size limit) are reported as a gap.
    pub(crate) fn from_log(status: RunStatus, log: LogLocator, entries: u64) -> OutputCapture {
        let total = status.total_entries.unwrap_or(entries).max(entries);
        let capture = OutputCapture::new(status, 1, 0, None);
        {
            let mut s = capture.lock();
            s.next_seq = total;
            s.log_end = (total > entries).then_some(entries);
            s.log = Some(log);
            s.finished = true;
            s.series_in_log = true;
        }
        capture
    }

    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        // A panic while holding the lock leaves consistent data (every update is a few
        // plain assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the run's log is, so evicted entries can be read back from it.
    pub(crate) fn set_log(&self, log: LogLocator) {
        self.lock().log = Some(log);
    }

    /// Appends a batch of entries (seqs must continue from the last batch), evicts the
    /// oldest beyond the caps, and wakes every waiting subscriber once.
    /// `log_index` is the log writer's current sparse index, when there is a log.
    pub(crate) fn append(&self, batch: Vec<Entry>, log_index: Option<&[u64]>) {
        if batch.is_empty() {
            return;
        }
        let mut s = self.lock();
        for entry in batch {
            debug_assert_eq!(entry.seq, s.next_seq);
            s.next_seq = entry.seq + 1;
            s.bytes_captured += entry.message.len() as u64;
            if !entry.metrics().is_empty() {
                s.series.record(&entry);
            }
            s.retained_bytes += entry.size_in_memory();
            s.entries.push_back(Arc::new(entry));
        }
        while s.entries.len() > s.max_entries
            || (s.retained_bytes > s.max_bytes && s.entries.len() > 1)
        {
            let old = s.entries.pop_front().expect("ring is not empty");
            s.retained_bytes -= old.size_in_memory();
        }
        if let (Some(log), Some(index)) = (s.log.as_mut(), log_index) {
            if index.len() > log.index.len() {
                let known = log.index.len();
                log.index.extend_from_slice(&index[known..]);
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Changes the current status. With `announce`, subscribers get it as a `Status`
    /// event placed after the entries captured so far.
    pub(crate) fn update_status(&self, announce: bool, change: impl FnOnce(&mut RunStatus)) {
        let mut s = self.lock();
        change(&mut s.current);
        if announce {
            let at = s.next_seq;
            let snapshot = s.current.clone();
            s.transitions.push((at, snapshot.clone()));
            drop(s);
            self.changed.notify_all();
            if let Some(path) = &self.status_file {
                crate::logfile::save_status(path, &snapshot);
            }
        }
    }

    /// Records the run's GPU use and tells subscribers.
    pub(crate) fn update_gpu(
        &self,
        memory_bytes: Option<u64>,
        peak_bytes: Option<u64>,
        utilization_percent: Option<u32>,
    ) {
        let mut s = self.lock();
        s.current.gpu_memory_bytes = memory_bytes;
        s.current.gpu_memory_peak_bytes = peak_bytes;
        s.current.gpu_utilization_percent = utilization_percent;
        s.gpu_version += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Records the final status and wakes everyone: no more entries will come. With a
    /// (healthy) log file, the ring's memory is released.
    pub(crate) fn finish(&self, change: impl FnOnce(&mut RunStatus)) {
        let mut s = self.lock();
        change(&mut s.current);
        s.current.refresh_duration();
        s.current.total_entries = Some(s.next_seq);
        let at = s.next_seq;
        let snapshot = s.current.clone();
        // Saved before anyone is told, so a finished run is finished on disk too.
        if let Some(path) = &self.status_file {
            crate::logfile::save_status(path, &snapshot);
        }
        s.transitions.push((at, snapshot));
        s.finished = true;
        if s.log.is_some() && s.log_end.is_none() {
            // The whole output is in the log file: give the ring back. A server keeps many
            // finished runs; their readers find every entry in the file (through the
            // shared block cache).
            s.entries = VecDeque::new();
            s.retained_bytes = 0;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The log file will get no more entries (it reached its size limit): entries after
    /// those captured so far live in the ring only, so the ring is kept when the run
    /// finishes.
    pub(crate) fn log_stops_growing(&self) {
        let mut s = self.lock();
        s.log_end = Some(s.next_seq);
    }

    /// Most entries the ring keeps.
    pub(crate) fn max_entries(&self) -> usize {
        self.lock().max_entries
    }

    /// The log file failed: stop reading evicted entries back from it (readers that fall
    /// behind now get a `Gap`).
    pub(crate) fn forget_log(&self) {
        self.lock().log = None;
    }

    /// The current status (with `duration_seconds` as of now).
    pub fn status(&self) -> RunStatus {
        let mut status = self.lock().current.clone();
        status.refresh_duration();
        status
    }

    /// Whether the run is over and no more entries will come.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Counters for metrics.
    pub fn stats(&self) -> CaptureStats {
        let s = self.lock();
        CaptureStats {
            entries: s.next_seq,
            bytes: s.bytes_captured,
            dropped: s.dropped,
            retained_entries: s.entries.len(),
            retained_bytes: s.retained_bytes,
        }
    }

    /// The run's metric series. For a run loaded after a restart they are read from its
    /// log the first time they are asked for.
    pub fn metrics(&self) -> Vec<MetricSeries> {
        let (in_log, next_seq) = {
            let s = self.lock();
            (s.series_in_log, s.next_seq)
        };
        if in_log {
            let mut series = SeriesSet::default();
            let mut cursor = 0;
            while cursor < next_seq {
                let (batch, _) = self.read(cursor, MAX_BATCH);
                let Some(last) = batch.last() else { break };
                cursor = last.seq + 1;
                batch.iter().for_each(|e| series.record(e));
            }
            let mut s = self.lock();
            s.series = series;
            s.series_in_log = false;
        }
        self.lock().series.series().to_vec()
    }

    /// Blocks until the run is finished or `deadline` passes; returns the final status.
    pub fn wait_finished(&self, deadline: Option<Instant>) -> Option<RunStatus> {
        let mut s = self.lock();
        loop {
            if s.finished {
                let mut status = s.current.clone();
                status.refresh_duration();
                return Some(status);
            }
            s = match deadline {
                None => self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.changed
                        .wait_timeout(s, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Reads up to `max` entries from `from_seq` on, from memory or (for evicted ones) the
    /// log. Returns the entries and the seq after the last captured entry. Entries that
    /// were evicted and that no log has are skipped: the seqs jump.
    pub fn read(&self, from_seq: u64, max: usize) -> (Vec<Arc<Entry>>, u64) {
        let s = self.lock();
        let next_seq = s.next_seq;
        let first = s.first_seq();
        if from_seq < first {
            if let Some(log) = s.log.clone() {
                let on_disk = s.on_disk();
                drop(s);
                let mut out = Vec::new();
                let mut cursor = from_seq;
                while cursor < on_disk && out.len() < max {
                    let to = on_disk.min(cursor + (max - out.len()) as u64);
                    match self.read_back(&log, cursor, to, on_disk) {
                        Ok(got) if !got.is_empty() => {
                            cursor += got.len() as u64;
                            out.extend(got);
                        }
                        _ => break,
                    }
                }
                if out.len() < max {
                    let more = self.read(first, max - out.len()).0;
                    out.extend(more.into_iter().filter(|e| e.seq >= first));
                }
                return (out, next_seq);
            }
        }
        let skip = from_seq.saturating_sub(first) as usize;
        let out = s.entries.iter().skip(skip).take(max).cloned().collect();
        (out, next_seq)
    }

    /// Entries `from..to` read back from the log. Blocks wholly below `on_disk` (the first
    /// seq still in memory: everything older is complete in the log) go through the block
    /// cache.
    fn read_back(
        &self,
        log: &LogLocator,
        from: u64,
        to: u64,
        on_disk: u64,
    ) -> std::io::Result<Vec<Arc<Entry>>> {
        let block_start = from - from % INDEX_EVERY;
        let block_end = block_start + INDEX_EVERY;
        if block_end > on_disk {
            let mut entries = log.read(from, to, MAX_BATCH)?;
            Joiner::default().attach(&self.metric_rules, &mut entries);
            return Ok(entries.into_iter().map(Arc::new).collect());
        }
        let key = (self.cache_id, block_start);
        let cached = cold_blocks().get(key);
        let block = match cached {
            Some(block) => block,
            None => {
                let mut entries = log.read(block_start, block_end, INDEX_EVERY as usize)?;
                Joiner::default().attach(&self.metric_rules, &mut entries);
                let block: Block = entries.into_iter().map(Arc::new).collect();
                if block.len() as u64 != INDEX_EVERY {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ends inside entries {block_start}..{block_end}",
                            log.path.display()
                        ),
                    ));
                }
                cold_blocks().insert(key, Arc::clone(&block));
                block
            }
        };
        let lo = (from - block_start) as usize;
        let hi = (to.min(block_end) - block_start) as usize;
        Ok(block[lo..hi].to_vec())
    }

    /// A subscription on `capture` starting at `from`.
    pub fn subscribe(capture: &Arc<OutputCapture>, from: From) -> Subscription {
        let s = capture.lock();
        let cursor = match from {
            From::Start => 0,
            From::AfterSeq(seq) => seq.saturating_add(1),
            From::Tail(n) => s.next_seq.saturating_sub(n),
        };
        // Start with the last status at or before the cursor (the state the reader is in
        // at that point), then every later change in its place among the entries.
        let next_transition = s
            .transitions
            .iter()
            .rposition(|(at, _)| *at <= cursor)
            .unwrap_or(0);
        let gpu_version = s.gpu_version;
        drop(s);
        Subscription {
            capture: Arc::clone(capture),
            cursor,
            gpu_version,
            next_transition,
            buffered: VecDeque::new(),
            ended: false,
        }
    }
}

/// Most blocks (of `INDEX_EVERY` entries) and bytes the block cache keeps, for all runs
/// together: replays of any number of runs never hold more than this.
const COLD_MAX_BLOCKS: usize = 128;
const COLD_MAX_BYTES: usize = 32 << 20;

/// Entries decoded from one block of a run's log, shared by every reader of that block.
type Block = Arc<[Arc<Entry>]>;

/// The process-wide least-recently-used cache of decoded log blocks, keyed by (capture,
/// first seq of the block). Subscribers replaying the same history (a page reload, many
/// clients at once) decode each block once.
fn cold_blocks() -> MutexGuard<'static, ColdBlocks> {
    static COLD: Mutex<ColdBlocks> = Mutex::new(ColdBlocks {
        blocks: VecDeque::new(),
        bytes: 0,
    });
    COLD.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct ColdBlocks {
    /// (key, entries, bytes), least recently used first.
    blocks: VecDeque<((u64, u64), Block, usize)>,
    bytes: usize,
}

impl ColdBlocks {
    fn get(&mut self, key: (u64, u64)) -> Option<Block> {
        // Readers of one history move forward together: the block is usually near the back.
        let pos = self.blocks.iter().rposition(|(k, _, _)| *k == key)?;
        let hit = self.blocks.remove(pos)?;
        let block = Arc::clone(&hit.1);
        self.blocks.push_back(hit);
        Some(block)
    }

    fn insert(&mut self, key: (u64, u64), block: Block) {
        if self.blocks.iter().any(|(k, _, _)| *k == key) {
            return;
        }
        let size: usize = block.iter().map(|e| e.size_in_memory()).sum();
        self.bytes += size;
        self.blocks.push_back((key, block, size));
        while self.blocks.len() > COLD_MAX_BLOCKS
            || (self.bytes > COLD_MAX_BYTES && self.blocks.len() > 1)
        {
            if let Some((_, _, size)) = self.blocks.pop_front() {
                self.bytes -= size;
            }
        }
    }
}

/// A reader's cursor over a run's output. Each subscriber reads at its own pace: a slow one
/// never slows the child or other subscribers; if it falls behind the ring it gets the
/// evicted entries from the log file (or a `Gap` without one).
///
/// ```no_run
/// # use runstream::{Engine, EngineConfig, RunSpec, From, Next};
/// # use std::time::Duration;
/// # let engine = Engine::new(EngineConfig::default());
/// let run = engine.submit(RunSpec::new("seq").arg("3")).unwrap();
/// let mut sub = run.subscribe(From::Start);
/// loop {
///     match sub.next(Duration::from_secs(15)) {
///         Next::Entries(entries) => entries.iter().for_each(|e| println!("{}", e.message)),
///         Next::End(status) => break println!("{:?}", status.status),
///         _ => {}
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Subscription {
    capture: Arc<OutputCapture>,
    cursor: u64,
    gpu_version: u64,
    next_transition: usize,
    buffered: VecDeque<Event>,
    ended: bool,
}

impl Subscription {
    /// The seq of the next entry this subscription will hand out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Waits up to `timeout` for something new: entries, a gap, a status change, or the end.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let deadline = crate::deadline::after(timeout);
        let mut s = self.capture.lock();
        loop {
            // Status changes come in their place: after the entries captured before them.
            let mut entry_limit = u64::MAX;
            if let Some((at, status)) = s.transitions.get(self.next_transition) {
                if *at <= self.cursor {
                    self.next_transition += 1;
                    return Next::Status(status.clone());
                }
                entry_limit = *at;
            }
            if s.gpu_version != self.gpu_version && !s.finished {
                self.gpu_version = s.gpu_version;
                return Next::Gpu {
                    memory_bytes: s.current.gpu_memory_bytes,
                    peak_bytes: s.current.gpu_memory_peak_bytes,
                    utilization_percent: s.current.gpu_utilization_percent,
                };
            }
            let first = s.first_seq();
            if self.cursor < s.next_seq {
                if self.cursor < first {
                    let from_seq = self.cursor;
                    let on_disk = s.on_disk();
                    if let Some(log) = s.log.clone().filter(|_| from_seq < on_disk) {
                        drop(s);
                        let to = on_disk.min(entry_limit);
                        match self.capture.read_back(&log, from_seq, to, on_disk) {
                            Ok(got) if !got.is_empty() => {
                                self.cursor += got.len() as u64;
                                return Next::Entries(got);
                            }
                            Ok(_) | Err(_) => {
                                log::warn!(
                                    "could not read back entries {from_seq}..{to} from {}",
                                    log.path.display()
                                );
                                s = self.capture.lock();
                            }
                        }
                    }
                    // No log, or the log failed us: report what is lost.
                    let first = s.first_seq();
                    s.dropped += first - from_seq;
                    self.cursor = first;
                    return Next::Gap {
                        from_seq,
                        to_seq: first - 1,
                    };
                }
                let skip = (self.cursor - first) as usize;
                let available = (s.next_seq.min(entry_limit) - self.cursor) as usize;
                let take = available.min(MAX_BATCH);
                if take > 0 {
                    let batch: Vec<Arc<Entry>> =
                        s.entries.range(skip..skip + take).cloned().collect();
                    self.cursor += take as u64;
                    return Next::Entries(batch);
                }
            }
            if s.finished && self.next_transition >= s.transitions.len() {
                self.ended = true;
                let mut status = s.current.clone();
                status.refresh_duration();
                return Next::End(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Timeout;
            }
            s = self
                .capture
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Iterator for Subscription {
    type Item = Event;

    /// Blocks until the next event; `None` after [`Event::End`].
    fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match Subscription::next(self, Duration::from_secs(3600)) {
                Next::Entries(entries) => {
                    self.buffered.extend(entries.into_iter().map(Event::Entry))
                }
                Next::Gap { from_seq, to_seq } => return Some(Event::Gap { from_seq, to_seq }),
                Next::Status(status) => return Some(Event::Status(status)),
                Next::Gpu {
                    memory_bytes,
                    peak_bytes,
                    utilization_percent,
                } => {
                    return Some(Event::Gpu {
                        memory_bytes,
                        peak_bytes,
                        utilization_percent,
                    })
                }
                Next::End(status) => return Some(Event::End(status)),
                Next::Timeout => {}
            }
        }
    }
}
