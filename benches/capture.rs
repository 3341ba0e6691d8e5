//! Capture benchmarks: what the engine costs on top of the child itself.
//!
//! A plain `fn main` program (`harness = false`, no criterion, to keep build time low).
//! Every case is measured against a baseline taken in the same run, interleaved with it
//! (baseline, engine, baseline, engine, …) so that load from elsewhere on the machine hits
//! both alike. Each figure is the median of the repetitions: wall time, and CPU time
//! (user + system) of this process — the engine's threads — and of its reaped children.
//!
//! ```sh
//! cargo build --release            # case (d) drives target/release/runstream
//! cargo bench --bench capture
//! RUNSTREAM_BENCH_QUICK=1 cargo bench --bench capture    # smoke test: 1 rep, small sizes
//! RUNSTREAM_BENCH_CASES=a,b cargo bench --bench capture  # only some cases
//! ```
//!
//! Cases:
//! - (a) 1 000 000 short lines (`seq 1 1000000`) through the engine, log file on, default
//!   ring, until `RunHandle::wait()`; vs `seq` to /dev/null (and vs a bare pipe drain).
//! - (b) 200 MB of 1000-byte lines (`yes <999 x> | head -c 200000000`) the same way.
//! - (c) fan-out: 100 subscriber threads on one run of 200 000 lines, each must get every
//!   entry; vs the same run with no subscriber.
//! - (d) a Python loop printing 200 000 lines through `runstream run --json` (stdout to
//!   /dev/null) vs the same Python command straight to /dev/null.
//! - (e) memory after (a): the run's retained entries/bytes, and VmHWM/VmRSS.
//! - (f) metric extraction: 1 000 000 log lines without metrics (timestamps, `:`), then
//!   as many with four metrics each (`step=… loss=… acc=… lr=…`), `cat` from a file through
//!   the engine with `extract_metrics` on vs off (the baseline, interleaved).

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use runstream::{
    CaptureStats, Engine, EngineConfig, From, Next, RunHandle, RunSpec, RunState, Subscription,
};

/// Sizes and repetitions.
struct Plan {
    quick: bool,
    reps: usize,
    short_lines: u64,
    long_bytes: u64,
    long_line: usize,
    fan_lines: u64,
    fan_subscribers: usize,
    py_lines: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = std::env::var("RUNSTREAM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Plan {
                quick,
                reps: 1,
                short_lines: 100_000,
                long_bytes: 20_000_000,
                long_line: 1000,
                fan_lines: 20_000,
                fan_subscribers: 100,
                py_lines: 20_000,
            }
        } else {
            Plan {
                quick,
                reps: 5,
                short_lines: 1_000_000,
                long_bytes: 200_000_000,
                long_line: 1000,
                fan_lines: 200_000,
                fan_subscribers: 100,
                py_lines: 200_000,
            }
        }
    }
}

/// One measurement: wall time, and CPU time of this process and of its reaped children.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    wall: Duration,
    cpu_self: Duration,
    cpu_children: Duration,
}

/// User + system CPU time of `who` (`RUSAGE_SELF` or `RUSAGE_CHILDREN`).
fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the valid pointer it is given.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Measures `f`: wall time and the CPU time it added to this process and its children.
fn measure<R>(f: impl FnOnce() -> R) -> (Sample, R) {
    let (self0, children0) = (cpu_time(libc::RUSAGE_SELF), cpu_time(libc::RUSAGE_CHILDREN));
    let start = Instant::now();
    let result = f();
    let wall = start.elapsed();
    let sample = Sample {
        wall,
        cpu_self: cpu_time(libc::RUSAGE_SELF).saturating_sub(self0),
        cpu_children: cpu_time(libc::RUSAGE_CHILDREN).saturating_sub(children0),
    };
    (sample, result)
}

