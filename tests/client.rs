//! The client verbs (`ps`, `start`, `logs`, `cancel`, `modules`) against a real
//! `runstream serve`: output, exit statuses, and `logs -f` across a server restart.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::{json, Value};

use crate::util::PATIENCE;

fn runstream() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runstream"));
    cmd.env_remove("RUNSTREAM_TOKEN")
        .env_remove("RUNSTREAM_URL");
    cmd
}

/// A `runstream serve` process, SIGKILLed when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(data: &Path, bind: &str, extra: &[&str]) -> Serve {
        let modules = data.join("modules.json");
        if !modules.exists() {
            std::fs::create_dir_all(data).unwrap();
            std::fs::write(&modules, catalogue().to_string()).unwrap();
        }
        let mut child = runstream()
            .args(["serve", "--bind", bind, "--data-dir"])
            .arg(data)
            .arg("--modules")
            .arg(&modules)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = crate::util::listening_addr(child.stdout.take().unwrap());
        Serve { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.url()))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn catalogue() -> Value {
    json!({"modules": {
        "greet": {"name": "Greet", "program": "sh",
            "args": ["-c", "echo hello {name}; echo to stderr >&2; exit {code}"],
            "parameters": {"name": {"type": "string", "default": "world"},
                           "code": {"type": "integer", "default": 0, "min": 0, "max": 255}}},
        "sleeper": {"name": "Sleeper", "program": "sh", "args": ["-c", "echo ready; sleep 100"]},
        "counter": {"name": "Counter", "program": "sh",
            "args": ["-c", "i=0; while [ $i -lt 100000 ]; do echo line $i; i=$((i+1)); sleep 0.005; done"]}
    }})
}

/// Runs a client verb; returns (exit status, stdout, stderr).
fn client(url: &str, args: &[&str]) -> (i32, String, String) {
    client_with_token(url, None, args)
}

fn client_with_token(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = runstream();
    command
        .args(args)
        .env("RUNSTREAM_URL", url)
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("RUNSTREAM_TOKEN", token);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failure: the exit status and one line on stderr containing `words`.
fn assert_fails(result: (i32, String, String), code: i32, words: &str) {
    let (got, _, err) = result;
    assert_eq!(got, code, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("runstream: ") && err.contains(words),
        "{err}"
    );
}

#[test]
fn start_follow_prints_the_output_and_exits_with_the_run_status() {
    let data = tempfile::tempdir().unwrap();
    let server = Serve::start(data.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let (code, out, err) = client(
        &url,
        &[
            "start", "greet", "--param", "name=you", "-p", "code=3", "--follow",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "hello you\n");
    assert!(err.contains("runstream: started run_"), "{err}");
    assert!(err.contains("to stderr\n"), "{err}");

    // Without --follow: the run id alone, and the run is listed.
    let (code, out, _) = client(&url, &["start", "greet"]);
    assert_eq!(code, 0);
    let id = out.trim().to_string();
    assert!(id.starts_with("run_") && id.contains("_greet_"), "{id}");
    // `logs -f` of a run that is over prints everything once, then ends.
    let (code, out, _) = client(&url, &["logs", "-f", &id]);
    assert_eq!((code, out.as_str()), (0, "hello world\n"));
    let (_, out, _) = client(&url, &["ps", "--all"]);
    let header = out.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "RUN", "ID", "MODULE", "STATUS", "STARTED", "DURATION", "EXIT", "PROGRESS", "GPU",
            "MEM"
        ]
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("completed")),
        "{out}"
    );
    let (_, out, _) = client(&url, &["ps", "--all", "--json"]);
    let runs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run_id"], id.as_str(), "newest first");

    let (code, out, _) = client(&url, &["modules"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("greet") && l.contains("code=0 name=world")),
        "{out}"
    );
}

#[test]
fn logs_take_tail_timestamps_and_json() {
    let data = tempfile::tempdir().unwrap();
    let server = Serve::start(data.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let (code, _, _) = client(&url, &["start", "greet", "--follow"]);
    assert_eq!(code, 0);
    let id = server.get("/api/runs?status=completed")["runs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, out, err) = client(&url, &["logs", &id]);
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("hello world\n", "to stderr\n")
    );
    let (_, out, err) = client(&url, &["logs", "--tail", "1", &id]);
    // The last entry is the engine's "exited with code 0" (not printed: not a warning).
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
    let (_, out, _) = client(&url, &["logs", "--tail", "3", "--timestamps", &id]);
    assert!(
        out.starts_with("20") && out.ends_with("Z hello world\n"),
        "{out}"
    );
    let (_, out, _) = client(&url, &["logs", "--json", &id]);
    let entries: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries
        .iter()
        .any(|e| e["message"] == "hello world" && e["stream"] == "stdout"));
    assert_eq!(entries.last().unwrap()["stream"], "system");
    let (_, out, _) = client(&url, &["logs", "--since", "1h", &id]);
    assert_eq!(out, "hello world\n");
    let (_, out, _) = client(&url, &["logs", "--since", "2999-01-01T00:00:00Z", &id]);
    assert_eq!(out, "");
}

