//! SSE benchmark: events/s to 1 and 100 live clients, history replay to 50 clients, and
//! write→receive latency, for `runstream serve` and — as the baseline, measured in the same
//! run — a well-written Python asyncio SSE server (`benches/sse_baseline.py`).
//!
//! ```sh
//! cargo build --release && cargo bench --bench sse
//! RUNSTREAM_BENCH_QUICK=1 cargo bench --bench sse      # smoke test: small sizes
//! ```
//! Server CPU is the server process's user+system time (from `/proc/PID/stat`) over the
//! measured interval, divided by the events delivered: it includes reading the child's
//! pipe, making entries, and writing to every client.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const PATTERN: &[u8] = b"event: log\n";

struct Plan {
    quick: bool,
    live_one: u64,
    live_many: u64,
    many_clients: usize,
    replay: u64,
    replay_clients: usize,
    latency_samples: usize,
}

impl Plan {
    fn new() -> Plan {
        let quick = std::env::var("RUNSTREAM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Plan {
                quick,
                live_one: 20_000,
                live_many: 2_000,
                many_clients: 100,
                replay: 20_000,
                replay_clients: 50,
                latency_samples: 200,
            }
        } else {
            Plan {
                quick,
                live_one: 300_000,
                live_many: 20_000,
                many_clients: 100,
                replay: 200_000,
                replay_clients: 50,
                latency_samples: 2_000,
            }
        }
    }
}

/// A server under test: its process and port.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    kind: Kind,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Runstream,
    Python,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Runstream => "runstream",
            Kind::Python => "python asyncio",
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start_runstream() -> Option<ServerProcess> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    let bin = target.join("release").join("runstream");
    if !bin.exists() {
        println!(
            "skipped runstream: build it first with cargo build --release ({} missing)",
            bin.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--allow-commands",
            "--max-sse-clients",
            "1000",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .trim_start_matches("listening on http://")
        .parse()
        .unwrap();
    Some(ServerProcess {
        child,
        addr,
        kind: Kind::Runstream,
        _dir: dir,
    })
}

fn start_python() -> Option<ServerProcess> {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let child = Command::new("python3")
        .arg(manifest_dir().join("benches/sse_baseline.py"))
        .arg(&port_file)
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        println!("skipped the python baseline: python3 not found");
        return None;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Some(p) = fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "python baseline did not start");
        thread::sleep(Duration::from_millis(20));
    };
    Some(ServerProcess {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        kind: Kind::Python,
        _dir: dir,
    })
}

/// User+system CPU time of a process.
fn cpu_of(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_sec as f64)
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A run that waits for `gate` before printing `n` lines. Returns (run id, gate).
fn create_gated_run(server: &ServerProcess, n: u64, dir: &Path) -> (String, PathBuf) {
    let gate = dir.join(format!("gate-{n}-{}", Instant::now().elapsed().as_nanos()));
    let id = match server.kind {
        Kind::Runstream => {
            let body = serde_json::json!({"argv": ["sh", "-c", "while [ ! -e \"$0\" ]; do sleep 0.002; done; exec seq 1 \"$1\"", gate, n.to_string()]});
            let reply: serde_json::Value =
                serde_json::from_str(&http(server.addr, "POST", "/api/runs", &body.to_string()))
                    .unwrap();
            reply["run_id"].as_str().unwrap().to_string()
        }
        Kind::Python => http(server.addr, "GET", &format!("/create?n={n}"), ""),
    };
    (id, gate)
}

fn open_gate(server: &ServerProcess, id: &str, gate: &Path) {
    match server.kind {
        Kind::Runstream => fs::write(gate, "").unwrap(),
        Kind::Python => {
            http(server.addr, "GET", &format!("/start/{id}"), "");
        }
    }
}

fn stream_path(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Runstream => format!("/api/runs/{id}/logs/stream"),
        Kind::Python => format!("/stream/{id}"),
    }
}

/// Connects, reads the response head, tells `ready`, then counts `log` events to the end
/// of the stream.
fn count_events(addr: SocketAddr, path: String, ready: mpsc::Sender<()>) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reader = BufReader::with_capacity(256 * 1024, s);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    ready.send(()).unwrap();
    let mut count = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            return count;
        }
        let kept = carry.len();
        carry.extend_from_slice(&buf[..n]);
        // Count matches that end in the new bytes (earlier ones were counted before).
        count += carry
            .windows(PATTERN.len())
            .enumerate()
            .filter(|(i, w)| i + PATTERN.len() > kept && *w == PATTERN)
            .count() as u64;
        if carry.windows(15).any(|w| w == b"event: complete") {
            return count;
        }
        let keep = carry.len().saturating_sub(PATTERN.len() - 1);
        carry.drain(..keep);
    }
}

struct Measured {
    events: u64,
    wall: Duration,
    server_cpu: Duration,
}