/// The median of each field on its own.
fn median(samples: &[Sample]) -> Sample {
    assert!(!samples.is_empty());
    let mid = |field: fn(&Sample) -> Duration| {
        let mut v: Vec<Duration> = samples.iter().map(field).collect();
        v.sort();
        v[v.len() / 2]
    };
    Sample {
        wall: mid(|s| s.wall),
        cpu_self: mid(|s| s.cpu_self),
        cpu_children: mid(|s| s.cpu_children),
    }
}

/// One line of the results table.
struct Row {
    case: String,
    what: String,
    median: Sample,
    /// The same-run baseline's median wall time, for the ratio column.
    baseline: Option<Duration>,
    rate: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn add(
        &mut self,
        case: &str,
        what: &str,
        median: Sample,
        baseline: Option<Sample>,
        rate: String,
    ) {
        let row = Row {
            case: case.into(),
            what: what.into(),
            median,
            baseline: baseline.map(|b| b.wall),
            rate,
        };
        eprintln!("  {}", format_row(&row));
        self.rows.push(row);
    }

    fn note(&mut self, text: String) {
        eprintln!("  note: {text}");
        self.notes.push(text);
    }

    fn print(&self, plan: &Plan) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## runstream capture bench ({}, median of {} rep{})\n",
            if plan.quick { "QUICK mode" } else { "full" },
            plan.reps,
            if plan.reps == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            out,
            "| case | measurement | wall (median) | wall ratio vs baseline | CPU engine process | CPU child(ren) | rate |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
        for row in &self.rows {
            let _ = writeln!(out, "{}", format_row(row));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        println!("{out}");
    }
}

fn format_row(row: &Row) -> String {
    let ratio = match row.baseline {
        Some(b) if !b.is_zero() => {
            format!("{:.2}×", row.median.wall.as_secs_f64() / b.as_secs_f64())
        }
        Some(_) => "∞".into(),
        None => "(baseline)".into(),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        row.case,
        row.what,
        fmt_duration(row.median.wall),
        ratio,
        fmt_duration(row.median.cpu_self),
        fmt_duration(row.median.cpu_children),
        row.rate
    )
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

fn per_sec(count: f64, d: Duration) -> f64 {
    count / d.as_secs_f64().max(1e-9)
}

fn fmt_count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ns_per(d: Duration, count: u64) -> f64 {
    d.as_secs_f64() * 1e9 / count.max(1) as f64
}

/// Runs a command to completion with stdout and stderr on /dev/null; panics on failure.
fn run_to_null(mut cmd: Command) -> Sample {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (sample, status) = measure(|| cmd.status());
    let status = status.unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
    sample
}

/// Runs a command with stdout on a pipe that this process drains (64 KiB reads, bytes
/// thrown away): the cost of moving the bytes through a pipe at all, without the engine.
fn run_to_pipe_drain(mut cmd: Command) -> (Sample, u64) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let (sample, total) = measure(|| {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut pipe = child.stdout.take().expect("piped stdout");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading {cmd:?}: {e}"),
            }
        }
        let status = child.wait().expect("wait");
        assert!(status.success(), "{cmd:?} failed: {status}");
        total
    });
    (sample, total)
}

/// An engine with a log directory (log file on) and otherwise default settings.
fn engine_with_log(dir: &Path) -> Engine {
    Engine::new(EngineConfig {
        log_dir: Some(dir.to_path_buf()),
        ..EngineConfig::default()
    })
}

/// Submits `spec` to a fresh engine (log file in a fresh temp dir) and waits for it.
/// Measures from submit to `wait()` returning; returns the run (still readable).
fn engine_run(spec: RunSpec) -> (Sample, RunHandle, CaptureStats) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with_log(dir.path());
    let (sample, run) = measure(|| {
        let run = engine.submit(spec).expect("submit");
        let status = run.wait();
        assert_eq!(status.status, RunState::Completed, "{status:?}");
        run
    });
    let stats = run.capture().stats();
    drop(engine);
    drop(dir); // the log file goes with it
    (sample, run, stats)
}

// ---------------------------------------------------------------------------------------