#[test]
fn failures_are_one_line_with_distinct_exit_statuses() {
    let data = tempfile::tempdir().unwrap();
    let server = Serve::start(data.path(), "127.0.0.1:0", &["--token", "secret"]);
    let url = server.url();
    let with_token = |args: &[&str]| client_with_token(&url, Some("secret"), args);
    assert_eq!(with_token(&["ps"]).0, 0);
    assert_fails(client(&url, &["ps"]), 77, "refused the token (401)");
    assert_fails(
        client(&url, &["ps", "--token", "wrong"]),
        77,
        "refused the token",
    );
    assert_fails(with_token(&["logs", "run_nope"]), 66, "run_nope");
    assert_fails(with_token(&["cancel", "run_nope"]), 66, "run_nope");
    assert_fails(with_token(&["start", "nope"]), 66, "nope");
    assert_fails(
        with_token(&["start", "greet", "-p", "code=x"]),
        65,
        "parameter code",
    );
    assert_fails(
        with_token(&["start", "greet", "-p", "code=999"]),
        65,
        "code",
    );
    assert_fails(
        with_token(&["start", "greet", "-p", "colour=red"]),
        65,
        "colour",
    );

    // Nothing listens on a port just freed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    assert_fails(client(&nowhere, &["ps"]), 69, "cannot reach");
    assert_fails(client("https://example.com", &["ps"]), 65, "http://");
    // A bad command line is clap's: exit 2.
    assert_eq!(client(&url, &["start", "greet", "-p", "novalue"]).0, 2);
}

#[test]
fn cancel_stops_a_running_run() {
    let data = tempfile::tempdir().unwrap();
    let server = Serve::start(data.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let (_, out, _) = client(&url, &["start", "sleeper"]);
    let id = out.trim().to_string();
    // Wait for its first line through `logs -f` (it ends only with the run).
    let mut follow = runstream()
        .args(["logs", "-f", &id])
        .env("RUNSTREAM_URL", &url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let (_, out, _) = client(&url, &["ps"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("running")),
        "{out}"
    );
    let (code, out, err) = client(&url, &["cancel", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{id} ")), "{out}");
    assert!(follow.wait().unwrap().success());
    let run = server.get(&format!("/api/runs/{id}"));
    assert_eq!(run["status"], "cancelled");
    // Cancelling it again: the server refuses (already finished).
    assert_fails(client(&url, &["cancel", &id]), 65, "");
}

#[test]
fn logs_follow_resumes_across_a_server_restart_without_repeating_a_line() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Serve::start(data.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let bind = server.addr.to_string();
    let (_, out, _) = client(&url, &["start", "counter"]);
    let id = out.trim().to_string();
    let mut follow = runstream()
        .args(["logs", "-f", &id])
        .env("RUNSTREAM_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
        }
        String::from_utf8(all).unwrap()
    });
    // Some lines arrived: the server dies in the middle of the stream.
    loop {
        let seen = rx.recv_timeout(PATIENCE).expect("lines from logs -f");
        if seen.contains("line 20\n") {
            break;
        }
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = Serve::start(data.path(), &bind, &[]);
    // The run was live when the server died: it is failed now, and the client, resumed
    // after the last line it printed, ends with the run.
    let status = follow.wait().unwrap();
    let printed = reader.join().unwrap();
    let mut stderr = String::new();
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?} {stderr}");
    let logged = server.get(&format!(
        "/api/runs/{id}/logs?since=1970-01-01T00:00:00Z&tail=100000"
    ));
    let expected: String = logged["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| format!("{}\n", e["message"].as_str().unwrap()))
        .collect();
    assert!(printed.contains("line 20\n"), "{printed}");
    assert_eq!(printed, expected, "every line once, in order");
    let run = server.get(&format!("/api/runs/{id}"));
    assert_eq!(run["status"], "failed", "{run}");
}
