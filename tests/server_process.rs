//! `runstream serve` as a real process over real HTTP: signals and shutdown, restarts,
//! crashes, catalogue checks at startup, the token rule, memory bounds, argv-only
//! parameters and the example catalogue.
//!
//! Every wait is bounded by `PATIENCE` (or a stated multiple of it), and every spawned
//! server is SIGKILLed when its guard drops, so a failing test fails instead of hanging
//! or leaking processes.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{fifo_echo_module, fifo_feeder, live_group_members, PATIENCE};

const LOST_RUN_MESSAGE: &str = "server stopped while the run was live";

fn runstream() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runstream"));
    cmd.env_remove("RUNSTREAM_TOKEN").env("RUST_LOG", "info");
    cmd
}

/// Writes a catalogue file into `dir`; returns its path.
pub(crate) fn write_modules(dir: &Path, catalogue: Value) -> PathBuf {
    let path = dir.join("modules.json");
    fs::write(&path, serde_json::to_vec_pretty(&catalogue).unwrap()).unwrap();
    path
}

/// Polls `done` every 20 ms until it returns `Some`, or panics with `what` after `within`.
pub(crate) fn poll<T>(within: Duration, what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// SIGKILLs what is left of a run's process group when the test ends, pass or fail (the
/// crash test orphans a group on purpose).
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 1 && !live_group_members(self.0).is_empty() {
            // SAFETY: killpg(2) on the group of a run this test started, still alive.
            unsafe { libc::killpg(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A `runstream serve` process: stdout lines arrive on a channel (read by a thread),
/// stderr goes to a temporary file (the server logs there; a pipe nobody reads could
/// fill and block it). Dropping it SIGKILLs the process if it is still running.
pub(crate) struct Proc {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl Proc {
    pub(crate) fn spawn(cwd: &Path, args: &[&str]) -> Proc {
        Proc::spawn_with(cwd, args, runstream())
    }

    /// `spawn` from a prepared command (say, with limits set before exec).
    fn spawn_with(cwd: &Path, args: &[&str], mut command: Command) -> Proc {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = command
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            stdout: rx,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stderr_text(&self) -> String {
        fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    fn signal(&mut self, signal: libc::c_int) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server already exited; stderr:\n{}",
            self.stderr_text()
        );
        send_signal(self.pid(), signal);
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "runstream serve did not exit within {within:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the `listening on http://ADDR` line; returns ADDR.
    pub(crate) fn listening(&mut self) -> SocketAddr {
        let line = match self.stdout.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "no `listening on` line ({e}); stderr:\n{}",
                    self.stderr_text()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        addr.parse()
            .unwrap_or_else(|_| panic!("not an address in {line:?}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // SIGKILL
        }
        let _ = self.child.wait();
    }
}

/// Runs `runstream serve ARGS` that is expected to refuse to start; returns the exit code
/// and stderr.
fn serve_fails(cwd: &Path, args: &[&str]) -> (i32, String) {
    let mut proc = Proc::spawn(cwd, args);
    let status = proc.wait_exit(PATIENCE);
    (status.code().unwrap_or(-1), proc.stderr_text())
}

/// A started server and an HTTP client for it.
struct Server {
    proc: Proc,
    port: u16,
    agent: ureq::Agent,
}

impl Server {
    /// `runstream serve --bind 127.0.0.1:0 --data-dir DATA EXTRA...` in `cwd`.
    fn start_in(cwd: &Path, data: &Path, extra: &[&str]) -> Server {
        Server::start_with(cwd, data, extra, runstream())
    }

    /// `start_in` from a prepared command (limits, environment, user).
    fn start_with(cwd: &Path, data: &Path, extra: &[&str], command: Command) -> Server {
        let data = data.to_str().unwrap();
        let mut args = vec!["--bind", "127.0.0.1:0", "--data-dir", data];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_with(cwd, &args, command);
        let addr = proc.listening();
        assert!(addr.ip().is_loopback(), "{addr}");
        Server {
            proc,
            port: addr.port(),
            agent: ureq::AgentBuilder::new().timeout(PATIENCE).build(),
        }
    }

    fn start(data: &Path, modules: &Path) -> Server {
        let dir = data.parent().unwrap();
        Server::start_in(dir, data, &["--modules", modules.to_str().unwrap()])
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Value {
        self.agent
            .get(&self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .unwrap()
    }

    fn get_text(&self, path: &str) -> String {
        self.agent
            .get(&self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_string()
            .unwrap()
    }

    /// POST a JSON body; returns the status code and the JSON answer, errors included.
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        match self.agent.post(&self.url(path)).send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    /// Starts module `id`; returns the run id.
    fn run_module(&self, id: &str, parameters: Value) -> String {
        let (code, run) = self.post(
            &format!("/api/modules/{id}/run"),
            json!({ "parameters": parameters }),
        );
        assert_eq!(code, 202, "{run}");
        run["run_id"].as_str().unwrap().to_string()
    }

    fn run(&self, run_id: &str) -> Value {
        self.get(&format!("/api/runs/{run_id}"))
    }

    /// Polls the run until it is finished; returns it.
    fn wait_finished(&self, run_id: &str, within: Duration) -> Value {
        poll(within, &format!("run {run_id} did not finish"), || {
            let run = self.run(run_id);
            let finished = !matches!(run["status"].as_str(), Some("queued" | "running"));
            finished.then_some(run)
        })
    }

    /// The run's pid (= its process group id), once it is running.
    fn pid_of(&self, run_id: &str) -> u32 {
        let run = self.run(run_id);
        assert_eq!(run["status"], "running", "{run}");
        run["pid"].as_u64().expect("a running run has a pid") as u32
    }

    fn logs(&self, run_id: &str) -> Vec<Value> {
        let logs = self.get(&format!("/api/runs/{run_id}/logs"));
        logs["logs"].as_array().unwrap().clone()
    }

    fn stream(&self, run_id: &str) -> Sse {
        let (code, sse) = Sse::connect(self.port, &format!("/api/runs/{run_id}/logs/stream"), &[]);
        assert_eq!(code, 200);
        sse
    }

    fn signal(&mut self, signal: libc::c_int) {
        self.proc.signal(signal);
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.proc.wait_exit(within)
    }
}

/// One server-sent event.
#[derive(Debug, Default)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }

    fn is_log(&self, message: &str) -> bool {
        self.event == "log" && self.json()["message"] == message
    }
}

/// A minimal SSE client on a raw socket: reads the chunked body incrementally.
struct Sse {
    reader: BufReader<TcpStream>,
    /// Decoded body bytes not yet split into events.
    pending: Vec<u8>,
    /// The zero-length chunk arrived.
    terminated: bool,
}

impl Sse {
    /// Sends the request and reads the head; returns the status code and the client.
    fn connect(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Sse) {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(socket);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        if code == 200 {
            assert!(
                head.iter().any(|h| h == "transfer-encoding: chunked"),
                "{head:?}"
            );
            assert!(
                head.iter()
                    .any(|h| h.starts_with("content-type: text/event-stream")),
                "{head:?}"
            );
        }
        let sse = Sse {
            reader,
            pending: Vec::new(),
            terminated: code != 200,
        };
        (code, sse)
    }

    /// Reads one chunk of the body into `pending`; sets `terminated` at the last chunk.
    fn read_chunk(&mut self) {
        let mut size_line = String::new();
        let n = self
            .reader
            .read_line(&mut size_line)
            .unwrap_or_else(|e| panic!("no SSE data within {PATIENCE:?}: {e}"));
        assert!(n > 0, "the stream ended without the chunked terminator");
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).unwrap();
        assert_eq!(&data[size..], b"\r\n", "chunk not followed by CRLF");
        if size == 0 {
            self.terminated = true;
        }
        self.pending.extend_from_slice(&data[..size]);
    }

    /// The next event with an `event:` or `data:` line, or `None` once the body ended.
    fn next_event(&mut self) -> Option<SseEvent> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let mut event = SseEvent::default();
                let mut has_event = false;
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_string();
                        has_event = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                        has_event = true;
                    }
                }
                if has_event {
                    if event.event.is_empty() {
                        event.event = "message".into();
                    }
                    return Some(event);
                }
            }
            if self.terminated {
                assert!(self.pending.is_empty(), "trailing bytes {:?}", self.pending);
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "no SSE event within {PATIENCE:?}"
            );
            self.read_chunk();
        }
    }

    /// Reads events until one matches; returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&SseEvent) -> bool) -> SseEvent {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "no {what} event in time");
            match self.next_event() {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("the stream ended before the {what} event"),
            }
        }
    }

    /// After the terminator, the server closes the connection (`Connection: close`).
    fn assert_eof(&mut self) {
        assert!(self.terminated);
        let mut rest = Vec::new();
        let n = self
            .reader
            .read_to_end(&mut rest)
            .unwrap_or_else(|e| panic!("connection not closed after the last chunk: {e}"));
        assert_eq!(n, 0, "bytes after the terminator: {rest:?}");
    }
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn shutdown_signal_completes_streams_terminates_groups_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"waiter": {"name": "Waiter", "program": "sh",
            "args": ["-c", "echo ready; sleep 100 & wait"]}}}),
    );
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &modules);
    let run_id = server.run_module("waiter", json!({}));
    let mut sse = server.stream(&run_id);
    sse.wait_for("ready log", |e| e.is_log("ready"));
    let pid = server.pid_of(&run_id);
    let _group = GroupGuard(pid);
    assert!(!live_group_members(pid).is_empty());

    server.signal(libc::SIGTERM);
    let complete = sse.wait_for("complete", |e| e.event == "complete");
    assert_eq!(complete.json()["status"], "cancelled", "{}", complete.data);
    assert!(sse.next_event().is_none(), "events after complete");
    assert!(sse.terminated);
    let status = server.wait_exit(PATIENCE);
    sse.assert_eof();
    assert_eq!(
        status.code(),
        Some(0),
        "stderr:\n{}",
        server.proc.stderr_text()
    );
    assert_eq!(live_group_members(pid), Vec::<u32>::new());
    let saved = read_json(&data.join("runs").join(format!("{run_id}.json")));
    assert_eq!(saved["status"], "cancelled", "{saved}");
}