fn case_a_short_lines(plan: &Plan, table: &mut Table) {
    let n = plan.short_lines;
    eprintln!("(a) {n} short lines: seq 1 {n}");
    let seq = || {
        let mut c = Command::new("seq");
        c.arg("1").arg(n.to_string());
        c
    };
    let (mut base, mut drain, mut eng) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..plan.reps {
        base.push(run_to_null(seq()));
        drain.push(run_to_pipe_drain(seq()).0);
        let (sample, run, stats) = engine_run(RunSpec::new("seq").arg("1").arg(n.to_string()));
        // n lines plus the engine's own "exited with code 0".
        assert_eq!(stats.entries, n + 1, "every line must be captured");
        eng.push(sample);
        last = Some((run, stats));
    }
    let (base, drain, eng) = (median(&base), median(&drain), median(&eng));
    let lines_per_s = |s: Sample| format!("{} lines/s", fmt_count(per_sec(n as f64, s.wall)));
    table.add(
        "a short lines",
        &format!("`seq 1 {n}` > /dev/null"),
        base,
        None,
        lines_per_s(base),
    );
    table.add(
        "a short lines",
        "same, through a pipe drained by a bare read loop",
        drain,
        Some(base),
        lines_per_s(drain),
    );
    table.add(
        "a short lines",
        "through the engine (log file on, default ring) until wait()",
        eng,
        Some(base),
        format!("**{}**", lines_per_s(eng)),
    );
    table.note(format!(
        "(a) engine wall / bare pipe drain wall = {:.2}×; engine wall per line = {:.0} ns; \
         engine-process CPU per line = {:.0} ns",
        eng.wall.as_secs_f64() / drain.wall.as_secs_f64(),
        ns_per(eng.wall, n),
        ns_per(eng.cpu_self, n),
    ));
    // (e) memory, right after (a), before anything else grows the process.
    if let Some((run, stats)) = last {
        let now = run.capture().stats();
        let (hwm, rss) = vm_hwm_rss();
        table.note(format!(
            "(e) memory after (a): retained_entries = {}, retained_bytes = {} ({:.1} MiB), \
             captured {} entries / {} message bytes; process VmHWM = {}, VmRSS = {}",
            now.retained_entries,
            now.retained_bytes,
            now.retained_bytes as f64 / (1 << 20) as f64,
            stats.entries,
            stats.bytes,
            hwm.as_deref().unwrap_or("?"),
            rss.as_deref().unwrap_or("?"),
        ));
    }
}

fn vm_hwm_rss() -> (Option<String>, Option<String>) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn case_b_long_lines(plan: &Plan, table: &mut Table) {
    let bytes = plan.long_bytes;
    let line = "x".repeat(plan.long_line - 1); // plus '\n' = long_line bytes per line
    let lines = bytes / plan.long_line as u64;
    eprintln!("(b) {bytes} bytes of {}-byte lines", plan.long_line);
    // `yes` repeats its argument at GB/s and `head -c` cuts it. (A `tr | fold` pipeline
    // would itself be the bottleneck: fold goes byte by byte.)
    const SCRIPT: &str = r#"yes "$1" | head -c "$2""#;
    let args = || ["-c", SCRIPT, "sh", line.as_str(), &bytes.to_string()].map(String::from);
    let sh = || {
        let mut c = Command::new("sh");
        c.args(args());
        c
    };
    let (mut base, mut drain, mut eng) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.reps {
        base.push(run_to_null(sh()));
        let (sample, got) = run_to_pipe_drain(sh());
        assert_eq!(got, bytes);
        drain.push(sample);
        let (sample, _run, stats) = engine_run(RunSpec::new("sh").args(args()));
        assert_eq!(stats.entries, lines + 1, "every line must be captured");
        let system = "exited with code 0".len() as u64;
        assert_eq!(stats.bytes, lines * (plan.long_line as u64 - 1) + system);
        eng.push(sample);
    }
    let (base, drain, eng) = (median(&base), median(&drain), median(&eng));
    let mb = bytes as f64 / 1e6;
    let mb_per_s = |s: Sample| format!("{:.0} MB/s", mb / s.wall.as_secs_f64());
    table.add(
        "b long lines",
        &format!(
            "`yes <{}×x> | head -c {bytes}` > /dev/null",
            plan.long_line - 1
        ),
        base,
        None,
        mb_per_s(base),
    );
    table.add(
        "b long lines",
        "same, through a pipe drained by a bare read loop",
        drain,
        Some(base),
        mb_per_s(drain),
    );
    table.add(
        "b long lines",
        "through the engine (log file on, default ring) until wait()",
        eng,
        Some(base),
        format!(
            "**{}** ({} lines/s)",
            mb_per_s(eng),
            fmt_count(per_sec(lines as f64, eng.wall))
        ),
    );
    table.note(format!(
        "(b) engine wall / bare pipe drain wall = {:.2}×; engine-process CPU per MB = {:.2} ms \
         (MB = 10^6 bytes of child output)",
        eng.wall.as_secs_f64() / drain.wall.as_secs_f64(),
        eng.cpu_self.as_secs_f64() * 1e3 / mb,
    ));
}

