//! Regressions from the second outside battery (issue 16), through the library API:
//! deadlines that cannot overflow, and spawn errors that say what is missing.

use std::time::Duration;

use runstream::{RunSpec, RunState, SpawnErrorKind};

use crate::util::*;

/// Issue 16.6: a timeout or grace period too large for an `Instant` (`1e19` s from a
/// catalogue) overflowed a deadline: the run ended `failed: internal error … overflow`
/// while its child kept running, and a cancel with such a grace ended `failed`. Now such
/// a deadline never comes: the run is cancelled by SIGTERM and its child is gone.
#[test]
fn huge_timeouts_and_grace_periods_neither_panic_nor_leak_the_child() {
    let engine = engine();
    for (timeout, grace) in [
        (Duration::MAX, Duration::from_secs(5)),
        (Duration::from_secs_f64(1e19), Duration::MAX),
        (Duration::ZERO, Duration::from_secs_f64(1e19)),
    ] {
        let run = engine
            .submit(
                RunSpec::new("sleep")
                    .arg("100")
                    .timeout(timeout)
                    .grace(grace),
            )
            .unwrap();
        let pid = wait_running(&run);
        assert_eq!(run.status().status, RunState::Running);
        run.cancel();
        let status = run.wait_timeout(PATIENCE).expect("the cancelled run ends");
        assert_eq!(status.status, RunState::Cancelled, "{status:?}");
        assert_eq!(status.signal, Some(libc::SIGTERM));
        assert!(!is_alive(pid), "the child outlived its run");
    }
    // Waiting "for ever" through the public API is no panic either.
    let run = engine.submit(RunSpec::new("true")).unwrap();
    assert!(run.wait_timeout(Duration::MAX).is_some());
}

/// Writes an executable script `name` with `text` into `dir`.
pub fn script(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Issue 16.8: `exec` says ENOENT when a script's `#!` interpreter is missing, and the run
/// said "program not found: <the script, which exists>". Now the kind says the
/// interpreter, and the message names it, with a CRLF line's `\r` shown.
#[test]
fn a_missing_interpreter_is_named_and_its_kind_kept_in_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let crlf = script(dir.path(), "crlf.sh", "#!/bin/sh\r\necho hi\r\n");
    let status = engine.submit(RunSpec::new(&crlf)).unwrap().wait();
    assert_eq!(status.status, RunState::Failed);
    assert_eq!(
        status.spawn_error,
        Some(SpawnErrorKind::InterpreterNotFound)
    );
    let message = status.error_message.unwrap();
    assert!(message.contains(r#""/bin/sh\r""#), "{message}");
    assert!(!message.contains("program not found"), "{message}");
    script(dir.path(), "py.sh", "#!/no/such/python3 -u\nprint(1)\n");
    let status = engine
        .submit(RunSpec::new("./py.sh").cwd(dir.path()))
        .unwrap()
        .wait();
    assert_eq!(
        status.spawn_error,
        Some(SpawnErrorKind::InterpreterNotFound)
    );
    assert!(status.error_message.unwrap().contains("/no/such/python3"));
    // The other kinds.
    let kind = |spec: RunSpec| engine.submit(spec).unwrap().wait().spawn_error;
    assert_eq!(
        kind(RunSpec::new("no-such-program-xyz")),
        Some(SpawnErrorKind::NotFound)
    );
    assert_eq!(
        kind(RunSpec::new("true").cwd("/no/such/dir")),
        Some(SpawnErrorKind::BadCwd)
    );
    let not_executable = dir.path().join("plain.txt");
    std::fs::write(&not_executable, "echo hi\n").unwrap();
    assert_eq!(
        kind(RunSpec::new(&not_executable)),
        Some(SpawnErrorKind::PermissionDenied)
    );
    assert_eq!(kind(RunSpec::new("true")), None);
}

/// The sibling of 16.8: `exec` says EACCES when a script's `#!` line names something that
/// cannot be executed (a directory, a file without the x bit), and the run said
/// "permission denied executing <the script>", which is executable: chmod did not help.
/// The message names the interpreter; the kind stays `permission_denied` (exit 126).
#[test]
fn an_interpreter_that_cannot_be_executed_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "not a program\n").unwrap();
    for interpreter in [dir.path().to_path_buf(), data] {
        let shown = interpreter.display().to_string();
        let path = script(dir.path(), "s.sh", &format!("#!{shown}\necho hi\n"));
        let status = engine.submit(RunSpec::new(&path)).unwrap().wait();
        assert_eq!(status.status, RunState::Failed);
        assert_eq!(status.spawn_error, Some(SpawnErrorKind::PermissionDenied));
        let message = status.error_message.unwrap();
        assert!(message.contains(&format!("{shown:?}")), "{message}");
        assert!(message.contains("#! line"), "{message}");
    }
}