#[test]
fn a_second_signal_kills_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"stubborn": {"name": "Stubborn", "program": "sh",
            "args": ["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
            "grace_seconds": 3600}}}),
    );
    let data = dir.path().join("data");
    // A long default grace too, so that only the second signal can end this in time.
    let mut server = Server::start_in(
        dir.path(),
        &data,
        &["--modules", modules.to_str().unwrap(), "--grace", "1h"],
    );
    let run_id = server.run_module("stubborn", json!({}));
    let mut sse = server.stream(&run_id);
    sse.wait_for("ready log", |e| e.is_log("ready"));
    let pid = server.pid_of(&run_id);
    let _group = GroupGuard(pid);

    server.signal(libc::SIGTERM);
    // The first signal was handled: the run is stopping (and ignores SIGTERM).
    sse.wait_for("cancelling status", |e| {
        e.event == "status" && e.json()["cancelling"] == true
    });
    assert!(!live_group_members(pid).is_empty());
    let second = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit(PATIENCE);
    eprintln!(
        "exited with {status} {:?} after the second signal",
        second.elapsed()
    );
    poll(PATIENCE, "the group is still alive", || {
        live_group_members(pid).is_empty().then_some(())
    });
}

#[test]
fn runs_and_logs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"three": {"name": "Three lines", "program": "printf",
            "args": ["%s\\n", "alpha", "beta", "gamma"]}}}),
    );
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &modules);
    let run_id = server.run_module("three", json!({}));
    let done = server.wait_finished(&run_id, PATIENCE);
    assert_eq!(done["status"], "completed", "{done}");
    let before = server.logs(&run_id);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    drop(server);

    let server = Server::start(&data, &modules);
    let list = server.get("/api/runs");
    assert_eq!(list["total"], 1, "{list}");
    let run = &list["runs"][0];
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["status"], "completed");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["module_id"], "three");

    let logs = server.logs(&run_id);
    assert_eq!(logs, before, "the logs changed across the restart");
    let messages: Vec<(&str, &str)> = logs
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        [
            ("stdout", "alpha"),
            ("stdout", "beta"),
            ("stdout", "gamma"),
            ("system", "exited with code 0")
        ]
    );

    // The stream replays them and completes.
    let mut sse = server.stream(&run_id);
    let mut replayed = Vec::new();
    let complete = loop {
        let e = sse.next_event().expect("the stream ended before complete");
        match e.event.as_str() {
            "log" => {
                let entry = e.json();
                assert_eq!(e.id, entry["seq"].as_u64());
                replayed.push(entry);
            }
            "complete" => break e,
            _ => {}
        }
    };
    assert_eq!(replayed, logs);
    assert_eq!(complete.json()["status"], "completed");
    assert_eq!(complete.json()["exit_code"], 0);
    assert!(sse.next_event().is_none());
    // A client that has seen everything is told not to reconnect.
    let last = logs.last().unwrap()["seq"].to_string();
    let (code, _) = Sse::connect(
        server.port,
        &format!("/api/runs/{run_id}/logs/stream"),
        &[("Last-Event-ID", &last)],
    );
    assert_eq!(code, 204);
}