/// Reads a subscription to its end; checks that entries come in order with no hole and no
/// gap. Returns how many entries it got.
fn count_all(mut sub: Subscription) -> u64 {
    let mut expected = 0u64;
    loop {
        match sub.next(Duration::from_secs(120)) {
            Next::Entries(batch) => {
                assert_eq!(batch[0].seq, expected, "entries out of order or missing");
                expected += batch.len() as u64;
            }
            Next::Gap { from_seq, to_seq } => {
                panic!("subscriber lost entries {from_seq}..={to_seq}")
            }
            Next::Status(_) | Next::Gpu { .. } => {}
            Next::End(_) => return expected,
            Next::Timeout => panic!("subscriber stalled at seq {expected}"),
        }
    }
}

fn case_c_fan_out(plan: &Plan, table: &mut Table) {
    let n = plan.fan_lines;
    let subs = plan.fan_subscribers;
    eprintln!("(c) fan-out: {subs} subscribers on seq 1 {n}");
    let spec = || RunSpec::new("seq").arg("1").arg(n.to_string());
    let (mut base, mut eng) = (Vec::new(), Vec::new());
    let mut delivered = 0u64;
    for _ in 0..plan.reps {
        let (sample, _run, stats) = engine_run(spec());
        assert_eq!(stats.entries, n + 1);
        base.push(sample);

        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine_with_log(dir.path());
        let (sample, (run, counts)) = measure(|| {
            let run = engine.submit(spec()).expect("submit");
            let readers: Vec<_> = (0..subs)
                .map(|i| {
                    let sub = run.subscribe(From::Start);
                    thread::Builder::new()
                        .name(format!("bench-sub-{i}"))
                        .spawn(move || count_all(sub))
                        .expect("subscriber thread")
                })
                .collect();
            let counts: Vec<u64> = readers
                .into_iter()
                .map(|h| h.join().expect("subscriber panicked"))
                .collect();
            let status = run.wait();
            assert_eq!(status.status, RunState::Completed);
            (run, counts)
        });
        let total = run.capture().stats().entries;
        assert_eq!(total, n + 1);
        assert!(
            counts.iter().all(|&c| c == total),
            "every subscriber must get every entry: {counts:?} of {total}"
        );
        delivered = counts.iter().sum();
        eng.push(sample);
        drop(engine);
        drop(dir);
    }
    let (base, eng) = (median(&base), median(&eng));
    table.add(
        "c fan-out",
        &format!("`seq 1 {n}`, 0 subscribers (log file on)"),
        base,
        None,
        format!("{} lines/s", fmt_count(per_sec(n as f64, base.wall))),
    );
    let extra_wall = ns_per(eng.wall.saturating_sub(base.wall), delivered);
    let extra_cpu = ns_per(eng.cpu_self.saturating_sub(base.cpu_self), delivered);
    table.add(
        "c fan-out",
        &format!(
            "same, {subs} subscriber threads from seq 0, each got all {} entries",
            n + 1
        ),
        eng,
        Some(base),
        format!(
            "{} entries delivered/s; **+{extra_wall:.0} ns wall, +{extra_cpu:.0} ns CPU per \
             delivered entry**",
            fmt_count(per_sec(delivered as f64, eng.wall))
        ),
    );
}