/// The in-process server that
/// `a_signal_during_a_request_body_read_does_not_drop_the_connection` drives, in a
/// process of its own (that test signals every thread of it). A no-op unless
/// `RUNSTREAM_EINTR_HELPER` is set: it then installs a SIGUSR1 handler (with SA_RESTART),
/// prints `listening ADDR` and serves until its stdin closes.
#[test]
fn eintr_helper_server() {
    use std::io::BufRead;
    use std::sync::Arc;

    use runstream::server::{Catalogue, Server, ServerConfig};
    use runstream::{Engine, EngineConfig};

    if std::env::var_os("RUNSTREAM_EINTR_HELPER").is_none() {
        return;
    }
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, installed before any server thread exists.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let server = Server::start(
        engine,
        Catalogue::default(),
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    println!("listening {}", server.addr());
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    server.shutdown(Duration::from_secs(1));
}

/// Found while looking for the connection closed with no response (issue 16): tiny_http
/// reads a small request body before handing the request on, and a read on a socket that
/// has a read timeout (every connection has one) fails with EINTR whenever a signal
/// handler runs on that thread, SA_RESTART or not (signal(7)). The read was not retried:
/// the connection was closed with no answer and no log line. Any handled signal (the
/// catalogue reload's SIGHUP among them) could do it to a request in flight.
///
/// Deterministic: the body is held back while every thread of the server's process gets
/// SIGUSR1 a hundred times, so the thread waiting for it is interrupted for sure; the
/// answer must still come once the body is sent.
#[test]
fn a_signal_during_a_request_body_read_does_not_drop_the_connection() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};

    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reliability::eintr_helper_server", "--nocapture"])
        .env("RUNSTREAM_EINTR_HELPER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = helper.id();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let addr = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening ").map(str::to_string))
        .expect("the helper server starts");
    let mut stream = std::net::TcpStream::connect(addr.as_str()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(
            b"POST /api/modules/nope/run HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
    for _ in 0..100 {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let tid: libc::pid_t = task.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: tgkill(2) to a thread of the helper this test started.
            unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::pid_t, tid, libc::SIGUSR1) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stream.write_all(b"{}").unwrap();
    let mut head = [0u8; 12];
    let answered = stream.read_exact(&mut head);
    drop(helper.stdin.take()); // the helper stops
    let _ = helper.wait();
    answered.expect("an answer, not a closed connection");
    assert_eq!(&head, b"HTTP/1.1 404");
}

/// The "also seen" of issue 16: under bursts of 8 concurrent POSTs, about one connection
/// in 3 000–10 000 was said to be closed with no answer. Bounded in count: 8 clients each
/// send 400 POSTs, each on a fresh connection (as curl does), and every one must get a
/// whole answer. (Starting runs costs a process each; the module here is unknown, so the
/// request goes the whole way through the HTTP layer and the handler, body read included,
/// and gets a 404.)
#[test]
fn eight_concurrent_clients_posting_all_get_an_answer() {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use runstream::server::{Catalogue, Server, ServerConfig};
    use runstream::{Engine, EngineConfig};

    let server = Server::start(
        Arc::new(Engine::new(EngineConfig::default())),
        Catalogue::default(),
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addr = server.addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let request = b"POST /api/modules/nope/run HTTP/1.1\r\nHost: localhost\r\n\
                    Content-Type: application/json\r\nContent-Length: 18\r\n\r\n\
                    {\"parameters\": {}}";
                for i in 0..400 {
                    let mut stream = std::net::TcpStream::connect(addr).unwrap();
                    stream.set_read_timeout(Some(PATIENCE)).unwrap();
                    stream.write_all(request).unwrap();
                    let mut answer = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Until the whole JSON body is in (the connection stays open).
                    while !answer.ends_with(b"}") {
                        match stream.read(&mut buf) {
                            Ok(0) => panic!("request {i}: closed after {answer:?}"),
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                            Err(e) => panic!("request {i}: {e} after {answer:?}"),
                        }
                    }
                    assert!(answer.starts_with(b"HTTP/1.1 404"), "{answer:?}");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    server.shutdown(Duration::from_secs(1));
}