#[test]
fn a_crash_marks_live_runs_failed_and_terminates_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"sleepers": {"name": "Sleepers", "program": "sh",
            "args": ["-c", "echo ready; sleep 100 & sleep 100 & wait"]}}}),
    );
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &modules);
    let run_id = server.run_module("sleepers", json!({}));
    let mut sse = server.stream(&run_id);
    sse.wait_for("ready log", |e| e.is_log("ready"));
    let pid = server.pid_of(&run_id);
    let _group = GroupGuard(pid);

    server.signal(libc::SIGKILL);
    server.wait_exit(PATIENCE);
    drop(sse);
    assert!(
        live_group_members(pid).len() >= 2,
        "the children should outlive a crashed server: {:?}",
        live_group_members(pid)
    );
    let saved = read_json(&data.join("runs").join(format!("{run_id}.json")));
    assert_eq!(saved["status"], "running", "{saved}");

    let server = Server::start(&data, &modules);
    let run = server.run(&run_id);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error_message"], LOST_RUN_MESSAGE);
    poll(PATIENCE, "the lost run's group is still alive", || {
        live_group_members(pid).is_empty().then_some(())
    });
    let saved = read_json(&data.join("runs").join(format!("{run_id}.json")));
    assert_eq!(saved["status"], "failed", "{saved}");
    // Its log is still readable, and says last what happened to it.
    let logs = server.logs(&run_id);
    assert!(logs.iter().any(|e| e["message"] == "ready"), "{logs:?}");
    let last = logs.last().unwrap();
    assert_eq!(last["stream"], "system", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with(LOST_RUN_MESSAGE),
        "{last}"
    );
    // It ended after its last output, not when the server came back: the downtime is
    // not the run's.
    let ready_at = &logs.iter().find(|e| e["message"] == "ready").unwrap()["timestamp"];
    assert_eq!(&run["completed_at"], ready_at, "{run}");
}