/// The interpreter behind `python3` (a pyenv shim is a shell script: resolving it keeps
/// its start-up cost out of both sides).
fn find_python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_file().then_some(path)
}

/// `target/release/runstream` (`CARGO_BIN_EXE_*` is not relied on in benches).
fn runstream_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join("release").join("runstream");
    bin.is_file().then_some(bin)
}

fn case_d_python(plan: &Plan, table: &mut Table) {
    let n = plan.py_lines;
    eprintln!("(d) realistic producer: python3 printing {n} lines");
    let Some(bin) = runstream_binary() else {
        table.note(
            "(d) skipped: build with cargo build --release first (target/release/runstream \
             is missing)"
                .into(),
        );
        return;
    };
    let Some(python) = find_python() else {
        table.note("(d) skipped: python3 not found".into());
        return;
    };
    let script =
        format!("import sys\nfor i in range({n}): print(f'step {{i}} loss {{1/(i+1):.6f}}')");
    let py_args = ["-u".to_string(), "-c".to_string(), script];
    let direct = || {
        let mut c = Command::new(&python);
        c.args(&py_args);
        c
    };
    let through = |log_dir: Option<&Path>| {
        let mut c = Command::new(&bin);
        c.args(["run", "--json"]);
        if let Some(d) = log_dir {
            c.arg("--log-dir").arg(d);
        }
        c.arg("--").arg(&python).args(&py_args);
        c
    };
    let (mut base, mut drain, mut eng, mut eng_log) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.reps {
        base.push(run_to_null(direct()));
        drain.push(run_to_pipe_drain(direct()).0);
        eng.push(run_to_null(through(None)));
        let dir = tempfile::tempdir().expect("temp dir");
        eng_log.push(run_to_null(through(Some(dir.path()))));
        // `{run_id}.jsonl` holds the entries (the binary may write `{run_id}.json` too).
        let logged: u64 = std::fs::read_dir(dir.path())
            .expect("log dir")
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .filter_map(|p| std::fs::read(p).ok())
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
            .sum();
        assert_eq!(logged, n + 1, "the log file must hold every line");
    }
    let (base, drain, eng, eng_log) = (
        median(&base),
        median(&drain),
        median(&eng),
        median(&eng_log),
    );
    let lines_per_s = |s: Sample| format!("{} lines/s", fmt_count(per_sec(n as f64, s.wall)));
    table.add(
        "d python producer",
        &format!("`python3 -u -c <loop of {n} prints>` > /dev/null"),
        base,
        None,
        lines_per_s(base),
    );
    table.add(
        "d python producer",
        "same, through a pipe drained by a bare read loop",
        drain,
        Some(base),
        lines_per_s(drain),
    );
    table.add(
        "d python producer",
        "`runstream run --json -- python3 …` > /dev/null",
        eng,
        Some(base),
        lines_per_s(eng),
    );
    table.add(
        "d python producer",
        "same, with `--log-dir` (log file on)",
        eng_log,
        Some(base),
        lines_per_s(eng_log),
    );
    table.note(format!(
        "(d) CPU ratio (runstream + python) / python alone = {:.2}× (no log), {:.2}× (log); \
         binary: {}; python: {}",
        eng.cpu_children.as_secs_f64() / base.cpu_children.as_secs_f64(),
        eng_log.cpu_children.as_secs_f64() / base.cpu_children.as_secs_f64(),
        bin.display(),
        python.display()
    ));
}

