//! The HTTP API and SSE streams of an in-process server on 127.0.0.1:0, spoken to over
//! real HTTP.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use runstream::server::{Catalogue, Server, ServerConfig};
use runstream::{Engine, EngineConfig};
use serde_json::{json, Value};

use crate::sse_client::SseClient;
use crate::util::PATIENCE;

struct TestServer {
    server: Server,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.shutdown(Duration::from_secs(5));
    }
}

fn catalogue(dir: &std::path::Path) -> Catalogue {
    let gate = dir.join("gate");
    serde_json::from_value(json!({"modules": {
        "lines": {"name": "Lines", "program": "seq", "args": ["1", "{count}"],
                  "parameters": {"count": {"type": "integer", "default": 3, "min": 1, "max": 10000000}}},
        "wait": {"name": "Wait", "program": "sh", "args": ["-c", "echo first; exec sleep 100"], "grace_seconds": 5},
        "echo": {"name": "Echo", "program": "printf", "args": ["%s\\n", "{text}"],
                 "parameters": {"text": {"type": "string", "pattern": "[^A-Z]*"},
                                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"}}},
        "gated": {"name": "Gated", "program": "sh",
                  "args": ["-c", "seq 1 \"$FIRST\"; while [ ! -e \"$GATE\" ]; do sleep 0.01; done; seq 1 \"$SECOND\""],
                  "env": {"GATE": gate.to_str().unwrap(), "FIRST": "50", "SECOND": "50"}},
        "gated_big": {"name": "Gated big", "program": "sh",
                  "args": ["-c", "while [ ! -e \"$GATE\" ]; do sleep 0.01; done; seq 1 20000"],
                  "env": {"GATE": gate.to_str().unwrap()}}
    }}))
    .unwrap()
}

fn start_with(engine: EngineConfig, config: ServerConfig) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::new(EngineConfig {
        log_dir: Some(dir.path().join("runs")),
        ..engine
    }));
    let server = Server::start(
        engine,
        catalogue(dir.path()),
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..config
        },
    )
    .unwrap();
    let base = format!("http://{}", server.addr());
    TestServer { server, base, dir }
}

fn start() -> TestServer {
    start_with(EngineConfig::default(), ServerConfig::default())
}