#[test]
fn invalid_catalogue_is_rejected_at_startup_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let serve = |catalogue: Value| {
        let path = write_modules(dir.path(), catalogue);
        serve_fails(
            dir.path(),
            &[
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--modules",
                path.to_str().unwrap(),
            ],
        )
    };

    let (code, stderr) = serve(json!({"modules": {"bad": {"name": "Bad", "program": "echo",
        "args": ["{nope}"]}}}));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("modules.bad.args[0]"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");

    let (code, stderr) = serve(json!({"modules": {"bad": {"name": "Bad", "program": "echo",
        "colour": 1}}}));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn non_loopback_bind_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, stderr) = serve_fails(dir.path(), &["--bind", "0.0.0.0:0", "--data-dir", data]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");

    let mut proc = Proc::spawn(
        dir.path(),
        &[
            "--bind",
            "0.0.0.0:0",
            "--data-dir",
            data,
            "--token",
            "secret",
        ],
    );
    let addr = proc.listening();
    assert!(addr.ip().is_unspecified(), "{addr}");
    // Only loopback traffic: the token is required there too.
    let agent = ureq::AgentBuilder::new().timeout(PATIENCE).build();
    let url = format!("http://127.0.0.1:{}/api/health", addr.port());
    match agent.get(&url).call() {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 401),
        other => panic!("expected 401 without the token, got {other:?}"),
    }
    let health: Value = agent
        .get(&url)
        .set("Authorization", "Bearer secret")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "healthy");
    drop(proc); // SIGKILL
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn memory_stays_within_the_ring_caps_for_two_million_lines() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"count": {"name": "Count", "program": "seq",
            "args": ["1", "2000000"]}}}),
    );
    let data = dir.path().join("data");
    let server = Server::start(&data, &modules);
    let started = Instant::now();
    let run_id = server.run_module("count", json!({}));
    let done = server.wait_finished(&run_id, PATIENCE * 10);
    let took = started.elapsed();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["exit_code"], 0);
    let (rss, peak) = memory_kib(server.proc.pid());
    eprintln!("2 000 000 lines in {took:?}; server VmRSS {rss} KiB, VmHWM {peak} KiB");
    assert!(rss < 100 * 1024, "VmRSS {rss} KiB");
    assert!(peak < 100 * 1024, "VmHWM (peak) {peak} KiB");

    let log = fs::File::open(data.join("runs").join(format!("{run_id}.jsonl"))).unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, log);
    let mut lines = 0u64;
    let mut last = Vec::new();
    loop {
        let buf = reader.fill_buf().unwrap();
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(nl) = buf[..buf.len() - 1].iter().rposition(|&b| b == b'\n') {
            last = buf[nl + 1..].to_vec();
        } else {
            last.extend_from_slice(buf);
        }
        let n = buf.len();
        reader.consume(n);
    }
    assert_eq!(lines, 2_000_001);
    let last: Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(last["message"], "exited with code 0");
    assert_eq!(last["seq"], 2_000_000);

    let metrics = server.get_text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "runstream_lines_dropped_total 0"),
        "{metrics}"
    );
    // The tail is still served (from the ring).
    let tail = server.get(&format!("/api/runs/{run_id}/logs?tail=2"));
    assert_eq!(tail["total_lines"], 2_000_001);
    assert_eq!(tail["logs"][0]["message"], "2000000");
}

#[test]
fn parameters_are_passed_as_one_literal_argument() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"echo": {"name": "Echo", "program": "printf",
            "args": ["%s\\n", "{text}"],
            "parameters": {"text": {"type": "string"}}}}}),
    );
    let data = dir.path().join("data");
    let server = Server::start(&data, &modules);
    let run_id = server.run_module("echo", json!({"text": "; rm -rf /"}));
    let done = server.wait_finished(&run_id, PATIENCE);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["parameters"]["text"], "; rm -rf /");
    let stdout: Vec<Value> = server
        .logs(&run_id)
        .into_iter()
        .filter(|e| e["stream"] == "stdout")
        .collect();
    assert_eq!(stdout.len(), 1, "{stdout:?}");
    assert_eq!(stdout[0]["message"], "; rm -rf /");
}

