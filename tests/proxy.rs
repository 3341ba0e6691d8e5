//! `runstream serve --token …` behind a real nginx configured with `deploy/nginx.conf`
//! (issue 14). Runs only when `RUNSTREAM_NGINX` names an nginx binary:
//! `scripts/nginx-test.sh` installs Debian's nginx and sets it; elsewhere the test says
//! SKIPPED and passes.
//!
//! Through the proxy it checks that the token is required, that a line reaches an SSE
//! client promptly, that `Last-Event-ID` resumes, that a large log downloads whole, and
//! that a client leaving at the proxy frees its stream on the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server_process::{poll, write_modules, Proc};
use crate::sse_client::SseClient;
use crate::util::{fifo_echo_module, fifo_feeder, PATIENCE};

const TOKEN: &str = "proxy-test-token";
/// The upstream as deploy/nginx.conf names it; the test points it at its own server.
const UPSTREAM_IN_FILE: &str = "proxy_pass http://127.0.0.1:8787;";
/// What browsers accept, so that a proxy that would compress responses does.
const BROWSER_ENCODINGS: &str = "Accept-Encoding: gzip, deflate, br";
/// Lines of the large log (about 24 MiB as downloaded text: more than the in-memory ring
/// keeps, so the download reads the log file, and far more than nginx's buffers).
const BIG_LINES: u32 = 300_000;

