//! Killing `runstream serve` (SIGKILL) right after a POST must not leave children that
//! crash recovery cannot find (issue 16, item 5): after a restart on the same data dir, no
//! process of those runs is left, with cgroups and with process groups only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::PATIENCE;

/// `runstream serve --allow-commands` on a free port; returns the child and the port.
fn serve(data: &Path, extra: &[&str]) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runstream"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--allow-commands",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .env_remove("RUNSTREAM_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `listening on` line: {line:?}"));
    (child, port)
}

/// Sends `POST /api/runs` for a `sleep 1000` marked with `ORPHAN_TEST=tag`; returns the
/// connection, to read the answer from.
fn post_sleep(port: u16, tag: &str) -> TcpStream {
    let body =
        format!(r#"{{"argv": ["sh", "-c", "sleep 1000; :"], "env": {{"ORPHAN_TEST": "{tag}"}}}}"#);
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        socket,
        "POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    socket
}

/// Live processes whose environment has `ORPHAN_TEST=tag`.
fn marked(tag: &str) -> Vec<u32> {
    let wanted = format!("ORPHAN_TEST={tag}").into_bytes();
    live_processes_where("environ", |env| {
        env.split(|&b| b == 0).any(|v| v == wanted.as_slice())
    })
}

/// Live processes whose `/proc/PID/{file}` passes `test`.
fn live_processes_where(file: &str, test: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| crate::util::is_alive(*pid))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|c| test(&c)))
        .collect()
}

fn kill_all(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill(2) on processes this test's runs started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

fn no_orphans_after_kill_9_right_after_posts(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    for _round in 0..8 {
        let (mut server, port) = serve(&data, extra);
        let mut sockets: Vec<TcpStream> = (0..3).map(|_| post_sleep(port, &tag)).collect();
        // The first answer's first byte: the run exists; its child may be just spawning.
        let mut byte = [0u8; 1];
        let _ = sockets[0].read(&mut byte);
        server.kill().unwrap();
        server.wait().unwrap();
        drop(sockets);
    }
    // Recovery on restart finds every run's processes, whenever the kill came.
    let (mut server, _port) = serve(&data, extra);
    let deadline = Instant::now() + PATIENCE;
    let mut left = marked(&tag);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = marked(&tag);
    }
    kill_all(&left);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(left.is_empty(), "children left running: {left:?}");
    // Nor children that never ran their program: forks of a killed server, held at the
    // spawn gate, go away by themselves (their command line is the server's).
    let data = data.to_str().unwrap().to_string();
    let deadline = Instant::now() + PATIENCE;
    let mut forks = with_command_line(&data);
    while !forks.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        forks = with_command_line(&data);
    }
    kill_all(&forks);
    assert!(forks.is_empty(), "forks of the server left: {forks:?}");
}

/// Live processes whose command line contains `text`.
fn with_command_line(text: &str) -> Vec<u32> {
    live_processes_where("cmdline", |c| String::from_utf8_lossy(c).contains(text))
}

#[test]
fn issue16_no_child_is_left_after_kill_9_right_after_posts_with_cgroups() {
    no_orphans_after_kill_9_right_after_posts(&[]);
}

#[test]
fn issue16_no_child_is_left_after_kill_9_right_after_posts_with_process_groups() {
    no_orphans_after_kill_9_right_after_posts(&["--no-cgroups"]);
}

/// GET `path` on the server at `port`; the JSON answer.
fn get_json(port: u16, path: &str) -> serde_json::Value {
    ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

#[test]
fn issue10_crash_recovery_kills_what_is_left_in_a_lost_runs_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pidfile = dir.path().join("escapee.pid");
    let (mut server, port) = serve(&data, &[]);
    let health = get_json(port, "/api/health");
    if health["containment"]["kind"] != "cgroup" {
        server.kill().unwrap();
        server.wait().unwrap();
        println!(
            "SKIPPED issue10_crash_recovery_kills_what_is_left_in_a_lost_runs_cgroup: {}",
            health["containment"]
        );
        return;
    }
    // The escapee leaves the group and clears its environment: neither the process group
    // nor the RUNSTREAM_RUN_ID marker can find it after a crash; the cgroup can.
    let script = format!(
        "setsid env -i sh -c 'echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 1000' \
         >/dev/null 2>&1 & sleep 1000",
        p = pidfile.display()
    );
    let body = serde_json::json!({ "argv": ["sh", "-c", script] }).to_string();
    let answer = ureq::post(&format!("http://127.0.0.1:{port}/api/runs"))
        .set("Content-Type", "application/json")
        .send_string(&body)
        .unwrap();
    assert_eq!(answer.status(), 202);
    let deadline = Instant::now() + PATIENCE;
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "the escapee did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let escapee: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(crate::util::is_alive(escapee), "a crash leaves it running");
    let (mut server, _) = serve(&data, &[]);
    let deadline = Instant::now() + PATIENCE;
    while crate::util::is_alive(escapee) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = crate::util::is_alive(escapee);
    if survived {
        kill_all(&[escapee]);
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        !survived,
        "recovery killed the escapee through the lost run's cgroup"
    );
}

#[test]
fn issue10_health_says_which_containment_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, port) = serve(&data, &["--no-cgroups"]);
    let off = get_json(port, "/api/health")["containment"].clone();
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(off["kind"], "process_group", "{off}");
    assert!(
        off["reason"].as_str().unwrap().contains("turned off"),
        "{off}"
    );
    let (mut server, port) = serve(&data, &[]);
    let on = get_json(port, "/api/health")["containment"].clone();
    server.kill().unwrap();
    server.wait().unwrap();
    match on["kind"].as_str().unwrap() {
        "cgroup" => assert!(
            on["cgroup_dir"].is_string() && on["reason"].is_null(),
            "{on}"
        ),
        "process_group" => assert!(on["reason"].is_string(), "{on}"),
        other => panic!("unknown containment {other}: {on}"),
    }
}