#[test]
fn example_catalogue_loads_and_train_runs() {
    let has_python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_python {
        eprintln!("note: python3 is not on PATH; skipping the example catalogue test");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(root, &data, &["--modules", "examples/modules.json"]);
    let modules = server.get("/api/modules");
    let ids: Vec<&str> = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"train"), "{ids:?}");

    let run_id = server.run_module("train", json!({"epochs": 1, "steps": 5}));
    let done = server.wait_finished(&run_id, PATIENCE);
    let logs = server.logs(&run_id);
    assert_eq!(done["status"], "completed", "{done}\n{logs:#?}");
    assert_eq!(done["exit_code"], 0);
    assert!(
        logs.iter().any(|e| e["stream"] == "stdout"
            && e["message"].as_str().unwrap().starts_with("epoch 1/1 loss")),
        "{logs:#?}"
    );
    assert!(
        logs.iter().any(|e| e["end"] == "cr"),
        "the progress bar should arrive as `cr` entries: {logs:#?}"
    );
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_the_server() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = runstream();
    // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 40,
                rlim_max: 40,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut proc = Proc::spawn_with(
        dir.path(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        command,
    );
    let addr = proc.listening();
    // Each connection takes two descriptors: far more connections than fit.
    let flood: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
    poll(PATIENCE, "the server to run out of descriptors", || {
        proc.stderr_text()
            .contains("Too many open files")
            .then_some(())
    });
    drop(flood);
    let health = poll(PATIENCE, "the server to answer again", || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    });
    assert!(health.contains("\"healthy\""), "{health}");
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(PATIENCE).success());
}

/// Issue 14: changing the catalogue must not stop running jobs. A live run streams on
/// across a good reload (SIGHUP) and two bad ones (POST, SIGHUP); a queued run keeps the
/// spec it was submitted with; later runs get the new catalogue.
#[test]
fn a_live_run_keeps_streaming_across_catalogue_reloads_one_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    let mut feeder = fifo_feeder(&feed);
    let echoer = fifo_echo_module(&feed);
    let version = |v: &str| json!({"name": "Version", "program": "echo", "args": [v]});
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"echoer": echoer, "version": version("v1")}}),
    );
    let data = dir.path().join("data");
    let mut server = Server::start_in(
        dir.path(),
        &data,
        &[
            "--modules",
            modules.to_str().unwrap(),
            "--max-concurrent",
            "1",
        ],
    );
    let live = server.run_module("echoer", json!({}));
    let mut sse = server.stream(&live);
    let mut say = |sse: &mut Sse, word: &str| {
        writeln!(feeder, "{word}").unwrap();
        sse.wait_for(word, |e| e.is_log(&format!("got {word}")));
    };
    say(&mut sse, "one");
    let queued = server.run_module("version", json!({}));
    assert_eq!(server.run(&queued)["status"], "queued");
    let reloads = |server: &Server| server.get("/api/health")["catalogue"]["reloads"].clone();

    // 1. A good file, by SIGHUP: echoer removed, version changed, fresh added.
    write_modules(
        dir.path(),
        json!({"modules": {"version": version("v2"),
            "fresh": {"name": "Fresh", "program": "echo", "args": ["fresh"]}}}),
    );
    server.signal(libc::SIGHUP);
    poll(PATIENCE, "SIGHUP reloaded the catalogue", || {
        (reloads(&server) == 1).then_some(())
    });
    let health = server.get("/api/health");
    assert!(health["catalogue"]["reload_error"].is_null(), "{health}");
    assert_eq!(health["total_modules"], 2, "{health}");
    say(&mut sse, "two");
    let (code, body) = server.post("/api/modules/echoer/run", json!({}));
    assert_eq!(
        (code, &body["error_code"]),
        (404, &json!("MODULE_NOT_FOUND"))
    );

    // 2. A bad file, by POST: 422 naming the field, the old catalogue stays.
    write_modules(
        dir.path(),
        json!({"modules": {"version": {"name": "V", "program": "echo", "args": ["{nope}"]}}}),
    );
    let (code, body) = server.post("/api/modules/reload", json!({}));
    assert_eq!(code, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("modules.version.args[0]"), "{detail}");
    assert!(detail.contains("old catalogue stays"), "{detail}");
    let health = server.get("/api/health");
    assert!(
        health["catalogue"]["reload_error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("modules.version.args[0]")),
        "{health}"
    );
    let ids: Vec<Value> = server.get("/api/modules")["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!("fresh"), json!("version")]);
    say(&mut sse, "three");

    // 3. Not JSON at all, by SIGHUP: logged, and the server lives on.
    fs::write(&modules, "{ not json").unwrap();
    server.signal(libc::SIGHUP);
    poll(PATIENCE, "the second SIGHUP was handled", || {
        (reloads(&server) == 3).then_some(())
    });
    say(&mut sse, "four");
    assert!(server
        .proc
        .stderr_text()
        .contains("modules file not reloaded"));

    // Later runs get the catalogue of the last good reload.
    let later = server.run_module("version", json!({}));
    let fresh = server.run_module("fresh", json!({}));
    drop(feeder);
    let complete = sse.wait_for("complete", |e| e.event == "complete");
    assert_eq!(complete.json()["status"], "completed", "{}", complete.data);
    let messages = |run_id: &str| -> Vec<Value> {
        assert_eq!(
            server.wait_finished(run_id, PATIENCE)["status"],
            "completed"
        );
        server
            .logs(run_id)
            .iter()
            .map(|e| e["message"].clone())
            .collect()
    };
    assert!(messages(&queued).contains(&json!("v1")), "queued kept v1");
    assert!(messages(&later).contains(&json!("v2")));
    assert!(messages(&fresh).contains(&json!("fresh")));
    let got: Vec<Value> = messages(&live)
        .into_iter()
        .filter(|m| m.as_str().is_some_and(|m| m.starts_with("got ")))
        .collect();
    assert_eq!(got, ["got one", "got two", "got three", "got four"]);
}

/// Starts a raw command on `server` (started with `--allow-commands`), waits for its end,
/// and returns its stdout lines. `headers` go with every request.
fn command_output(server: &Server, argv: &[&str], headers: &[(&str, &str)]) -> Vec<String> {
    let call = |req: ureq::Request| headers.iter().fold(req, |r, (k, v)| r.set(k, v));
    let run: Value = call(server.agent.post(&server.url("/api/runs")))
        .send_json(json!({ "argv": argv }))
        .unwrap_or_else(|e| panic!("POST /api/runs: {e}"))
        .into_json()
        .unwrap();
    let id = run["run_id"].as_str().unwrap().to_string();
    let path = format!("/api/runs/{id}");
    poll(PATIENCE, "the command to finish", || {
        let run: Value = call(server.agent.get(&server.url(&path)))
            .call()
            .ok()?
            .into_json()
            .ok()?;
        (run["status"] == "completed").then_some(())
    });
    let logs: Value = call(server.agent.get(&server.url(&format!("{path}/logs"))))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// Issue 16.2: `serve` raises its soft open-file limit to the hard one, and every run's
/// child inherited it (programs that use `select()` break above 1024). Children now get
/// the soft limit the server started with, as Go's os/exec gives them.
#[test]
fn runs_get_the_open_file_limit_the_server_started_with() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command = runstream();
    // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::start_with(
        dir.path(),
        &dir.path().join("data"),
        &["--allow-commands"],
        command,
    );
    let limits = fs::read_to_string(format!("/proc/{}/limits", server.proc.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        files.contains("4096 ") && !files.contains("512"),
        "the server raised its own: {files}"
    );
    let out = command_output(&server, &["sh", "-c", "ulimit -Sn; ulimit -Hn"], &[]);
    assert_eq!(out, ["512", "4096"]);
}

/// Issue 16.3: `RUNSTREAM_TOKEN` stayed in the server's environment, so every run could
/// `echo $RUNSTREAM_TOKEN` (or read the server's `/proc/PID/environ`). It is now taken
/// out of both.
#[test]
fn runs_cannot_read_the_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = runstream();
    command.env("RUNSTREAM_TOKEN", "s3cret-token");
    let server = Server::start_with(
        dir.path(),
        &dir.path().join("data"),
        &["--allow-commands"],
        command,
    );
    let auth = [("Authorization", "Bearer s3cret-token")];
    let script = "echo \"[$RUNSTREAM_TOKEN]\"; tr '\\0' '\\n' < /proc/$PPID/environ | grep -c s3cret || true";
    let out = command_output(&server, &["sh", "-c", script], &auth);
    assert_eq!(out, ["[]", "0"]);
    // And the token still guards the API.
    match server.agent.get(&server.url("/api/runs")).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
}

