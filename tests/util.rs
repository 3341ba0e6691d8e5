//! Helpers shared by the integration tests.

#[cfg(unix)]
use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runstream::{
    Engine, EngineConfig, Entry, Event, From, Next, RunHandle, RunSpec, RunState, RunStatus, Stream,
};

/// Generous bound for anything that should happen "soon": a failing test fails instead of
/// hanging, and a slow machine does not make a passing test fail.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Held by the tests that load the machine most (tens of MB through hundreds of streams),
/// so that they run one at a time: together they starved each other past `PATIENCE`.
#[cfg(unix)]
pub fn heavy_test() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// An engine keeping at most `ring_max_entries` in memory and the full output in `dir`.
#[cfg(unix)]
pub fn engine_with_log(dir: &std::path::Path, ring_max_entries: usize) -> Engine {
    Engine::new(EngineConfig {
        ring_max_entries,
        log_dir: Some(dir.to_path_buf()),
        ..EngineConfig::default()
    })
}

/// Cancels `run` from three threads at once (cancel must be idempotent and thread-safe).
pub fn cancel_from_three_threads(run: &RunHandle) {
    let cancels: Vec<_> = (0..3)
        .map(|_| {
            let run = run.clone();
            std::thread::spawn(move || run.cancel())
        })
        .collect();
    for c in cancels {
        c.join().unwrap();
    }
}

pub fn engine() -> Engine {
    Engine::new(EngineConfig::default())
}

#[cfg(unix)]
pub fn sh(script: &str) -> RunSpec {
    RunSpec::new("sh").args(["-c", script])
}

/// Follows a run to its end; returns every entry and the final status.
pub fn collect(run: &RunHandle) -> (Vec<Arc<Entry>>, RunStatus) {
    let mut entries = Vec::new();
    let mut sub = run.subscribe(From::Start);
    let deadline = Instant::now() + PATIENCE * 4;
    loop {
        assert!(Instant::now() < deadline, "run {} did not end", run.id());
        match sub.next(Duration::from_secs(1)) {
            Next::Entries(batch) => entries.extend(batch),
            Next::End(status) => return (entries, status),
            Next::Gap { from_seq, to_seq } => panic!("unexpected gap {from_seq}..={to_seq}"),
            Next::Status(_) | Next::Gpu { .. } | Next::Timeout => {}
        }
    }
}

/// Entries of one stream, as (message, end) pairs.
pub fn texts(entries: &[Arc<Entry>], stream: Stream) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.message.clone())
        .collect()
}

/// Waits until an entry matching `pred` is captured; returns it.
pub fn wait_for_entry(run: &RunHandle, pred: impl Fn(&Entry) -> bool) -> Arc<Entry> {
    let deadline = Instant::now() + PATIENCE;
    for event in run.subscribe(From::Start) {
        assert!(Instant::now() < deadline, "no matching entry in time");
        match event {
            Event::Entry(e) if pred(&e) => return e,
            Event::End(s) => panic!("run ended ({:?}) before the expected entry", s.status),
            _ => {}
        }
    }
    unreachable!("the iterator ends after End")
}

/// Waits until the run is running; returns its pid (= its process group id).
pub fn wait_running(run: &RunHandle) -> u32 {
    let deadline = Instant::now() + PATIENCE;
    let mut sub = run.subscribe(From::Start);
    loop {
        assert!(Instant::now() < deadline, "run did not start");
        match sub.next(Duration::from_secs(1)) {
            Next::Status(s) if s.status == RunState::Running => {
                return s.pid.expect("running runs have a pid")
            }
            Next::End(s) => panic!("run ended ({:?}) before running", s.status),
            _ => {}
        }
    }
}

/// The `runstream-test-child` helper (tests/child/main.rs) doing `steps`.
pub fn child<S: AsRef<str>>(steps: &[S]) -> RunSpec {
    RunSpec::new(env!("CARGO_BIN_EXE_runstream-test-child"))
        .args(steps.iter().map(|s| s.as_ref().to_string()))
}

/// Whether this test binary runs under wine rather than on a real Windows (wine's ntdll
/// exports `wine_get_version`). Some Windows behaviour wine does not emulate: the tests
/// that meet it say so on stderr and check what wine does instead.
#[cfg(windows)]
pub fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: ntdll is always loaded; both names are NUL-terminated.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// Never on unix.
#[cfg(unix)]
pub fn under_wine() -> bool {
    false
}

/// Live (not zombie) processes of group `pgid`, from `/proc`.
#[cfg(unix)]
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = fields[0];
        if fields[2] == pgid.to_string() && state != "Z" && state != "X" {
            live.push(pid);
        }
    }
    live
}

/// Reads a `runstream serve` child's first line, `listening on http://ADDR`; returns ADDR.
#[cfg(unix)]
pub fn listening_addr(stdout: std::process::ChildStdout) -> std::net::SocketAddr {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

/// Whether process `pid` is alive (not a zombie).
#[cfg(unix)]
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Makes a FIFO at `path` and opens it for reading and writing, which on Linux never
/// blocks waiting for the other end. A run that reads the FIFO gets one line per line
/// written, when the test chooses, and EOF once the returned file is dropped.
#[cfg(unix)]
pub fn fifo_feeder(path: &std::path::Path) -> fs::File {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// A module that prints `got LINE` for every line written to the FIFO at `feed`.
#[cfg(unix)]
pub fn fifo_echo_module(feed: &std::path::Path) -> serde_json::Value {
    serde_json::json!({"name": "Echoer", "program": "sh",
        "args": ["-c", "exec 3<\"$0\"; while read -r l <&3; do echo \"got $l\"; done", feed]})
}
