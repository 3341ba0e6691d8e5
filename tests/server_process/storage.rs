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