/// `clients` clients follow a run of `n` lines; with `live`, they connect before the
/// output starts, otherwise after the run finished (replaying history).
fn scenario(server: &ServerProcess, n: u64, clients: usize, live: bool, dir: &Path) -> Measured {
    // runstream adds one entry of its own at the end: "exited with code 0".
    let expected = n + u64::from(server.kind == Kind::Runstream);
    let (id, gate) = create_gated_run(server, n, dir);
    if !live {
        open_gate(server, &id, &gate);
        let (tx, rx) = mpsc::channel();
        let counted = count_events(server.addr, stream_path(server.kind, &id), tx);
        drop(rx);
        assert_eq!(counted, expected, "warm-up read of the finished run");
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let cpu_before = cpu_of(server.child.id());
    let start_all = Instant::now();
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, path, ready) =
                (server.addr, stream_path(server.kind, &id), ready_tx.clone());
            thread::spawn(move || count_events(addr, path, ready))
        })
        .collect();
    for _ in 0..clients {
        ready_rx.recv().unwrap();
    }
    let (cpu_before, start) = if live {
        let before = (cpu_of(server.child.id()), Instant::now());
        open_gate(server, &id, &gate);
        before
    } else {
        (cpu_before, start_all)
    };
    let mut events = 0;
    for r in readers {
        let got = r.join().unwrap();
        assert_eq!(
            got,
            expected,
            "{}: a client missed events",
            server.kind.name()
        );
        events += got;
    }
    let wall = start.elapsed();
    let server_cpu = cpu_of(server.child.id()).saturating_sub(cpu_before);
    Measured {
        events,
        wall,
        server_cpu,
    }
}

/// Write→receive latency: the bench writes a line into a FIFO that the run's child (`cat`)
/// copies to its stdout; the time until the `log` event arrives at an SSE client.
fn latency(server: &ServerProcess, samples: usize, dir: &Path) -> (Duration, Duration) {
    let fifo = dir.join("latency.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let body = serde_json::json!({"argv": ["cat", fifo]});
    let reply: serde_json::Value =
        serde_json::from_str(&http(server.addr, "POST", "/api/runs", &body.to_string())).unwrap();
    let id = reply["run_id"].as_str().unwrap().to_string();
    let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        stream_path(server.kind, &id)
    )
    .unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 50 {
        let t0 = Instant::now();
        writeln!(writer, "x").unwrap();
        let mut got = Vec::new();
        while got.windows(PATTERN.len()).filter(|w| *w == PATTERN).count() == 0 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended");
            got.extend_from_slice(&buf[..n]);
        }
        if i >= 50 {
            times.push(t0.elapsed()); // the first 50 warm up
        }
    }
    drop(writer);
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn row(name: &str, kind: Kind, m: &Measured) -> (String, f64) {
    let per_event_us = m.server_cpu.as_secs_f64() * 1e6 / m.events as f64;
    let line = format!(
        "| {name} | {} | {} | {:.2} s | {:.0} | {:.3} µs |",
        kind.name(),
        m.events,
        m.wall.as_secs_f64(),
        m.events as f64 / m.wall.as_secs_f64(),
        per_event_us
    );
    (line, per_event_us)
}

fn main() {
    let plan = Plan::new();
    println!(
        "SSE benchmark ({}), {} CPUs",
        if plan.quick { "QUICK mode" } else { "full" },
        thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<ServerProcess> = [start_runstream(), start_python()]
        .into_iter()
        .flatten()
        .collect();
    let cases: [(&str, u64, usize, bool); 3] = [
        ("live, 1 client", plan.live_one, 1, true),
        ("live, 100 clients", plan.live_many, plan.many_clients, true),
        (
            "replay history, 50 clients",
            plan.replay,
            plan.replay_clients,
            false,
        ),
    ];
    println!("\n| case | server | events delivered | wall | events/s | server CPU per event |\n|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (name, n, clients, live) in cases {
        let mut per_event = Vec::new();
        for server in &servers {
            let m = scenario(server, n, clients, live, dir.path());
            let (line, us) = row(name, server.kind, &m);
            println!("{line}");
            per_event.push((server.kind, us));
        }
        if let [(Kind::Runstream, rust), (Kind::Python, py)] = per_event[..] {
            ratios.push((name, rust / py));
        }
    }
    println!();
    for (name, r) in ratios {
        println!("{name}: runstream uses {r:.2}x the server CPU per event of the python baseline");
    }
    if let Some(rust) = servers.iter().find(|s| s.kind == Kind::Runstream) {
        let (median, p99) = latency(rust, plan.latency_samples, dir.path());
        println!(
            "\nwrite→receive latency (runstream, {} samples): median {:.0} µs, p99 {:.0} µs",
            plan.latency_samples,
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}