/// An nginx in the foreground (`master_process off`: one process, so killing it leaves
/// nothing behind) with its files in a temporary directory.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(binary: &str, dir: &Path, upstream: SocketAddr) -> Nginx {
        let snippet = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .unwrap();
        assert_eq!(
            snippet.matches(UPSTREAM_IN_FILE).count(),
            1,
            "deploy/nginx.conf should have `{UPSTREAM_IN_FILE}` once"
        );
        let snippet = snippet.replace(UPSTREAM_IN_FILE, &format!("proxy_pass http://{upstream};"));
        std::fs::write(dir.join("runstream.conf"), snippet).unwrap();
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join("temp").join(temp)).unwrap();
        }
        // A free port now; if another process takes it first, nginx says so and the test
        // fails with its error log.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log {d}/access.log;\n\
             \x20 client_body_temp_path {d}/temp/body;\n  proxy_temp_path {d}/temp/proxy;\n\
             \x20 fastcgi_temp_path {d}/temp/fastcgi;\n  uwsgi_temp_path {d}/temp/uwsgi;\n\
             \x20 scgi_temp_path {d}/temp/scgi;\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    server_name runstream.test;\n\
             \x20   include {d}/runstream.conf;\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let mut nginx = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir: dir.to_path_buf(),
        };
        poll(PATIENCE, "nginx did not start listening", || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            TcpStream::connect(nginx.addr).ok()
        });
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP through the proxy (or straight to the server), with or without the token.
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            base: format!("http://{addr}"),
            agent: ureq::AgentBuilder::new().timeout(PATIENCE * 4).build(),
        }
    }

    /// Status and body text; `auth` adds `Authorization: Bearer TOKEN`.
    fn call(&self, method: &str, path: &str, auth: bool, body: Option<Value>) -> (u16, String) {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if auth {
            req = req.set("Authorization", &format!("Bearer {TOKEN}"));
        }
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let mut text = String::new();
        resp.into_reader().read_to_string(&mut text).unwrap();
        (status, text)
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, path, true, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    fn run_module(&self, id: &str) -> String {
        let run = self.json(
            "POST",
            &format!("/api/modules/{id}/run"),
            Some(json!({"parameters": {}})),
        );
        run["run_id"].as_str().unwrap().to_string()
    }

    /// `runstream_sse_clients` from `/metrics`.
    fn sse_clients(&self) -> u64 {
        let (status, text) = self.call("GET", "/metrics", true, None);
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("runstream_sse_clients "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no runstream_sse_clients in /metrics:\n{text}"))
    }
}

#[test]
fn nginx_in_front_streams_promptly_resumes_needs_the_token_and_frees_streams() {
    let Some(binary) = std::env::var("RUNSTREAM_NGINX")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        eprintln!(
            "SKIPPED nginx proxy: RUNSTREAM_NGINX is not set (scripts/nginx-test.sh sets it)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    let mut feeder = fifo_feeder(&feed);
    let big =
        format!("seq -f 'line %06g of a large log, long enough to weigh something' 1 {BIG_LINES}");
    let modules = write_modules(
        dir.path(),
        json!({"modules": {
            "echoer": fifo_echo_module(&feed),
            "big": {"name": "Big", "program": "sh", "args": ["-c", big]},
        }}),
    );
    let data = dir.path().join("data");
    let mut server = Proc::spawn(
        dir.path(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--data-dir",
            data.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
            // A client that left is noticed at the next write; keep-alives make one soon.
            "--keep-alive",
            "200ms",
        ],
    );
    let upstream = server.listening();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx = Nginx::start(&binary, &nginx_dir, upstream);
    let proxy = Client::new(nginx.addr);
    let stream_path = |run_id: &str| format!("/api/runs/{run_id}/logs/stream?token={TOKEN}");

    // The token is required through the proxy; the page is public.
    let (status, text) = proxy.call("GET", "/api/health", false, None);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("UNAUTHORIZED"), "{text}");
    assert_eq!(proxy.call("GET", "/api/health", true, None).0, 200);
    assert_eq!(proxy.call("GET", "/", false, None).0, 200);
    let run_id = proxy.run_module("echoer");
    let unauthorised =
        SseClient::connect(nginx.addr, &format!("/api/runs/{run_id}/logs/stream"), &[]);
    assert_eq!(unauthorised.status, 401);
    drop(unauthorised);

    // A line reaches an SSE client through the proxy at once: 20 lines, each written
    // when the previous one arrived, timed from the write to the event.
    // As a browser asks: the stream must come back uncompressed (plain SSE), as the
    // configuration says, whatever the client accepts.
    let mut sse = SseClient::connect(nginx.addr, &stream_path(&run_id), &[BROWSER_ENCODINGS]);
    assert_eq!(sse.status, 200);
    assert!(
        sse.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        sse.headers
    );
    assert_eq!(sse.header("content-encoding"), None, "{:?}", sse.headers);
    let mut latencies = Vec::new();
    let mut seqs = Vec::new();
    for i in 0..20 {
        let written = Instant::now();
        writeln!(feeder, "n{i}").unwrap();
        let want = format!("got n{i}");
        let events = sse.until(|e| e.event == "log" && e.json()["message"] == want.as_str());
        latencies.push(written.elapsed());
        seqs.push(events.last().unwrap().id.unwrap());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "nginx proxy: write-to-SSE-event latency over 20 lines: min {:?}, median {median:?}, max {:?}",
        latencies[0],
        latencies[latencies.len() - 1]
    );
    // The median, not every line: one line delayed by a loaded machine is not a proxy
    // that buffers (that would hold every line for seconds, or until 4-8 KiB piled up).
    assert!(
        median < Duration::from_millis(100),
        "lines are held back on the way: median {median:?}"
    );

    // Resume with Last-Event-ID: the next entry after it, nothing before.
    let after = seqs[4];
    let mut resumed = SseClient::connect(
        nginx.addr,
        &stream_path(&run_id),
        &[&format!("Last-Event-ID: {after}"), BROWSER_ENCODINGS],
    );
    assert_eq!(resumed.status, 200);
    let first = resumed.until(|e| e.event == "log").pop().unwrap();
    assert_eq!(first.id, Some(after + 1), "{first:?}");
    assert_eq!(first.json()["message"], "got n5");

    // A client that leaves at the proxy frees its stream on the server.
    poll(PATIENCE, "two streams open", || {
        (proxy.sse_clients() == 2).then_some(())
    });
    drop(resumed);
    poll(
        PATIENCE,
        "the stream of the client that left is freed",
        || (proxy.sse_clients() == 1).then_some(()),
    );
    drop(sse);
    poll(PATIENCE, "every stream is freed", || {
        (proxy.sse_clients() == 0).then_some(())
    });
    drop(feeder);

    // A large log downloads whole through the proxy: the same bytes as straight from
    // the server.
    let big_id = proxy.run_module("big");
    poll(PATIENCE * 4, "the big run finished", || {
        let run = proxy.json("GET", &format!("/api/runs/{big_id}"), None);
        (run["status"] != "queued" && run["status"] != "running").then_some(run)
    });
    let path = format!("/api/runs/{big_id}/logs/download");
    let started = Instant::now();
    let (status, through_proxy) = proxy.call("GET", &path, true, None);
    let took = started.elapsed();
    assert_eq!(status, 200);
    let (_, direct) = Client::new(upstream).call("GET", &path, true, None);
    eprintln!(
        "nginx proxy: downloaded {} bytes ({} lines) in {took:?}",
        through_proxy.len(),
        through_proxy.lines().count()
    );
    assert!(through_proxy.len() > 16 << 20, "{}", through_proxy.len());
    assert!(
        through_proxy == direct,
        "the download differs through the proxy"
    );
    let last_line = format!("line {BIG_LINES:06} of a large log");
    assert!(through_proxy.contains(&last_line));
    drop(nginx);
    drop(server);
}