/// Issue 16.3: a token in the arguments is visible to every local user; `--token-file`
/// keeps it out of them, `--help` says so, and an empty or missing file is refused.
#[test]
fn the_token_can_come_from_a_file_and_help_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    fs::write(&file, "from-a-file\n").unwrap();
    let server = Server::start_in(
        dir.path(),
        &dir.path().join("data"),
        &["--token-file", file.to_str().unwrap()],
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", server.proc.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("from-a-file"));
    match server.agent.get(&server.url("/api/health")).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    let health = server
        .agent
        .get(&server.url("/api/health"))
        .set("Authorization", "Bearer from-a-file")
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
    fs::write(&file, "\n").unwrap();
    let (code, err) = serve_fails(dir.path(), &["--token-file", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--token-file"), "{err}");
    let (code, err) = serve_fails(dir.path(), &["--token-file", "/no/such/file"]);
    assert_eq!(code, 2, "{err}");
    let help = runstream().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--token-file"), "{help}");
    assert!(help.contains("Every local user can read it"), "{help}");
}

/// Issue 16.3: the data dir was 0755 and its files 0644 while they hold runs' output and
/// parameters (environment values of raw commands among them). Now 0700 and 0600.
#[test]
fn the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(dir.path(), &data, &["--allow-commands"]);
    command_output(&server, &["echo", "hi"], &[]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("runs")), 0o700);
    let files: Vec<PathBuf> = fs::read_dir(data.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}"); // {run_id}.json and .jsonl
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // A data dir made before, open to others, keeps its mode, and the log says so.
    let shared = dir.path().join("shared");
    fs::create_dir_all(shared.join("runs")).unwrap();
    fs::set_permissions(shared.join("runs"), fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start_in(dir.path(), &shared, &[]);
    assert_eq!(mode(&shared.join("runs")), 0o755);
    assert!(
        server
            .proc
            .stderr_text()
            .contains("open to other users (mode 755)"),
        "{}",
        server.proc.stderr_text()
    );
}

/// Whether `runstream serve` can be run as another, unprivileged uid with its process
/// limit set from outside: root (to switch uid), util-linux's `prlimit`, and a binary that
/// other users may reach and execute.
fn can_run_unprivileged() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root, so the server cannot run as another uid".into());
    }
    if Command::new("prlimit").arg("--version").output().is_err() {
        return Err("no prlimit (util-linux)".into());
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_runstream"));
    for dir in binary.ancestors().skip(1) {
        let mode = fs::metadata(dir).map_or(0, |m| m.permissions().mode());
        if mode & 0o001 == 0 {
            return Err(format!("other users cannot enter {}", dir.display()));
        }
    }
    Ok(())
}