impl TestServer {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_with(method, path, body, &[])
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = ureq::request(method, &format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn start_module(&self, id: &str, params: Value) -> String {
        let (status, run) = self.call(
            "POST",
            &format!("/api/modules/{id}/run"),
            Some(&json!({"parameters": params}).to_string()),
        );
        assert_eq!(status, 202, "{run}");
        run["run_id"].as_str().unwrap().to_string()
    }

    fn wait_finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (_, run) = self.call("GET", &format!("/api/runs/{id}"), None);
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn sse(&self, id: &str, query: &str, headers: &[&str]) -> SseClient {
        SseClient::connect(
            self.server.addr(),
            &format!("/api/runs/{id}/logs/stream{query}"),
            headers,
        )
    }

    fn open_gate(&self) {
        std::fs::write(self.dir.path().join("gate"), "").unwrap();
    }
}

fn assert_error(resp: (u16, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["error_code"], code, "{}", resp.1);
    assert!(resp.1["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(resp.1["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn endpoints_answer_with_the_documented_shapes_and_errors() {
    let s = start();
    let (status, health) = s.call("GET", "/api/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["total_modules"], 5);
    for key in ["version", "uptime_seconds", "active_runs"] {
        assert!(health.get(key).is_some(), "{key}");
    }
    let (_, modules) = s.call("GET", "/api/modules", None);
    let lines = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "lines")
        .unwrap()
        .clone();
    assert_eq!(lines["parameters"]["count"]["default"], 3);

    let id = s.start_module("lines", json!({"count": 5}));
    assert!(id.starts_with("run_") && id.contains("_lines_"), "{id}");
    let run = s.wait_finished(&id);
    for key in [
        "run_id",
        "module_id",
        "module_name",
        "status",
        "cancelling",
        "created_at",
        "started_at",
        "completed_at",
        "duration_seconds",
        "exit_code",
        "signal",
        "pid",
        "error_message",
        "parameters",
        "progress_percent",
    ] {
        assert!(run.get(key).is_some(), "Run lacks {key}: {run}");
    }
    assert_eq!(
        (run["status"].as_str(), run["exit_code"].as_i64()),
        (Some("completed"), Some(0))
    );
    assert_eq!(run["module_name"], "Lines");
    assert_eq!(run["parameters"], json!({"count": 5}));

    let (_, logs) = s.call("GET", &format!("/api/runs/{id}/logs?tail=2"), None);
    assert_eq!(logs["total_lines"], 6);
    assert_eq!(logs["truncated"], true);
    let msgs: Vec<_> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(msgs, ["5", "exited with code 0"]);
    let (_, logs) = s.call(
        "GET",
        &format!("/api/runs/{id}/logs?after_seq=1&tail=2"),
        None,
    );
    let seqs: Vec<_> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    let (_, logs) = s.call(
        "GET",
        &format!("/api/runs/{id}/logs?since=2000-01-01T00:00:00Z"),
        None,
    );
    assert_eq!(logs["logs"].as_array().unwrap().len(), 6);
    assert_error(
        s.call("GET", &format!("/api/runs/{id}/logs?since=yesterday"), None),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call("GET", &format!("/api/runs/{id}/logs?tail=-1"), None),
        422,
        "VALIDATION_ERROR",
    );

    let download = ureq::get(&format!("{}/api/runs/{id}/logs/download", s.base))
        .call()
        .unwrap();
    assert!(download
        .header("Content-Disposition")
        .unwrap()
        .contains(&format!("{id}.log")));
    assert!(download.content_type().starts_with("text/plain"));
    let text = download.into_string().unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(
        text.lines().next().unwrap().ends_with("[stdout] 1"),
        "{text}"
    );

    let (_, list) = s.call(
        "GET",
        "/api/runs?status=completed&module_id=lines&limit=10",
        None,
    );
    assert_eq!(
        (
            list["total"].as_u64(),
            list["limit"].as_u64(),
            list["offset"].as_u64()
        ),
        (Some(1), Some(10), Some(0))
    );
    assert_eq!(list["runs"][0]["run_id"], id.as_str());
    let (_, list) = s.call("GET", "/api/runs?status=failed", None);
    assert_eq!(list["total"], 0);
    for either in ["status=failed&status=completed", "status=failed,completed"] {
        let (_, list) = s.call("GET", &format!("/api/runs?{either}"), None);
        assert_eq!(list["total"], 1, "{either}");
    }
    assert_error(
        s.call("GET", "/api/runs?status=bogus", None),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call("GET", "/api/runs?limit=0", None),
        422,
        "VALIDATION_ERROR",
    );

    assert_error(
        s.call("GET", "/api/runs/run_nope", None),
        404,
        "RUN_NOT_FOUND",
    );
    assert_error(
        s.call("GET", "/api/runs/run_nope/logs/stream", None),
        404,
        "RUN_NOT_FOUND",
    );
    assert_error(
        s.call("POST", "/api/modules/nope/run", Some("{}")),
        404,
        "MODULE_NOT_FOUND",
    );
    assert_error(
        s.call(
            "POST",
            "/api/modules/lines/run",
            Some(r#"{"parameters": {"count": 0}}"#),
        ),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call(
            "POST",
            "/api/modules/lines/run",
            Some(r#"{"parameters": {"count": "3"}}"#),
        ),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call(
            "POST",
            "/api/modules/lines/run",
            Some(r#"{"parameters": {"bogus": 1}}"#),
        ),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call(
            "POST",
            "/api/modules/echo/run",
            Some(r#"{"parameters": {"text": "UP"}}"#),
        ),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call(
            "POST",
            "/api/modules/echo/run",
            Some(r#"{"parameters": {"text": "x", "mode": "c"}}"#),
        ),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call(
            "POST",
            "/api/modules/echo/run",
            Some(r#"{"parameters": {}}"#),
        ),
        422,
        "VALIDATION_ERROR",
    );
    assert_error(
        s.call("POST", "/api/modules/lines/run", Some("{not json")),
        422,
        "VALIDATION_ERROR",
    );
    let big = format!("{{\"parameters\": {{\"x\": \"{}\"}}}}", "a".repeat(2 << 20));
    assert_error(
        s.call("POST", "/api/modules/lines/run", Some(&big)),
        413,
        "PAYLOAD_TOO_LARGE",
    );
    assert_error(s.call("GET", "/api/nothing", None), 404, "NOT_FOUND");
    assert_error(
        s.call("PUT", "/api/runs", Some("{}")),
        405,
        "METHOD_NOT_ALLOWED",
    );
    match ureq::request("PUT", &format!("{}/api/runs", s.base)).call() {
        Err(ureq::Error::Status(405, r)) => assert_eq!(r.header("Allow"), Some("GET, POST")),
        other => panic!("expected 405, got {other:?}"),
    }
    let head = ureq::request("HEAD", &format!("{}/api/health", s.base))
        .call()
        .unwrap();
    assert_eq!(
        (head.status(), head.content_type()),
        (200, "application/json")
    );
    assert_eq!(head.into_string().unwrap(), "", "HEAD has no body");
    assert_error(
        s.call("DELETE", &format!("/api/runs/{id}"), None),
        400,
        "INVALID_STATE",
    );
    assert_error(
        s.call("POST", &format!("/api/runs/{id}/cancel"), None),
        400,
        "INVALID_STATE",
    );
    assert_error(
        s.call("POST", "/api/runs", Some(r#"{"argv": ["true"]}"#)),
        403,
        "FORBIDDEN",
    );

    let (status, stats) = s.call("GET", "/api/system/stats", None);
    assert_eq!(status, 200);
    assert_eq!(stats["runs"]["by_status"]["completed"], 1);
    assert!(stats["memory"]["total_bytes"].as_u64().unwrap() > 0);
    let (status, gpu) = s.call("GET", "/api/gpu", None);
    assert_eq!(status, 200);
    assert!(gpu["available"].is_boolean());
    if gpu["available"] == false {
        assert!(gpu["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let (status, metrics) = s.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    for line in [
        "runstream_runs{state=\"completed\"} 1",
        "runstream_live_runs 0",
        "runstream_queued_runs 0",
        "runstream_sse_clients 0",
        "runstream_entries_captured_total 6",
        "runstream_lines_dropped_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    let page = ureq::get(&s.base).call().unwrap();
    assert!(page.content_type().starts_with("text/html"));
}

#[test]
fn a_parameter_is_one_literal_argument() {
    let s = start();
    let id = s.start_module("echo", json!({"text": "; rm -rf / $(whoami) `id`"}));
    s.wait_finished(&id);
    let (_, logs) = s.call("GET", &format!("/api/runs/{id}/logs"), None);
    assert_eq!(logs["logs"][0]["message"], "; rm -rf / $(whoami) `id`");
    assert_eq!(logs["logs"][0]["stream"], "stdout");
}

#[test]
fn sse_delivers_each_line_live_then_status_and_one_complete() {
    let s = start();
    let id = s.start_module("wait", json!({}));
    let mut client = s.sse(&id, "", &[]);
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    let seen = client.until(|e| e.event == "log");
    assert_eq!(seen[0].event, "retry");
    assert!(
        seen.iter()
            .any(|e| e.event == "status" && e.json()["status"] == "running"),
        "{seen:?}"
    );
    let first = seen.last().unwrap();
    assert_eq!(
        (first.id, first.json()["message"].as_str()),
        (Some(0), Some("first"))
    );
    // A few bytes, long before 8 KiB, and the child is still running.
    assert_eq!(
        s.call("GET", &format!("/api/runs/{id}"), None).1["status"],
        "running"
    );

    let (status, run) = s.call("POST", &format!("/api/runs/{id}/cancel"), None);
    assert_eq!(status, 200);
    assert!(
        run["cancelling"] == true || run["status"] == "cancelled",
        "{run}"
    );
    let rest = client.rest();
    assert!(client.ended, "the chunked body was terminated");
    let statuses: Vec<_> = rest
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.json())
        .collect();
    assert!(
        statuses.iter().any(|s| s["cancelling"] == true),
        "{statuses:?}"
    );
    assert_eq!(statuses.last().unwrap()["status"], "cancelled");
    let completes: Vec<_> = rest.iter().filter(|e| e.event == "complete").collect();
    assert_eq!(completes.len(), 1);
    assert_eq!(completes[0].json()["status"], "cancelled");
    assert_eq!(rest.last().unwrap().event, "complete");
}

#[test]
fn resume_continues_after_last_event_id_without_duplicates_or_holes() {
    let s = start();
    let id = s.start_module("gated", json!({}));
    let mut first = s.sse(&id, "", &[]);
    let seen = first.until(|e| e.id == Some(20));
    drop(first); // the client goes away mid-stream
    let mut seqs: Vec<u64> = seen.iter().filter_map(|e| e.id).collect();
    let mut second = s.sse(&id, "", &["Last-Event-ID: 20"]);
    assert_eq!(second.status, 200);
    let next = second.until(|e| e.event == "log");
    assert_eq!(next.last().unwrap().id, Some(21));
    seqs.push(21);
    s.open_gate();
    let rest = second.rest();
    seqs.extend(
        rest.iter()
            .filter(|e| e.event == "log")
            .filter_map(|e| e.id),
    );
    assert_eq!(rest.last().unwrap().event, "complete");
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs,
        (0..=last).collect::<Vec<_>>(),
        "every seq exactly once"
    );
    assert_eq!(last, 100, "100 lines and the exit entry");

    // A client that has seen everything gets 204, which stops EventSource.
    let done = s.sse(&id, "", &[&format!("Last-Event-ID: {last}")]);
    assert_eq!(done.status, 204);
    // ?after_seq= and ?tail= on the finished run.
    let mut after = s.sse(&id, "?after_seq=95", &[]);
    let ids: Vec<_> = after.rest().iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, [96, 97, 98, 99, 100]);
    let mut tail = s.sse(&id, "?tail=2", &[]);
    let ids: Vec<_> = tail.rest().iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, [99, 100]);
    let bad = s.sse(&id, "", &["Last-Event-ID: x"]);
    assert_eq!(bad.status, 422);
}

#[test]
fn with_a_data_dir_resume_from_zero_works_after_the_ring_evicted_it() {
    let s = start_with(
        EngineConfig {
            ring_max_entries: 100,
            ..EngineConfig::default()
        },
        ServerConfig::default(),
    );
    let id = s.start_module("lines", json!({"count": 5000}));
    s.wait_finished(&id);
    let mut client = s.sse(&id, "", &[]);
    let events = client.rest();
    assert!(events.iter().all(|e| e.event != "gap"));
    let seqs: Vec<_> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(seqs, (0..=5000).collect::<Vec<_>>());
    let mut resumed = s.sse(&id, "", &["Last-Event-ID: 9"]);
    assert_eq!(
        resumed.until(|e| e.event == "log").last().unwrap().id,
        Some(10)
    );
}

#[test]
fn keep_alives_flow_and_departed_clients_are_noticed() {
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            keep_alive: Duration::from_millis(50),
            ..ServerConfig::default()
        },
    );
    let id = s.start_module("wait", json!({}));
    let mut clients: Vec<_> = (0..10).map(|_| s.sse(&id, "", &[])).collect();
    for c in &mut clients {
        c.until(|e| e.event == "log");
    }
    clients[0].until(|e| e.event == ":" && e.data == "keep-alive");
    assert_eq!(s.server.sse_clients(), 10);
    drop(clients);
    let deadline = Instant::now() + PATIENCE;
    while s.server.sse_clients() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} stream threads still open",
            s.server.sse_clients()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn fan_out_200_clients_each_get_every_line_once_in_order() {
    let _heavy = crate::util::heavy_test();
    let s = start();
    let id = s.start_module("gated_big", json!({}));
    // One client that never reads: it must not delay the others or the child.
    let mut stalled = s.sse(&id, "", &[]);
    stalled.until(|e| e.event == "status");
    let readers: Vec<_> = (0..200)
        .map(|_| {
            let mut c = s.sse(&id, "", &[]);
            assert_eq!(c.status, 200);
            c.until(|e| e.event == "status");
            thread::spawn(move || {
                let mut expected = 0u64;
                for e in std::iter::from_fn(|| c.next_event()) {
                    if e.event == "log" {
                        assert_eq!(e.id, Some(expected), "in order, exactly once");
                        expected += 1;
                    }
                }
                expected
            })
        })
        .collect();
    s.open_gate();
    for r in readers {
        assert_eq!(r.join().unwrap(), 20_001, "20 000 lines and the exit entry");
    }
    assert_eq!(s.wait_finished(&id)["status"], "completed");
    drop(stalled);
}

#[test]
fn tokens_guard_the_api_and_cors_is_opt_in() {
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            token: Some("s3cret".into()),
            cors_origin: Some("http://app.example".into()),
            ..ServerConfig::default()
        },
    );
    assert_error(s.call("GET", "/api/health", None), 401, "UNAUTHORIZED");
    assert_error(
        s.call_with(
            "GET",
            "/api/health",
            None,
            &[("Authorization", "Bearer wrong")],
        ),
        401,
        "UNAUTHORIZED",
    );
    assert_error(s.call("GET", "/metrics", None), 401, "UNAUTHORIZED");
    assert_eq!(
        s.call_with(
            "GET",
            "/api/health",
            None,
            &[("Authorization", "Bearer s3cret")]
        )
        .0,
        200
    );
    assert_eq!(s.call("GET", "/api/health?token=s3cret", None).0, 200);
    assert_eq!(
        s.call_with(
            "GET",
            "/api/health",
            None,
            &[("Authorization", "bearer s3cret")]
        )
        .0,
        200,
        "the scheme is case-insensitive"
    );
    assert_eq!(
        ureq::get(&s.base).call().unwrap().status(),
        200,
        "the page itself is public"
    );
    let resp = ureq::get(&format!("{}/api/health?token=s3cret", s.base))
        .set("Origin", "http://app.example")
        .call()
        .unwrap();
    assert_eq!(
        resp.header("Access-Control-Allow-Origin"),
        Some("http://app.example")
    );
    // With a token, the token decides (a forging page cannot know it; a proxy may rewrite
    // Host but not Origin); the browser still gets no CORS grant for a foreign origin.
    let resp = ureq::get(&format!("{}/api/health?token=s3cret", s.base))
        .set("Origin", "http://evil.example")
        .set("Host", "runs.example")
        .call()
        .unwrap();
    assert_eq!(resp.header("Access-Control-Allow-Origin"), None);
    assert_error(
        s.call_with(
            "POST",
            "/api/modules/wait/run",
            None,
            &[("Origin", "http://evil.example")],
        ),
        401,
        "UNAUTHORIZED",
    );
    let preflight = ureq::request("OPTIONS", &format!("{}/api/runs", s.base))
        .set("Origin", "http://app.example")
        .call()
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .contains("Authorization"));

    let no_token = Server::start(
        Arc::new(Engine::new(EngineConfig::default())),
        Catalogue::default(),
        ServerConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            ..ServerConfig::default()
        },
    );
    assert!(no_token.err().unwrap().contains("without a token"));
}

/// One request over raw TCP (the `Host` header is ours to set); returns status and body.
fn raw_request(s: &TestServer, head: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(s.server.addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn pages_on_other_sites_can_neither_start_runs_nor_read_the_api() {
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            allow_commands: true,
            ..ServerConfig::default()
        },
    );
    let host = format!("Host: {}", s.server.addr());
    let marker = s.dir.path().join("pwned");
    let argv = format!(r#"{{"argv": ["touch", "{}"]}}"#, marker.display());
    // A "simple" cross-site POST, which a browser sends without asking first.
    let forged = format!("POST /api/runs HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain");
    assert_error(raw_request(&s, &forged, &argv), 403, "FORBIDDEN");
    let forged_module = format!(
        "POST /api/modules/wait/run HTTP/1.1\r\n{host}\r\nOrigin: null\r\nContent-Type: application/x-www-form-urlencoded"
    );
    assert_error(raw_request(&s, &forged_module, ""), 403, "FORBIDDEN");
    // Without an Origin, a form or text body is still not taken for JSON.
    let text_body = format!("POST /api/runs HTTP/1.1\r\n{host}\r\nContent-Type: text/plain");
    assert_error(raw_request(&s, &text_body, &argv), 422, "VALIDATION_ERROR");
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1 is same-origin to the
    // browser, but its Host header gives it away.
    let rebound = "GET /api/runs HTTP/1.1\r\nHost: evil.example:8787";
    assert_error(raw_request(&s, rebound, ""), 403, "FORBIDDEN");
    assert_eq!(
        s.call("GET", "/api/runs", None).1["total"],
        0,
        "nothing ran"
    );
    assert!(!marker.exists());

    // The server's own page (same origin), localhost names and plain clients still work.
    let own = format!(
        "POST /api/runs HTTP/1.1\r\n{host}\r\nOrigin: http://{}\r\nContent-Type: application/json",
        s.server.addr()
    );
    assert_eq!(raw_request(&s, &own, &argv).0, 202);
    let by_name = format!(
        "GET /api/health HTTP/1.1\r\nHost: localhost:{}",
        s.server.addr().port()
    );
    assert_eq!(raw_request(&s, &by_name, "").0, 200);
    let no_content_type = format!("POST /api/runs HTTP/1.1\r\n{host}");
    assert_eq!(raw_request(&s, &no_content_type, &argv).0, 202);
}

#[test]
fn a_finished_stream_leaves_the_connection_as_http_says() {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = start();
    let id = s.start_module("lines", json!({"count": 3}));
    s.wait_finished(&id);
    let connect = || {
        let stream = std::net::TcpStream::connect(s.server.addr()).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
    };
    // Reads a response head; returns its lines.
    fn head(reader: &mut impl BufRead) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                return lines;
            }
            lines.push(line.trim_end().to_ascii_lowercase());
        }
    }
    // Reads a chunked body to its zero-length chunk.
    fn chunked_body(reader: &mut impl BufRead) -> String {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                return String::from_utf8(body).unwrap();
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let stream_path = format!("/api/runs/{id}/logs/stream");

    // HTTP/1.1 keep-alive: chunked, and the connection serves the next request.
    let mut stream = connect();
    write!(
        stream,
        "GET {stream_path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let lines = head(&mut reader);
    assert!(
        lines.contains(&"transfer-encoding: chunked".to_string()),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("connection: close")),
        "{lines:?}"
    );
    let body = chunked_body(&mut reader);
    assert!(body.contains("event: complete"));
    // A replay starts with how the run ended, and does not pass through `running` again.
    let first_event = body.split("\n\n").nth(1).unwrap();
    assert!(
        first_event.starts_with("event: status") && first_event.contains(r#""status":"completed""#),
        "{body}"
    );
    assert_eq!(body.matches("event: status").count(), 1, "{body}");
    write!(
        stream,
        "GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    assert!(head(&mut reader)[0].starts_with("http/1.1 200"));

    // `Connection: close`: said, and done right after the terminator.
    let mut stream = connect();
    write!(
        stream,
        "GET {stream_path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let lines = head(&mut reader);
    assert!(
        lines.contains(&"connection: close".to_string()),
        "{lines:?}"
    );
    assert!(chunked_body(&mut reader).contains("event: complete"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the response");

    // HTTP/1.0 has no chunked framing: a plain body that ends when the connection does.
    let mut stream = connect();
    write!(
        stream,
        "GET {stream_path} HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let lines = head(&mut reader);
    assert!(
        !lines.iter().any(|l| l.starts_with("transfer-encoding")),
        "{lines:?}"
    );
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("retry:"), "{body:?}");
    assert!(body.contains("event: complete"), "{body:?}");
}

#[test]
fn past_the_log_limit_the_download_and_the_stream_say_what_was_not_kept() {
    let s = start_with(
        EngineConfig {
            ring_max_entries: 1000,
            max_log_bytes: Some(20_000),
            ..EngineConfig::default()
        },
        ServerConfig::default(),
    );
    let id = s.start_module("lines", json!({"count": 20000}));
    s.wait_finished(&id);
    let text = ureq::get(&format!("{}/api/runs/{id}/logs/download", s.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let warning = lines
        .iter()
        .position(|l| l.contains("reached its limit of 20000 bytes"))
        .expect("the warning is downloaded");
    assert!(
        lines[warning + 1].starts_with("[runstream] entries "),
        "{}",
        lines[warning + 1]
    );
    assert!(lines.last().unwrap().ends_with("exited with code 0"));
    assert_eq!(lines.len() - warning - 2, 1000, "then the ring's last 1000");

    let mut sse = s.sse(&id, "", &[]);
    let events = sse.rest();
    let gap = events.iter().position(|e| e.event == "gap").expect("a gap");
    assert_eq!(
        events[gap - 1].json()["stream"],
        "system",
        "the warning, just before"
    );
    assert_eq!(events.last().unwrap().event, "complete");
}

/// Runs `printf 'FIRST'`, a wait for a gate file, then `printf 'REST'` (printf escapes
/// allowed) on a server that allows commands. Opens the gate once the quiet flush has
/// handed out a stdout piece (end `none`) starting with `ab`, then waits for the end.
fn run_paused_mid_line(first: &str, rest: &str) -> (TestServer, String) {
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            allow_commands: true,
            ..ServerConfig::default()
        },
    );
    let gate = s.dir.path().join("gate");
    let script = format!(
        "printf '{first}'; while [ ! -e {0} ]; do sleep 0.01; done; printf '{rest}'",
        gate.display()
    );
    let body = json!({"argv": ["sh", "-c", script]}).to_string();
    let (status, run) = s.call("POST", "/api/runs", Some(&body));
    assert_eq!(status, 202, "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, logs) = s.call("GET", &format!("/api/runs/{id}/logs"), None);
        let partial = logs["logs"].as_array().unwrap().iter().any(|e| {
            e["stream"] == "stdout"
                && e["end"] == "none"
                && e["message"].as_str().unwrap().starts_with("ab")
        });
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "no partial line: {logs}");
        thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&gate, "").unwrap();
    s.wait_finished(&id);
    (s, id)
}

#[test]
fn the_download_joins_the_pieces_of_a_line() {
    // "ab" goes out on its own (end none) while the child waits at the gate.
    let (s, id) = run_paused_mid_line("ab", "cd\\n");
    let text = ureq::get(&format!("{}/api/runs/{id}/logs/download", s.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let stdout: Vec<&str> = text.lines().filter(|l| l.contains("[stdout]")).collect();
    assert_eq!(stdout.len(), 1, "{text}");
    assert!(stdout[0].ends_with("[stdout] abcd"), "{text}");
}

/// Issue 16.1: a child that pauses in the middle of a character. The quiet flush hands
/// out `ab` and keeps the first two bytes of 😀 until the rest comes, so neither the
/// entries nor the download have U+FFFD.
#[test]
fn a_pause_inside_a_character_tears_neither_the_entries_nor_the_download() {
    // \360\237 and \230\200 are the two halves of 😀 (F0 9F 98 80).
    let (s, id) = run_paused_mid_line("ab\\360\\237", "\\230\\200cd\\n");
    let (_, logs) = s.call("GET", &format!("/api/runs/{id}/logs"), None);
    let stdout: Vec<(&str, &str)> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| (e["message"].as_str().unwrap(), e["end"].as_str().unwrap()))
        .collect();
    assert_eq!(stdout, [("ab", "none"), ("😀cd", "lf")]);
    let text = ureq::get(&format!("{}/api/runs/{id}/logs/download", s.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(!text.contains('\u{fffd}'), "{text}");
    assert!(text.contains("[stdout] ab😀cd\n"), "{text}");
}

#[test]
fn raw_commands_need_allow_commands_and_are_validated() {
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            allow_commands: true,
            ..ServerConfig::default()
        },
    );
    let (status, run) = s.call(
        "POST",
        "/api/runs",
        Some(r#"{"argv": ["sh", "-c", "echo $GREETING; sleep 100"], "env": {"GREETING": "hi"}, "timeout_seconds": 0.3, "grace_seconds": 0}"#),
    );
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["module_id"], "cmd");
    let id = run["run_id"].as_str().unwrap();
    assert!(id.contains("_cmd_"));
    let run = s.wait_finished(id);
    assert_eq!(run["status"], "timed_out");
    let (_, logs) = s.call("GET", &format!("/api/runs/{id}/logs"), None);
    assert_eq!(logs["logs"][0]["message"], "hi");
    for bad in [
        r#"{"argv": []}"#,
        r#"{"argv": "ls"}"#,
        r#"{"argv": [1]}"#,
        r#"{"argv": ["ls"], "timeout_seconds": -1}"#,
        r#"{"argv": ["ls"], "bogus": 1}"#,
        r#"{"argv": ["ls"], "cwd": "/tmp\u0000x"}"#,
        "[]",
    ] {
        assert_error(
            s.call("POST", "/api/runs", Some(bad)),
            422,
            "VALIDATION_ERROR",
        );
    }
}

/// Regression: tiny_http's thread pool queued a connection behind busy threads when two
/// arrived together, and with long-lived SSE connections it waited forever (50 of 100
/// clients in the SSE bench). Fixed in vendor/tiny_http.
#[test]
fn a_hundred_clients_connecting_at_once_all_get_their_stream() {
    let s = start();
    let id = s.start_module("wait", json!({}));
    let addr = s.server.addr();
    let barrier = Arc::new(std::sync::Barrier::new(100));
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (barrier, id) = (Arc::clone(&barrier), id.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut c = SseClient::connect(addr, &format!("/api/runs/{id}/logs/stream"), &[]);
                assert_eq!(c.status, 200);
                c.until(|e| e.event == "log");
                c
            })
        })
        .collect();
    let connected: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(connected.len(), 100);
    s.call("POST", &format!("/api/runs/{id}/cancel"), None);
}

#[test]
fn streams_beyond_the_limit_get_503_and_a_freed_slot_is_reusable() {
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            max_sse_clients: 2,
            keep_alive: Duration::from_millis(50),
            ..ServerConfig::default()
        },
    );
    let id = s.start_module("wait", json!({}));
    let mut open: Vec<_> = (0..2).map(|_| s.sse(&id, "", &[])).collect();
    for c in &mut open {
        assert_eq!(c.status, 200);
        c.until(|e| e.event == "log");
    }
    assert_error(
        s.call("GET", &format!("/api/runs/{id}/logs/stream"), None),
        503,
        "RESOURCE_LIMIT_EXCEEDED",
    );
    // The API itself still answers.
    assert_eq!(s.call("GET", &format!("/api/runs/{id}"), None).0, 200);
    drop(open.pop());
    let deadline = Instant::now() + PATIENCE;
    while s.server.sse_clients() > 1 {
        assert!(
            Instant::now() < deadline,
            "the closed stream was not noticed"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.sse(&id, "", &[]).status, 200);
    s.call("POST", &format!("/api/runs/{id}/cancel"), None);
}

#[test]
fn modules_reload_needs_the_token_and_swaps_the_catalogue() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("modules.json");
    std::fs::write(
        &file,
        json!({"modules": {"hello": {"name": "Hello", "program": "echo", "args": ["hi"]}}})
            .to_string(),
    )
    .unwrap();
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            token: Some("s3cret".into()),
            modules_file: Some(file),
            ..ServerConfig::default()
        },
    );
    let before = s.call("GET", "/api/modules?token=s3cret", None).1["total"].clone();
    assert_error(
        s.call("POST", "/api/modules/reload", None),
        401,
        "UNAUTHORIZED",
    );
    assert_eq!(
        s.call("GET", "/api/modules?token=s3cret", None).1["total"],
        before,
        "a refused reload changes nothing"
    );
    let auth = [("Authorization", "Bearer s3cret")];
    let (code, report) = s.call_with("POST", "/api/modules/reload", None, &auth);
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["added"], json!(["hello"]));
    assert_eq!(report["total_modules"], 1);
    assert!(
        !report["removed"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let (_, modules) = s.call_with("GET", "/api/modules", None, &auth);
    assert_eq!(modules["modules"][0]["id"], "hello", "{modules}");
    assert_eq!(
        s.server.reload_modules().unwrap().changed,
        Vec::<String>::new()
    );

    // A server without a modules file has nothing to reload.
    let plain = start();
    assert_error(
        plain.call("POST", "/api/modules/reload", None),
        400,
        "INVALID_STATE",
    );
}

/// `POST /api/runs` refuses an env name with `=` or NUL, or a NUL anywhere, but the
/// catalogue took them: `{"A=B": "c"}` gave the child `A=B=c` (that is, `A` = `B=c`), and
/// a NUL failed every run of the module at spawn. A reload refuses them, naming the field.
#[test]
fn a_catalogue_with_env_names_or_nuls_the_api_refuses_is_refused_at_reload() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("modules.json");
    let write = |module: Value| {
        std::fs::write(&file, json!({"modules": {"m": module}}).to_string()).unwrap()
    };
    write(json!({"name": "M", "program": "echo"}));
    let s = start_with(
        EngineConfig::default(),
        ServerConfig {
            modules_file: Some(file.clone()),
            ..ServerConfig::default()
        },
    );
    assert_eq!(s.call("POST", "/api/modules/reload", None).0, 200);
    let cases = [
        (
            json!({"name": "M", "program": "env", "env": {"A=B": "c"}}),
            "modules.m.env",
        ),
        (
            json!({"name": "M", "program": "env", "env": {"": "c"}}),
            "modules.m.env",
        ),
        (
            json!({"name": "M", "program": "env", "env": {"K\u{0}": "v"}}),
            "modules.m.env",
        ),
        (
            json!({"name": "M", "program": "env", "env": {"K": "v\u{0}w"}}),
            "modules.m.env",
        ),
        (
            json!({"name": "M", "program": "ec\u{0}ho"}),
            "modules.m.program",
        ),
        (
            json!({"name": "M", "program": "echo", "args": ["a\u{0}"]}),
            "modules.m.args[0]",
        ),
        (
            json!({"name": "M", "program": "echo", "cwd": "a\u{0}"}),
            "modules.m.cwd",
        ),
    ];
    for (module, field) in cases {
        write(module.clone());
        let (code, body) = s.call("POST", "/api/modules/reload", None);
        assert_eq!(code, 422, "{module}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{module}: {detail}");
    }
    // The old catalogue stays: the module still runs plain echo.
    let (code, run) = s.call("POST", "/api/modules/m/run", Some("{}"));
    assert_eq!(code, 202, "{run}");
}

/// A name under `/page/` that is not one of the page's files answered 405 "GET is not
/// allowed here; use GET". It is a path that does not exist: 404 `NOT_FOUND`.
#[test]
fn an_unknown_page_file_is_404_not_405() {
    let s = start();
    let (code, body) = s.call("GET", "/page/api.js", None);
    assert_eq!(code, 200, "{body}");
    for path in ["/page/app.js", "/page/..%2fCargo.toml", "/page/x%00"] {
        assert_error(s.call("GET", path, None), 404, "NOT_FOUND");
    }
    // Another method on a page path is still 405.
    assert_error(
        s.call("POST", "/page/api.js", Some("{}")),
        405,
        "METHOD_NOT_ALLOWED",
    );
}
