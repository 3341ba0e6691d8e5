//! Issue 10, storage side: the listen backlog, the log size limit, the data directory
//! lock, memory bounded by bytes on every read path, and a full disk.

use super::*;

/// Connects to `addr` within `within`; `false` when the connection does not complete.
fn connects(addr: SocketAddr, within: Duration) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, within).ok()
}

#[test]
fn the_listen_backlog_holds_a_burst_of_300_connections() {
    let somaxconn: u32 = fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < 300 {
        println!("SKIPPED listen backlog: net.core.somaxconn is {somaxconn} (< 300)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut proc = Proc::spawn(
        dir.path(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let addr = proc.listening();
    // Stopped, the server accepts nothing: every connection waits in the kernel's accept
    // queue, which is the listen backlog (std's default of 128 holds 129).
    proc.signal(libc::SIGSTOP);
    let mut held = Vec::new();
    for i in 0..300 {
        match connects(addr, Duration::from_secs(5)) {
            Some(stream) => held.push(stream),
            None => {
                send_signal(proc.pid(), libc::SIGCONT);
                panic!("connection {i} did not complete: the listen backlog is too small");
            }
        }
    }
    send_signal(proc.pid(), libc::SIGCONT);
    drop(held);
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(PATIENCE).success());
}

/// `runstream serve` on `data` (plus `extra`) that is expected to refuse to start.
fn serve_fails_on(cwd: &Path, data: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serve_fails(cwd, &args)
}

/// `runstream run --log-dir DIR -- ARGV` with stderr captured.
fn cli_run(log_dir: &Path, argv: &[&str]) -> Command {
    let mut cmd = runstream();
    cmd.arg("run")
        .arg("--log-dir")
        .arg(log_dir)
        .arg("--")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start_and_leaves_the_first_alone() {
    let dir = tempfile::tempdir().unwrap();
    let modules = write_modules(
        dir.path(),
        json!({"modules": {"sleeper": {"name": "Sleeper", "program": "sh",
            "args": ["-c", "echo ready; sleep 100"]}}}),
    );
    let data = dir.path().join("data");
    let first = Server::start(&data, &modules);
    let run_id = first.run_module("sleeper", json!({}));
    let mut sse = first.stream(&run_id);
    sse.wait_for("ready log", |e| e.is_log("ready"));
    let pid = first.pid_of(&run_id);
    let _group = GroupGuard(pid);

    let (code, stderr) =
        serve_fails_on(dir.path(), &data, &["--modules", modules.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let holder = format!("(pid {})", first.proc.pid());
    assert!(stderr.contains(&holder), "{stderr}");
    assert!(stderr.contains("another --data-dir"), "{stderr}");
    // The first server's live run was not touched: no recovery ran.
    assert!(!live_group_members(pid).is_empty());
    assert_eq!(first.run(&run_id)["status"], "running");
    let saved = read_json(&data.join("runs").join(format!("{run_id}.json")));
    assert_eq!(saved["status"], "running", "{saved}");

    // A `runstream run` cannot write into a live server's directory either.
    let out = cli_run(&data.join("runs"), &["true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&holder), "{stderr}");

    // A crash leaves no stale lock: the next server starts and recovers the run.
    let mut first = first;
    first.signal(libc::SIGKILL);
    first.wait_exit(PATIENCE);
    drop(sse);
    let next = Server::start(&data, &modules);
    assert_eq!(next.run(&run_id)["status"], "failed");
}

#[test]
fn runstream_runs_share_a_log_dir_but_a_server_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let runs = data.join("runs");
    let gate = dir.path().join("gate");
    let started = dir.path().join("started");
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.01; done",
        started.display(),
        gate.display()
    );
    let mut long = cli_run(&runs, &["sh", "-c", &script]).spawn().unwrap();
    poll(PATIENCE, "the first run to start", || {
        started.exists().then_some(())
    });
    // A second `runstream run` into the same directory is fine: its files are its own.
    let out = cli_run(&runs, &["echo", "second"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A server there would take the live run for a lost one: it refuses, naming it.
    let (code, stderr) = serve_fails_on(dir.path(), &data, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("pid {}", long.id())), "{stderr}");

    fs::write(&gate, "").unwrap();
    assert!(long.wait().unwrap().success());
    let server = Server::start_in(dir.path(), &data, &[]);
    let list = server.get("/api/runs");
    assert_eq!(list["total"], 2, "{list}");
    assert!(
        list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "completed"),
        "{list}"
    );
}

/// GETs `path` on a fresh connection and reads the whole answer in large reads (no
/// per-byte work: these answers are tens of MB); returns its size and its last 1 MiB.
fn read_all(port: u16, path: &str) -> (u64, Vec<u8>) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(PATIENCE * 4)).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    const KEEP: usize = 1 << 20;
    let mut buf = vec![0u8; 1 << 20];
    let mut tail = Vec::with_capacity(2 * KEEP);
    let mut total = 0u64;
    loop {
        let n = socket
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        if n == 0 {
            return (total, tail);
        }
        total += n as u64;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > KEEP {
            tail.drain(..tail.len() - KEEP);
        }
    }
}

/// The id of the last `log` event in the end of an SSE body, and whether it completed.
fn last_log_id(tail: &[u8]) -> (Option<u64>, bool) {
    let text = String::from_utf8_lossy(tail);
    let id = text
        .rsplit("\nid: ")
        .next()
        .and_then(|rest| rest.split('\n').next())
        .and_then(|n| n.parse().ok());
    (id, text.contains("event: complete"))
}

#[test]
fn memory_stays_bounded_by_bytes_with_30_mb_without_newlines_and_65_readers() {
    let _heavy = crate::util::heavy_test();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(dir.path(), &data, &["--allow-commands"]);
    let gate = dir.path().join("gate");
    // 30 MB of random bytes without a line break: one logical line of ~470 cut pieces.
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; head -c 31457280 /dev/urandom | tr -d '\\n\\r'",
        gate.display()
    );
    let (code, run) = server.post("/api/runs", json!({"argv": ["sh", "-c", script]}));
    assert_eq!(code, 202, "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let stream = format!("/api/runs/{run_id}/logs/stream");
    let port = server.port;

    // 30 live clients connected first, then the output comes.
    let live: Vec<_> = (0..30)
        .map(|_| {
            let stream = stream.clone();
            std::thread::spawn(move || read_all(port, &stream))
        })
        .collect();
    poll(PATIENCE, "30 streams to open", || {
        let metrics = server.get_text("/metrics");
        metrics
            .lines()
            .any(|l| l == "runstream_sse_clients 30")
            .then_some(())
    });
    fs::write(&gate, "").unwrap();
    let done = server.wait_finished(&run_id, PATIENCE * 10);
    assert_eq!(done["status"], "completed", "{done}");
    let logs = server.get(&format!("/api/runs/{run_id}/logs?tail=1"));
    let last_seq = logs["total_lines"].as_u64().unwrap() - 1;
    for reader in live {
        let (bytes, tail) = reader.join().unwrap();
        assert_eq!(last_log_id(&tail), (Some(last_seq), true), "{bytes} bytes");
    }

    // 30 replays and 5 downloads of the finished run at once.
    let replays: Vec<_> = (0..30)
        .map(|_| {
            let stream = stream.clone();
            std::thread::spawn(move || read_all(port, &stream))
        })
        .collect();
    let download = format!("/api/runs/{run_id}/logs/download");
    let downloads: Vec<_> = (0..5)
        .map(|_| {
            let download = download.clone();
            std::thread::spawn(move || read_all(port, &download))
        })
        .collect();
    for reader in replays {
        let (bytes, tail) = reader.join().unwrap();
        assert_eq!(last_log_id(&tail), (Some(last_seq), true), "{bytes} bytes");
    }
    for reader in downloads {
        let (bytes, tail) = reader.join().unwrap();
        assert!(bytes > 30_000_000, "{bytes}");
        let text = String::from_utf8_lossy(&tail);
        assert!(text.contains("[system] exited with code 0"), "{text}");
    }
    // The default `/logs` (tail=500) is capped by bytes, and says so.
    let logs = server.get(&format!("/api/runs/{run_id}/logs"));
    assert_eq!(logs["truncated_by_bytes"], true);
    assert!(logs["logs"].as_array().unwrap().len() < 500);
    assert_eq!(
        logs["logs"].as_array().unwrap().last().unwrap()["seq"],
        last_seq
    );

    let (rss, peak) = memory_kib(server.proc.pid());
    println!("30 MB without newlines, 30 live + 30 replays + 5 downloads: server VmRSS {rss} KiB, VmHWM {peak} KiB");
    assert!(peak < 150 * 1024, "VmHWM (peak) {peak} KiB");
}

/// A 1 MiB tmpfs at `dir`, mounted in a mount namespace of its own that a sleeping
/// process holds: nothing leaks into the machine's mounts, whatever happens to the test.
/// Servers enter the namespace with `nsenter`; the test reaches the tmpfs through
/// `/proc/HOLDER/root`.
struct SmallDisk {
    holder: Child,
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts it, or says why it cannot (not root, no `unshare`).
    fn mount(dir: &Path) -> Result<SmallDisk, String> {
        fs::create_dir_all(dir).unwrap();
        let script = format!(
            "mount -t tmpfs -o size=1m tmpfs '{}' && echo mounted && exec sleep 3600",
            dir.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "mounted" {
            let _ = holder.kill();
            let out = holder.wait_with_output().unwrap();
            return Err(format!(
                "cannot mount a tmpfs in a mount namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            holder,
            dir: dir.to_path_buf(),
        })
    }

    /// `rel` on the tmpfs, as the test sees it.
    fn path(&self, rel: &str) -> PathBuf {
        let inside = self.dir.strip_prefix("/").unwrap().join(rel);
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(inside)
    }

    /// `runstream` inside the namespace.
    fn runstream(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(env!("CARGO_BIN_EXE_runstream"))
            .env_remove("RUNSTREAM_TOKEN")
            .env("RUST_LOG", "info");
        cmd
    }

    /// Fills what is left of the disk.
    fn fill(&self) {
        let mut filler = fs::File::create(self.path("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        fs::remove_file(self.path("filler")).unwrap();
    }

    /// A server on `data` (on this disk), with `--allow-commands`.
    fn server(&self, cwd: &Path) -> Server {
        let data = self.dir.join("data");
        let args = [
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--allow-commands",
        ];
        let mut proc = Proc::spawn_with(cwd, &args, self.runstream());
        let addr = proc.listening();
        Server {
            proc,
            port: addr.port(),
            agent: ureq::AgentBuilder::new().timeout(PATIENCE).build(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A [`SmallDisk`] under `dir`, or `None` after printing why `what` is skipped.
fn small_disk(dir: &Path, what: &str) -> Option<SmallDisk> {
    SmallDisk::mount(&dir.join("disk"))
        .map_err(|why| println!("SKIPPED {what}: {why}"))
        .ok()
}

/// A run that prints `start`, waits for `DIR/g1` (the test fills the disk before), prints
/// 300 lines, then ticks every 50 ms until `DIR/g2` exists, and prints `done`.
fn outage_script(dir: &Path) -> String {
    format!(
        "echo start; while [ ! -e {g1} ]; do sleep 0.01; done; \
         i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; \
         while [ ! -e {g2} ]; do echo tick; sleep 0.05; done; echo done",
        g1 = dir.join("g1").display(),
        g2 = dir.join("g2").display()
    )
}

/// Messages of the system entries in `logs`.
fn system_messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .filter(|e| e["stream"] == "system")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_full_disk_is_said_in_the_run_retried_when_space_returns_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(dir.path(), "full disk test") else {
        return;
    };
    let gate = |name: &str| dir.path().join(name);
    let mut server = disk.server(dir.path());
    let script = outage_script(dir.path());
    let (code, run) = server.post("/api/runs", json!({"argv": ["sh", "-c", script]}));
    assert_eq!(code, 202, "{run}");
    let r1 = run["run_id"].as_str().unwrap().to_string();
    let mut sse = server.stream(&r1);
    sse.wait_for("start", |e| e.is_log("start"));
    disk.fill();

    // A run that cannot be recorded is refused, and leaves nothing behind.
    let (code, refused) = server.post("/api/runs", json!({"argv": ["true"]}));
    assert_eq!(code, 507, "{refused}");
    assert_eq!(refused["error_code"], "INSUFFICIENT_STORAGE", "{refused}");
    let files: Vec<String> = fs::read_dir(disk.path("data/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 3, "R1's log and status, the lock: {files:?}");

    // The failed write is said in the run; live readers get every line.
    fs::write(gate("g1"), "").unwrap();
    let mut lines = Vec::new();
    let failed = loop {
        let e = sse.next_event().expect("the stream ended");
        if e.event != "log" {
            continue;
        }
        let entry = e.json();
        if entry["stream"] == "system" {
            break entry;
        }
        if entry["message"] != "tick" {
            lines.push(entry["message"].as_str().unwrap().to_string());
        }
    };
    assert_eq!(failed["level"], "ERROR", "{failed}");
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains("cannot write the run's log"), "{message}");
    let status = server.run(&r1);
    assert_eq!(status["log_complete"], false, "{status}");
    let missing_from = status["log_missing_from"]
        .as_u64()
        .expect("first missing seq");
    let health = server.get("/api/health");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["data_dir"]["writable"], false, "{health}");

    // Space returns: the log is written again, from memory, with nothing missing.
    disk.free();
    poll(PATIENCE, "the log to be written again", || {
        (server.run(&r1)["log_complete"] == true).then_some(())
    });
    assert_eq!(server.run(&r1)["log_missing_from"], Value::Null);
    let health = poll(PATIENCE, "health to recover", || {
        let health = server.get("/api/health");
        (health["status"] == "healthy").then_some(health)
    });
    assert_eq!(health["data_dir"]["writable"], true, "{health}");
    fs::write(gate("g2"), "").unwrap();
    let done = server.wait_finished(&r1, PATIENCE);
    assert_eq!(done["status"], "completed", "{done}");
    while let Some(e) = sse.next_event() {
        if e.event == "log" && !e.is_log("tick") && e.json()["stream"] == "stdout" {
            lines.push(e.json()["message"].as_str().unwrap().to_string());
        }
    }
    // ("start" came before.)
    let mut want: Vec<String> = (0..300).map(|i| format!("line-{i}")).collect();
    want.push("done".into());
    assert_eq!(lines, want, "live readers lose nothing");
    let log = fs::read_to_string(disk.path(&format!("data/runs/{r1}.jsonl"))).unwrap();
    let seqs: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "no hole");
    assert!(seqs.len() as u64 > missing_from + 300 - missing_from.min(300));
    assert!(
        log.contains("is written again"),
        "the log says it came back"
    );

    // R2 ends while the disk is full (more output than the log's last block has room
    // for): its final status still reaches the disk.
    let script = format!(
        "echo start2; while [ ! -e {g3} ]; do sleep 0.01; done; \
         i=0; while [ $i -lt 200 ]; do echo end-$i; i=$((i+1)); done",
        g3 = gate("g3").display()
    );
    let (code, run) = server.post("/api/runs", json!({"argv": ["sh", "-c", script]}));
    assert_eq!(code, 202, "{run}");
    let r2 = run["run_id"].as_str().unwrap().to_string();
    let mut sse = server.stream(&r2);
    sse.wait_for("start2", |e| e.is_log("start2"));
    disk.fill();
    fs::write(gate("g3"), "").unwrap();
    let done = server.wait_finished(&r2, PATIENCE);
    assert_eq!(done["status"], "completed", "{done}");
    let saved = read_json(&disk.path(&format!("data/runs/{r2}.json")));
    assert_eq!(saved["status"], "completed", "written in place: {saved}");
    assert_eq!(saved["log_complete"], false, "{saved}");

    // Shut down on the full disk, restart with room: both runs are as they ended.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    drop(server);
    disk.free();
    let server = disk.server(dir.path());
    let run = server.run(&r1);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["log_complete"], true, "{run}");
    let logs = server.get(&format!("/api/runs/{r1}/logs?tail=100000"));
    assert_eq!(
        logs["logs"].as_array().unwrap().len() as u64,
        logs["total_lines"].as_u64().unwrap()
    );
    let run = server.run(&r2);
    assert_eq!(run["status"], "completed", "not lost: {run}");
    let logs = server.logs(&r2);
    assert!(logs.iter().any(|e| e["message"] == "start2"), "{logs:?}");
    assert!(
        !system_messages(&logs)
            .iter()
            .any(|m| m.contains(LOST_RUN_MESSAGE)),
        "{logs:?}"
    );
}

#[test]
fn entries_that_left_memory_while_the_disk_was_full_are_a_gap_in_the_log() {
    use runstream::{Engine, EngineConfig, Event, From, RunState};
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(dir.path(), "full disk gap test") else {
        return;
    };
    let gate = |name: &str| dir.path().join(name);
    // The engine reaches the tmpfs through /proc/HOLDER/root; a ring of 50 lines.
    let engine = Engine::new(EngineConfig {
        ring_max_entries: 50,
        log_dir: Some(disk.path("runs")),
        ..EngineConfig::default()
    });
    let script = outage_script(dir.path());
    let run = engine.submit(crate::util::sh(&script)).unwrap();
    crate::util::wait_for_entry(&run, |e| e.message == "start");
    disk.fill();
    fs::write(gate("g1"), "").unwrap();
    crate::util::wait_for_entry(&run, |e| e.message.contains("cannot write the run's log"));
    // The 300 lines are out of the 50-line ring before the disk has room again.
    crate::util::wait_for_entry(&run, |e| e.message == "tick");
    disk.free();
    let resumed =
        crate::util::wait_for_entry(&run, |e| e.message.contains("is written again from seq"));
    assert_eq!(resumed.level, runstream::Level::Warning);
    fs::write(gate("g2"), "").unwrap();
    let status = run.wait();
    assert_eq!(status.status, RunState::Completed);
    assert_eq!(status.log_complete, Some(false));
    let missing = status.log_missing_from.expect("the first missing seq");

    // From the start: the log up to the failure, a gap, the log again from the resume.
    let mut seqs = Vec::new();
    let mut gaps = Vec::new();
    for event in run.subscribe(From::Start) {
        match event {
            Event::Entry(e) => seqs.push(e.seq),
            Event::Gap { from_seq, to_seq } => gaps.push((from_seq, to_seq)),
            _ => {}
        }
    }
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (from, to) = gaps[0];
    assert_eq!(from, missing);
    let mut want: Vec<u64> = (0..from).collect();
    want.extend(to + 1..status.total_entries.unwrap());
    assert_eq!(seqs, want);
    assert!(
        resumed.message.contains(&format!("from seq {}", to + 1)),
        "{}",
        resumed.message
    );
}

#[test]
fn a_quiet_run_gets_its_log_written_when_the_disk_has_room_again() {
    use runstream::{Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(dir.path(), "quiet run full disk test") else {
        return;
    };
    let engine = Engine::new(EngineConfig {
        log_dir: Some(disk.path("runs")),
        ..EngineConfig::default()
    });
    let gate = |name: &str| dir.path().join(name);
    // 300 lines once the disk is full, then nothing until the end.
    let script = format!(
        "echo start; while [ ! -e {g1} ]; do sleep 0.01; done; \
         i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; \
         while [ ! -e {g2} ]; do sleep 0.01; done",
        g1 = gate("g1").display(),
        g2 = gate("g2").display()
    );
    let run = engine.submit(crate::util::sh(&script)).unwrap();
    crate::util::wait_for_entry(&run, |e| e.message == "start");
    disk.fill();
    fs::write(gate("g1"), "").unwrap();
    crate::util::wait_for_entry(&run, |e| e.message.contains("cannot write the run's log"));
    assert_eq!(run.status().log_complete, Some(false));
    disk.free();
    // No output comes, yet the log is completed from memory.
    poll(PATIENCE, "the quiet run's log to be written again", || {
        (run.status().log_complete == Some(true)).then_some(())
    });
    let log = fs::read_to_string(disk.path(&format!("runs/{}.jsonl", run.id()))).unwrap();
    assert!(log.contains("\"line-299\""), "{log}");
    fs::write(gate("g2"), "").unwrap();
    assert_eq!(run.wait().log_complete, Some(true));
}
