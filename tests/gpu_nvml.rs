//! The GPU path through the real binary and NVML's real ABI: `runstream serve` and
//! `runstream gpu` load a scripted NVML (`gpu_nvml/scripted_nvml.c`) through
//! `RUNSTREAM_NVML_LIBRARY`, and the tests change its answers while the server runs.
//!
//! The server samples every second (its default). Waits are bounded by `PATIENCE`; where a
//! test must know that the server sampled again, it counts the library's calls instead of
//! sleeping.

mod scripted;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sse_client::SseClient;
use crate::util::{live_group_members, PATIENCE};
use scripted::{Device, ScriptedNvml, State, Variant, GIB};

/// The function whose call starts each of runstream's sweeps.
const SWEEP: &str = "nvmlDeviceGetCount_v2";

/// Polls `done` every 20 ms until it returns `Some`; panics with `what` after `PATIENCE`.
fn poll<T>(what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until runstream has started `n` more sweeps than it had when called. The first
/// of them may have read the state before it was set; every later one read the new state,
/// and all but the last have been applied (the sampler sweeps one after the other). So
/// after `n = 3`, with no other caller sampling meanwhile (`/api/gpu` does), at least one
/// sweep of the new state has been applied.
fn wait_sweeps(nvml: &ScriptedNvml, n: usize) {
    let start = nvml.calls(SWEEP);
    poll(&format!("{n} more NVML sweeps"), || {
        (nvml.calls(SWEEP) >= start + n).then_some(())
    });
}

/// `runstream serve --allow-commands` using the scripted NVML; SIGKILLed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    agent: ureq::Agent,
    stderr: tempfile::NamedTempFile,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(nvml: &ScriptedNvml) -> Server {
        let data = tempfile::tempdir().unwrap();
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_runstream"));
        nvml.configure(&mut command);
        let mut child = command
            .env_remove("RUNSTREAM_TOKEN")
            .env("RUST_LOG", "info")
            .args(["serve", "--bind", "127.0.0.1:0", "--allow-commands"])
            .arg("--data-dir")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        // The first line says where it listens; nothing else is printed on stdout.
        let addr = crate::util::listening_addr(child.stdout.take().unwrap());
        Server {
            child,
            addr,
            agent: ureq::AgentBuilder::new().timeout(PATIENCE).build(),
            stderr,
            _data: data,
        }
    }

    fn text(&self, path: &str) -> String {
        self.agent
            .get(&format!("http://{}{path}", self.addr))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_string()
            .unwrap()
    }

    fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.text(path)).unwrap()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.agent
            .post(&format!("http://{}{path}", self.addr))
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .into_json()
            .unwrap()
    }

    /// Submits `argv` needing `gpu_memory_mb`; returns the run id.
    fn submit(&self, argv: &[&str], gpu_memory_mb: u64) -> String {
        let run = self.post(
            "/api/runs",
            json!({"argv": argv, "gpu_memory_mb": gpu_memory_mb}),
        );
        run["run_id"].as_str().unwrap().to_string()
    }

    /// Submits `sh -c 'sleep 300 & echo $!; wait'` and returns its id and the pid of the
    /// `sleep`: a grandchild of the run, as `python` under `sh` would be.
    fn submit_with_grandchild(&self, gpu_memory_mb: u64) -> (String, u32) {
        let id = self.submit(&["sh", "-c", "sleep 300 & echo $!; wait"], gpu_memory_mb);
        let pid = poll("the grandchild's pid in the log", || {
            let logs = self.get(&format!("/api/runs/{id}/logs"));
            logs["logs"].as_array().unwrap().iter().find_map(|e| {
                (e["stream"] == "stdout").then(|| e["message"].as_str()?.parse().ok())?
            })
        });
        (id, pid)
    }

    fn run(&self, id: &str) -> Value {
        self.get(&format!("/api/runs/{id}"))
    }

    /// Polls run `id` until `pred` holds; returns it.
    fn wait_run(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let found = poll_or(|| {
            last = self.run(id);
            pred(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("timed out: {what}; the run: {last}\n{}", self.log()))
    }

    fn cancel(&self, id: &str) {
        self.post(&format!("/api/runs/{id}/cancel"), json!({}));
    }

    fn stream(&self, id: &str) -> SseClient {
        let sse = SseClient::connect(self.addr, &format!("/api/runs/{id}/logs/stream"), &[]);
        assert_eq!(sse.status, 200);
        sse
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

/// Like `poll`, but `None` after `PATIENCE` instead of a panic.
fn poll_or<T>(mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(v) = done() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Server {
    /// SIGTERM, so that the server stops its runs: after a SIGKILL their `sleep 300`s
    /// would live on (a killed server's runs are stopped at its next start, which never
    /// comes here). SIGKILL only if it is not gone within `PATIENCE`.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the server process this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `runstream gpu` with `nvml`: (exit code, stdout, stderr).
fn gpu_command(nvml: &ScriptedNvml) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runstream"));
    nvml.configure(&mut command);
    let out = command.arg("gpu").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runstream_gpu_lists_the_cards_and_processes_nvml_reports() {
    let state = State {
        devices: vec![Device::card(0, 30 * GIB), Device::card(1, 20 * GIB)],
        processes: vec![(1, 4242, Some(3 * GIB)), (1, 4343, None)],
        sm: vec![(1, 4242, 93)],
        ..State::default()
    };
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &state) else {
        return;
    };
    let (code, out, err) = gpu_command(&nvml);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // Memory through nvmlMemory_t (used / total), utilisation, temperature, power in mW.
    assert!(
        lines[1].starts_with("0   Scripted GeForce RTX 5090")
            && lines[1].contains(" 2048 /  32768 MiB")
            && lines[1].contains("40%")
            && lines[1].contains("60C")
            && lines[1].ends_with("250W"),
        "{out}"
    );
    assert!(lines[2].contains("12288 /  32768 MiB") && lines[2].contains("41%"));
    // The process list came through NVML_ERROR_INSUFFICIENT_SIZE and 24-byte records;
    // NVML_VALUE_NOT_AVAILABLE is shown as unknown.
    // SM % through nvmlDeviceGetProcessUtilization; none for 4343 (NOT_FOUND for it).
    assert!(out.contains("1       4242     3072 MiB  93%"), "{out}");
    assert!(out.contains("1       4343            -    -"), "{out}");
    // Memory came through nvmlDeviceGetMemoryInfo_v2 with NVML_STRUCT_VERSION(Memory, 2)
    // (the library refuses any other version word), never the v1 call.
    assert_eq!(nvml.calls("nvmlDeviceGetMemoryInfo_v2"), 2);
    assert_eq!(nvml.calls("nvmlDeviceGetMemoryInfo"), 0);
}

#[test]
fn a_driver_without_the_v2_memory_call_is_read_through_the_v1_call() {
    // Drivers before R510 (the R470 long-term branch) lack nvmlDeviceGetMemoryInfo_v2,
    // which nvml-wrapper 0.13 calls.
    let Some(nvml) = ScriptedNvml::new(Variant::NoMemoryV2, &State::one_card(30 * GIB)) else {
        return;
    };
    let (code, out, err) = gpu_command(&nvml);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" 2048 /  32768 MiB"), "{out}");
    assert_eq!(nvml.calls("nvmlDeviceGetMemoryInfo"), 1);
}

#[test]
fn runstream_gpu_states_why_nvml_cannot_start() {
    for (init, words) in [
        ("DRIVER_NOT_LOADED", "the NVIDIA driver is not loaded"),
        (
            "NO_PERMISSION",
            "no permission to talk to the NVIDIA driver",
        ),
    ] {
        let state = State {
            init: Some(init),
            ..State::one_card(GIB)
        };
        let Some(nvml) = ScriptedNvml::new(Variant::Full, &state) else {
            return;
        };
        let (code, _, err) = gpu_command(&nvml);
        assert_eq!(
            (code, err.trim()),
            (1, &*format!("runstream: no GPU: {words}"))
        );
    }
    let Some(nvml) = ScriptedNvml::new(Variant::NoInit, &State::one_card(GIB)) else {
        return;
    };
    let (code, _, err) = gpu_command(&nvml);
    assert_eq!(code, 1);
    assert!(
        err.contains("lacks a function runstream needs") && err.contains("nvmlInit_v2"),
        "{err}"
    );
    // A library that is not there.
    let mut command = Command::new(env!("CARGO_BIN_EXE_runstream"));
    let missing = nvml.dir().join("no-such-libnvidia-ml.so");
    let out = command
        .arg("gpu")
        .env("RUNSTREAM_NVML_LIBRARY", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&format!(
            "cannot load the NVML library {} (set by RUNSTREAM_NVML_LIBRARY)",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn a_grandchilds_gpu_memory_is_its_runs_in_the_api_sse_and_metrics() {
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(30 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let gpu = server.get("/api/gpu");
    assert_eq!(gpu["available"], true, "{gpu}");
    assert_eq!(gpu["devices"][0]["name"], "Scripted GeForce RTX 5090");
    assert_eq!(gpu["devices"][0]["uuid"], "GPU-scripted-0");
    assert_eq!(gpu["devices"][0]["memory_free_bytes"], 30 * GIB);
    assert_eq!(gpu["devices"][0]["power_watts"], 250.5);

    let (id, grandchild) = server.submit_with_grandchild(0);
    let pgid = server.run(&id)["pid"].as_u64().unwrap() as u32;
    assert_ne!(grandchild, pgid, "NVML sees the grandchild, not the leader");
    assert!(
        live_group_members(pgid).contains(&grandchild),
        "in the leader's group"
    );
    let mut sse = server.stream(&id);
    nvml.set(&State {
        processes: vec![(0, grandchild, Some(2 * GIB))],
        ..State::one_card(28 * GIB)
    });
    let event = sse.until(|e| e.event == "gpu").pop().unwrap();
    assert_eq!(
        event.json(),
        json!({"gpu_memory_bytes": 2 * GIB, "gpu_memory_peak_bytes": 2 * GIB, "gpu_utilization_percent": null})
    );
    nvml.set(&State {
        processes: vec![(0, grandchild, Some(GIB))],
        ..State::one_card(29 * GIB)
    });
    let event = sse.until(|e| e.event == "gpu").pop().unwrap();
    assert_eq!(
        event.json(),
        json!({"gpu_memory_bytes": GIB, "gpu_memory_peak_bytes": 2 * GIB, "gpu_utilization_percent": null}),
        "current drops, the peak stays"
    );
    let run = server.run(&id);
    assert_eq!(
        (&run["gpu_memory_bytes"], &run["gpu_memory_peak_bytes"]),
        (&json!(GIB), &json!(2 * GIB))
    );
    let gpu = server.get("/api/gpu");
    assert_eq!(gpu["runs"][0]["run_id"], id.as_str(), "{gpu}");
    assert_eq!(gpu["runs"][0]["gpu_memory_bytes"], GIB);
    assert_eq!(gpu["devices"][0]["processes"][0]["pid"], grandchild);

    let metrics = server.text("/metrics");
    for line in [
        "runstream_gpu_available 1".to_string(),
        format!(
            "runstream_gpu_memory_used_bytes{{gpu=\"0\",uuid=\"GPU-scripted-0\"}} {}",
            3 * GIB
        ),
        format!(
            "runstream_gpu_memory_total_bytes{{gpu=\"0\",uuid=\"GPU-scripted-0\"}} {}",
            32 * GIB
        ),
        "runstream_gpu_utilization_percent{gpu=\"0\",uuid=\"GPU-scripted-0\"} 40".into(),
        "runstream_gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-scripted-0\"} 60".into(),
        "runstream_gpu_power_watts{gpu=\"0\",uuid=\"GPU-scripted-0\"} 250.5".into(),
        format!("runstream_run_gpu_memory_bytes{{run_id=\"{id}\"}} {GIB}"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    server.cancel(&id);
    server.wait_run(&id, "the run ends", |r| r["status"] == "cancelled");
    let gpu = server.get("/api/gpu");
    assert_eq!(gpu["runs"], json!([]), "a finished run is not listed");
}

#[test]
fn the_vram_queue_holds_releases_and_never_double_books() {
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(3 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let first = server.submit(&["sleep", "300"], 4096);
    let run = server.run(&first);
    assert_eq!(
        (&run["status"], &run["waiting_for"]),
        (&json!("queued"), &json!("gpu_memory"))
    );
    // A run that needs no GPU is never held behind it.
    let cpu = server.submit(&["true"], 0);
    server.wait_run(&cpu, "the CPU run completes", |r| {
        r["status"] == "completed"
    });
    let second = server.submit(&["sh", "-c", "sleep 300 & echo $!; wait"], 4096);
    wait_sweeps(&nvml, 3);
    assert_eq!(server.run(&first)["status"], "queued");
    // 5 GiB free: the first starts; the second waits, 4 GiB being promised to the first
    // although the driver does not show its process yet.
    nvml.set(&State::one_card(5 * GIB));
    let started = server.wait_run(&first, "the first run starts", |r| r["status"] == "running");
    let first_pid = started["pid"].as_u64().unwrap() as u32;
    wait_sweeps(&nvml, 3);
    let run = server.run(&second);
    assert_eq!(
        (&run["status"], &run["waiting_for"]),
        (&json!("queued"), &json!("gpu_memory")),
        "not double-booked"
    );
    // The driver shows the first using its 4 GiB: 1 GiB free, still not enough.
    nvml.set(&State {
        processes: vec![(0, first_pid, Some(4 * GIB))],
        ..State::one_card(GIB)
    });
    server.wait_run(&first, "the first run's memory seen", |r| {
        r["gpu_memory_bytes"] == 4 * GIB
    });
    wait_sweeps(&nvml, 3);
    assert_eq!(server.run(&second)["status"], "queued");
    // The first ends and frees its memory: the second starts.
    server.cancel(&first);
    server.wait_run(&first, "the first run ends", |r| r["status"] == "cancelled");
    nvml.set(&State::one_card(5 * GIB));
    server.wait_run(&second, "the second run starts", |r| {
        r["status"] == "running"
    });
    server.cancel(&second);
    server.wait_run(&second, "the second run ends", |r| {
        r["status"] == "cancelled"
    });
}
#[test]
fn device_errors_mid_run_are_reported_and_recovered_from() {
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(30 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let (id, grandchild) = server.submit_with_grandchild(0);
    let on_gpu = |bytes| State {
        processes: vec![(0, grandchild, Some(bytes))],
        ..State::one_card(30 * GIB - bytes)
    };
    nvml.set(&on_gpu(GIB));
    server.wait_run(&id, "1 GiB seen", |r| r["gpu_memory_bytes"] == GIB);
    for (code, words) in [
        ("GPU_IS_LOST", "fell off the bus"),
        ("TIMEOUT", "timed out"),
        ("UNKNOWN", "internal driver error"),
    ] {
        nvml.set(&State {
            fail: vec![
                ("nvmlDeviceGetMemoryInfo", code),
                ("nvmlDeviceGetMemoryInfo_v2", code),
            ],
            ..on_gpu(GIB)
        });
        // Sampling goes on at its interval: three sweeps come within `PATIENCE` (one
        // failed sample used to pause the sampler for 30 s).
        wait_sweeps(&nvml, 3);
        let gpu = server.get("/api/gpu");
        assert_eq!(gpu["available"], false, "{gpu}");
        let reason = gpu["reason"].as_str().unwrap().to_lowercase();
        assert!(reason.contains(words), "{code}: {reason}");
        assert!(
            server
                .text("/metrics")
                .contains("runstream_gpu_available 0"),
            "{code}"
        );
        // Recovered at the first good sweep.
        nvml.set(&on_gpu(2 * GIB));
        wait_sweeps(&nvml, 3);
        assert_eq!(server.run(&id)["gpu_memory_bytes"], 2 * GIB, "{code}");
        assert_eq!(server.get("/api/gpu")["available"], true);
        nvml.set(&on_gpu(GIB));
        server.wait_run(&id, "1 GiB again", |r| r["gpu_memory_bytes"] == GIB);
    }
    server.cancel(&id);
}

/// Regression (issue 12): one failed reading failed every run waiting for GPU memory,
/// for good ("needs 8192 MiB of GPU memory, but no GPU can be used").
#[test]
fn a_bad_reading_keeps_gpu_runs_waiting_and_says_why() {
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(3 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let id = server.submit(&["sleep", "300"], 8192);
    assert_eq!(server.run(&id)["waiting_for"], "gpu_memory");
    nvml.set(&State {
        fail: vec![
            ("nvmlDeviceGetMemoryInfo", "TIMEOUT"),
            ("nvmlDeviceGetMemoryInfo_v2", "TIMEOUT"),
        ],
        ..State::one_card(3 * GIB)
    });
    let run = server.wait_run(&id, "waiting_for says why", |r| {
        r["waiting_for"] != "gpu_memory"
    });
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(
        run["waiting_for"],
        "gpu_memory: the GPUs cannot be read now (GPU 0: NVML timed out); waiting for a reading"
    );
    wait_sweeps(&nvml, 3);
    assert_eq!(server.run(&id)["status"], "queued");
    let gpu = server.get("/api/gpu");
    assert_eq!(
        (&gpu["available"], &gpu["transient"]),
        (&json!(false), &json!(true)),
        "{gpu}"
    );
    // Readings again, still not enough memory; then enough: the run starts.
    nvml.set(&State::one_card(3 * GIB));
    server.wait_run(&id, "waiting for memory again", |r| {
        r["waiting_for"] == "gpu_memory"
    });
    nvml.set(&State::one_card(10 * GIB));
    server.wait_run(&id, "the run starts", |r| r["status"] == "running");
    server.cancel(&id);
}

/// Regression (issue 12): a failed NVML init was remembered until restart, so a driver
/// that was still starting was never picked up.
#[test]
fn nvml_init_is_retried_and_a_driver_that_comes_later_is_used() {
    let not_loaded = State {
        init: Some("DRIVER_NOT_LOADED"),
        ..State::one_card(30 * GIB)
    };
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &not_loaded) else {
        return;
    };
    let server = Server::start(&nvml);
    let gpu = server.get("/api/gpu");
    assert_eq!(
        gpu,
        json!({"available": false, "reason": "the NVIDIA driver is not loaded", "transient": false})
    );
    // With no GPU at all, a run that needs one fails at once, saying why.
    let id = server.submit(&["true"], 1024);
    let run = server.wait_run(&id, "the GPU run fails", |r| r["status"] == "failed");
    assert_eq!(
        run["error_message"],
        "needs 1024 MiB of GPU memory, but no GPU can be used: the NVIDIA driver is not loaded"
    );
    assert_eq!(run["pid"], Value::Null, "never started");
    nvml.set(&State::one_card(30 * GIB));
    poll("NVML initialised on a retry", || {
        (server.get("/api/gpu")["available"] == true).then_some(())
    });
    assert!(nvml.calls("nvmlInit_v2") >= 2);
}

/// A second 8 GiB run starts beside `first`; then both are cancelled.
fn second_run_starts(server: &Server, first: &str) {
    let second = server.submit(&["sleep", "300"], 8192);
    server.wait_run(&second, "the second run starts", |r| {
        r["status"] == "running"
    });
    server.cancel(first);
    server.cancel(&second);
}

/// A pid no Linux process can have (pid_max is at most 2^22): a host pid as seen from a
/// container with its own PID namespace.
const HOST_PID: u32 = 99_999_999;

#[test]
fn without_per_process_memory_a_runs_memory_is_unknown_and_the_queue_uses_free_memory() {
    // Windows WDDM: NVML lists the processes, with NVML_VALUE_NOT_AVAILABLE as memory.
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(20 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let (first, grandchild) = server.submit_with_grandchild(8192);
    let mut sse = server.stream(&first);
    nvml.set(&State {
        processes: vec![(0, grandchild, None)],
        sm: vec![(0, grandchild, 57)],
        ..State::one_card(12 * GIB)
    });
    let event = sse.until(|e| e.event == "gpu").pop().unwrap();
    assert_eq!(
        event.json(),
        json!({"gpu_memory_bytes": null, "gpu_memory_peak_bytes": null, "gpu_utilization_percent": 57}),
        "unknown, never 0"
    );
    let run = server.run(&first);
    assert_eq!(
        (&run["gpu_memory_bytes"], &run["gpu_utilization_percent"]),
        (&Value::Null, &json!(57))
    );
    let gpu = server.get("/api/gpu");
    assert_eq!(gpu["attribution"]["per_process"], false, "{gpu}");
    let reason = gpu["attribution"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("per-process attribution unavailable: ") && reason.contains("WDDM"),
        "{reason}"
    );
    assert_eq!(
        gpu["runs"],
        json!([{"run_id": first, "gpu_memory_bytes": null, "gpu_memory_peak_bytes": null, "gpu_utilization_percent": 57}])
    );
    let metrics = server.text("/metrics");
    assert!(!metrics.contains(&format!(
        "runstream_run_gpu_memory_bytes{{run_id=\"{first}\"}}"
    )));
    assert!(metrics.contains(&format!(
        "runstream_run_gpu_utilization_percent{{run_id=\"{first}\"}} 57\n"
    )));
    // The first run's process is on the device: its promise is over, and 12 GiB free
    // are enough for a second 8 GiB run.
    second_run_starts(&server, &first);
}

#[test]
fn host_pids_in_a_pid_namespace_are_detected_and_the_queue_uses_free_memory() {
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(20 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let first = server.submit(&["sleep", "300"], 8192);
    server.wait_run(&first, "the first run starts", |r| r["status"] == "running");
    // The first run's process, as NVML sees it: a pid of the host's namespace.
    nvml.set(&State {
        processes: vec![(0, HOST_PID, Some(8 * GIB))],
        ..State::one_card(12 * GIB)
    });
    let gpu = poll("attribution judged", || {
        let gpu = server.get("/api/gpu");
        (gpu["attribution"]["per_process"] == false).then_some(gpu)
    });
    let reason = gpu["attribution"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "per-process attribution unavailable: none of the 1 GPU processes NVML lists is visible here"
        ) && reason.contains("PID namespace"),
        "{reason}"
    );
    assert_eq!(gpu["runs"], json!([]), "{gpu}");
    assert_eq!(server.run(&first)["gpu_memory_bytes"], Value::Null);
    // Memory in use grew by the first run's 8 GiB: its promise is over, and the 12 GiB
    // free are enough for a second 8 GiB run.
    second_run_starts(&server, &first);
}

#[test]
fn utilisation_and_an_unlistable_process_list_mid_run_are_honest_and_recover() {
    let Some(nvml) = ScriptedNvml::new(Variant::Full, &State::one_card(30 * GIB)) else {
        return;
    };
    let server = Server::start(&nvml);
    let (id, grandchild) = server.submit_with_grandchild(0);
    let on_gpu = |bytes, sm: Option<u32>| State {
        processes: vec![(0, grandchild, Some(bytes))],
        sm: sm.map(|sm| (0, grandchild, sm)).into_iter().collect(),
        ..State::one_card(30 * GIB - bytes)
    };
    nvml.set(&on_gpu(GIB, Some(80)));
    server.wait_run(&id, "1 GiB at 80 % SM", |r| {
        r["gpu_memory_bytes"] == GIB && r["gpu_utilization_percent"] == 80
    });
    // No sample since the last sweep (NVML_ERROR_NOT_FOUND): utilisation unknown.
    nvml.set(&on_gpu(GIB, None));
    server.wait_run(&id, "utilisation unknown", |r| {
        r["gpu_utilization_percent"].is_null()
    });
    assert_eq!(server.run(&id)["gpu_memory_bytes"], GIB);
    // The process list cannot be read: memory unknown (not 0), the peak kept.
    nvml.set(&State {
        fail: vec![("nvmlDeviceGetComputeRunningProcesses_v3", "NOT_SUPPORTED")],
        ..on_gpu(GIB, None)
    });
    let run = server.wait_run(&id, "memory unknown", |r| r["gpu_memory_bytes"].is_null());
    assert_eq!(run["gpu_memory_peak_bytes"], GIB);
    let gpu = server.get("/api/gpu");
    assert_eq!(gpu["available"], true);
    assert_eq!(
        gpu["attribution"]["reason"],
        "per-process attribution unavailable: GPU 0: its processes cannot be listed \
         (not supported on this GPU)"
    );
    assert_eq!(
        gpu["devices"][0]["processes_error"],
        "not supported on this GPU"
    );
    nvml.set(&on_gpu(2 * GIB, Some(30)));
    server.wait_run(&id, "readable again", |r| {
        r["gpu_memory_bytes"] == 2 * GIB && r["gpu_utilization_percent"] == 30
    });
    assert_eq!(
        server.get("/api/gpu")["attribution"],
        json!({"per_process": true})
    );
    server.cancel(&id);
}