/// Threads (tasks) of every process whose real uid is `uid`: what `RLIMIT_NPROC` counts.
fn tasks_of_uid(uid: u32) -> u64 {
    let mut tasks = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            tasks += field("Threads:").unwrap_or(0);
        }
    }
    tasks
}

/// Children of process `parent`, zombies included, as (pid, state).
fn children_of(parent: u32) -> Vec<(u32, char)> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        if fields[1] == parent.to_string() {
            children.push((pid, fields[0].chars().next().unwrap()));
        }
    }
    children
}

/// Sets the soft `RLIMIT_NPROC` of process `pid`, whose uid is `uid`, with util-linux's
/// `prlimit`, run as that uid: changing another process's limits needs the same uid or
/// `CAP_SYS_RESOURCE`, which root in a container may lack (the soft limit moves freely
/// below the hard one).
fn set_nproc_soft_limit(pid: u32, uid: u32, limit: u64) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nproc={limit}:")])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 16.4: with the user's task limit nearly full, a run whose reader or waiter
/// thread could not be created ended `failed: "failed"`, its only entry "exited; its
/// status could not be read", its child left a zombie (or running, unwatched); a request
/// whose thread could not be made got a 500 with an empty body.
///
/// A real limit, made deterministic: the server runs as an unprivileged uid (root ignores
/// `RLIMIT_NPROC`), and before each POST its limit is set to the tasks that uid has now
/// plus `k`, for k = 0..8. One POST needs a request thread, the run's thread, the child,
/// two reader threads and a waiter thread, so as k grows each of them in turn is the one
/// that fails (the request thread may exit before the child is made: the steps move by
/// one, and k = 3 and 4 still meet the readers and the waiter). Every answer must be a
/// 202 or a documented JSON error, every run must end with its real reason, and no child
/// may be left, zombie or alive.
#[test]
fn a_run_that_cannot_get_its_threads_fails_with_the_reason_and_leaves_no_child() {
    use std::os::unix::fs::chown;
    use std::os::unix::process::CommandExt;
    if let Err(why) = can_run_unprivileged() {
        eprintln!("SKIPPED a_run_that_cannot_get_its_threads…: {why}");
        return;
    }
    // A uid no one uses, different for concurrent runs of this test on one machine.
    let uid = 200_000 + std::process::id() % 100_000;
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), Some(uid), Some(uid)).unwrap();
    let mut command = runstream();
    command.uid(uid).gid(uid);
    let mut server = Server::start_with(
        dir.path(),
        &dir.path().join("data"),
        &["--allow-commands"],
        command,
    );
    let pid = server.proc.pid();
    let hard = max_processes(pid);
    // Warm up: the connection pool's threads exist, the first run has come and gone.
    assert_eq!(command_output(&server, &["echo", "warm"], &[]), ["warm"]);
    let baseline = tasks_of_uid(uid);
    let mut outcomes = Vec::new();
    let mut after_the_child = 0;
    for k in 0..=8 {
        // The threads of the previous POST are gone: the count below is exact.
        poll(PATIENCE, "the previous run's threads to exit", || {
            (tasks_of_uid(uid) <= baseline).then_some(())
        });
        // Every thread counts; a thread that exits between the count and the POST leaves
        // a step more, which the range of k absorbs.
        set_nproc_soft_limit(pid, uid, tasks_of_uid(uid) + k);
        let answer = server
            .agent
            .post(&server.url("/api/runs"))
            .send_json(json!({"argv": ["sleep", "60"]}));
        set_nproc_soft_limit(pid, uid, hard);
        let (code, body): (u16, Value) = match answer {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap();
                let body = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("k={k}: {code} without a JSON body: {text:?}"));
                (code, body)
            }
            Err(e) => panic!("k={k}: no answer: {e}"),
        };
        if code != 202 {
            assert_eq!(code, 503, "k={k}: {body}");
            assert_eq!(
                body["error_code"], "RESOURCE_LIMIT_EXCEEDED",
                "k={k}: {body}"
            );
            let detail = body["detail"].as_str().unwrap();
            assert!(detail.contains("cannot create a thread"), "k={k}: {detail}");
            outcomes.push(format!("k={k}: 503 {detail}"));
            continue;
        }
        let id = body["run_id"].as_str().unwrap().to_string();
        let run = poll(PATIENCE, "the run to start or fail", || {
            let run = server.run(&id);
            (run["status"] != "queued").then_some(run)
        });
        if run["status"] == "running" {
            outcomes.push(format!("k={k}: running"));
            let (code, _) = server.post(&format!("/api/runs/{id}/cancel"), json!(null));
            assert_eq!(code, 200);
            server.wait_finished(&id, PATIENCE);
        } else {
            assert_eq!(run["status"], "failed", "k={k}: {run}");
            assert_eq!(run["spawn_error"], "resources", "k={k}: {run}");
            let message = run["error_message"].as_str().unwrap();
            assert!(
                message.contains("Resource temporarily unavailable"),
                "k={k}: {message}"
            );
            if let Some(child) = run["pid"].as_u64() {
                // The child existed: a thread that watches it could not be made.
                assert!(
                    message.contains("cannot create a thread"),
                    "k={k}: {message}"
                );
                assert!(
                    !Path::new(&format!("/proc/{child}")).exists(),
                    "k={k}: process {child} was left behind"
                );
                after_the_child += 1;
            }
            outcomes.push(format!("k={k}: failed: {message}"));
        }
        assert_eq!(children_of(pid), [], "k={k}: children left: {outcomes:?}");
    }
    assert!(
        after_the_child > 0,
        "no failure after the child existed: {outcomes:#?}"
    );
    eprintln!("{outcomes:#?}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
}