fn case_f_metrics(plan: &Plan, table: &mut Table) {
    let n = plan.short_lines;
    let dir = tempfile::tempdir().expect("temp dir");
    let kinds = [
        (
            "f no metrics",
            "log lines without metrics",
            "2026-11-29 12:00:01 INFO worker 3: batch {i} done in 12 ms (queue empty)",
        ),
        (
            "f 4 metrics",
            "lines with 4 metrics",
            "step={i} loss=0.{i} acc=0.97 lr=1e-4",
        ),
    ];
    for (case, what, template) in kinds {
        eprintln!("(f) {n} {what}, extraction off vs on");
        let file = dir.path().join(format!("{}.txt", case.replace(' ', "_")));
        let mut text = String::with_capacity(n as usize * 64);
        for i in 0..n {
            text.push_str(&template.replace("{i}", &i.to_string()));
            text.push('\n');
        }
        std::fs::write(&file, text).expect("write lines");
        let through = |extract_metrics: bool| {
            let logs = tempfile::tempdir().expect("temp dir");
            let engine = Engine::new(EngineConfig {
                log_dir: Some(logs.path().to_path_buf()),
                extract_metrics,
                ..EngineConfig::default()
            });
            let (sample, run) = measure(|| {
                let run = engine
                    .submit(RunSpec::new("cat").arg(&file))
                    .expect("submit");
                assert_eq!(run.wait().status, RunState::Completed);
                run
            });
            assert_eq!(run.capture().stats().entries, n + 1);
            let values: u64 = run.metrics().iter().map(|s| s.count).sum();
            (sample, values)
        };
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let mut found = 0;
        for _ in 0..plan.reps {
            off.push(through(false).0);
            let (sample, values) = through(true);
            on.push(sample);
            found = values;
        }
        let (off, on) = (median(&off), median(&on));
        let lines_per_s = |s: Sample| format!("{} lines/s", fmt_count(per_sec(n as f64, s.wall)));
        table.add(
            case,
            &format!("{n} {what}, extraction off"),
            off,
            None,
            lines_per_s(off),
        );
        table.add(case, "same, extraction on", on, Some(off), lines_per_s(on));
        table.note(format!(
            "({case}) extraction on / off: wall {:.2}×, engine-process CPU {:.2}× \
             ({:.0} ns of CPU per line more); {found} metric values found",
            on.wall.as_secs_f64() / off.wall.as_secs_f64(),
            on.cpu_self.as_secs_f64() / off.cpu_self.as_secs_f64(),
            (on.cpu_self.as_secs_f64() - off.cpu_self.as_secs_f64()) * 1e9 / n as f64,
        ));
    }
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let plan = Plan::from_env();
    let mut table = Table::default();
    eprintln!(
        "runstream capture bench: {} mode, {} rep(s) each, {} CPU(s)",
        if plan.quick { "quick" } else { "full" },
        plan.reps,
        thread::available_parallelism().map_or(1, |n| n.get())
    );
    // RUNSTREAM_BENCH_CASES=a,c runs only those cases (handy under a profiler).
    let only = std::env::var("RUNSTREAM_BENCH_CASES").unwrap_or_default();
    let wanted = |case: &str| only.is_empty() || only.split(',').any(|c| c.trim() == case);
    let load_before = loadavg();
    let started = Instant::now();
    if wanted("a") {
        case_a_short_lines(&plan, &mut table);
    }
    if wanted("b") {
        case_b_long_lines(&plan, &mut table);
    }
    if wanted("c") {
        case_c_fan_out(&plan, &mut table);
    }
    if wanted("d") {
        case_d_python(&plan, &mut table);
    }
    if wanted("f") {
        case_f_metrics(&plan, &mut table);
    }
    table.note(format!(
        "total bench wall time {:.1} s; /proc/loadavg before: {load_before}, after: {} \
         (other load on the machine skews wall times; CPU columns less so)",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    table.print(&plan);
}
