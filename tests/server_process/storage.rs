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