/// Found while looking for the connection closed with no response (issue 16): a request
/// claiming a huge `Content-Length` and answered without its body being read (413) made
/// tiny_http allocate the whole unread rest to skip it, and the allocation failure aborted
/// the server. One request could kill it.
#[test]
fn a_huge_content_length_is_refused_and_the_server_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &dir.path().join("data"), &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(
            b"POST /api/modules/m/run HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100000000000000\r\n\r\n{}",
        )
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // The abort came right after the answer, on the thread that sent it: a second later
    // the server must still answer (it skips the body while this connection lives).
    for _ in 0..20 {
        let health = server.get("/api/health");
        assert_eq!(health["status"], "healthy", "{health}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stream);
}

/// Issue 16.4, the connection side: with every connection thread busy (here, six idle
/// keep-alive connections each hold one) and no thread to be made, tiny_http dropped the
/// new connection: closed with no answer. It now waits for the next thread that frees up.
/// (Real `RLIMIT_NPROC`, set to the server's task count, as in the test above.)
#[test]
fn a_connection_that_gets_no_thread_waits_for_one_instead_of_being_dropped() {
    use std::os::unix::fs::chown;
    use std::os::unix::process::CommandExt;
    if let Err(why) = can_run_unprivileged() {
        eprintln!("SKIPPED a_connection_that_gets_no_thread…: {why}");
        return;
    }
    let uid = 300_000 + std::process::id() % 100_000;
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), Some(uid), Some(uid)).unwrap();
    let mut command = runstream();
    command.uid(uid).gid(uid);
    let mut server = Server::start_with(dir.path(), &dir.path().join("data"), &[], command);
    let pid = server.proc.pid();
    let health = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let answer = |stream: &mut TcpStream| {
        let mut buf = [0u8; 4096];
        let mut text = Vec::new();
        while !text.ends_with(b"}") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    };
    let mut idle: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            stream.write_all(health).unwrap();
            assert!(answer(&mut stream).starts_with("HTTP/1.1 200"));
            stream // kept open: its connection thread waits for the next request
        })
        .collect();
    poll(PATIENCE, "the request threads to exit", || {
        let busy = fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .any(|t| {
                fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("runstream-req"))
            });
        (!busy).then_some(())
    });
    set_nproc_soft_limit(pid, uid, tasks_of_uid(uid));
    let mut waiting = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    waiting.set_read_timeout(Some(PATIENCE)).unwrap();
    waiting.write_all(health).unwrap();
    poll(PATIENCE, "the server to fail to make a thread", || {
        server
            .proc
            .stderr_text()
            .contains("Cannot start a thread for a new client")
            .then_some(())
    });
    set_nproc_soft_limit(pid, uid, max_processes(pid));
    drop(idle.pop()); // its thread is free for the waiting connection
    let text = answer(&mut waiting);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    drop(idle);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
}

/// The hard `RLIMIT_NPROC` of process `pid`.
fn max_processes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1 << 20)
}
