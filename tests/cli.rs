//! `runstream run`: the real binary, its output, exit statuses and signal handling.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::util::*;

fn runstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runstream"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = runstream().arg("run").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_goes_to_the_matching_stream_and_the_exit_code_passes_through() {
    let (code, out, err) = run(&[
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; printf 'a\\rb\\n'; exit 3",
    ]);
    assert_eq!(code, 3);
    assert_eq!(out, "out\na\rb\n");
    assert!(err.starts_with("err\n"), "{err}");
    assert!(err.contains("runstream: exited with code 3"), "{err}");
}

#[test]
fn json_prints_every_entry_as_one_line() {
    let (code, out, _) = run(&["--json", "--", "sh", "-c", "echo hello; echo oops >&2"]);
    assert_eq!(code, 0);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries[0]["seq"], 0);
    let find = |m: &str| entries.iter().find(|e| e["message"] == m).unwrap().clone();
    assert_eq!(find("hello")["stream"], "stdout");
    assert_eq!(find("oops")["stream"], "stderr");
    assert_eq!(find("oops")["level"], "ERROR");
    assert_eq!(find("exited with code 0")["stream"], "system");
    for key in ["seq", "timestamp", "stream", "level", "message", "end"] {
        assert!(entries[0].get(key).is_some(), "missing {key}");
    }
}

#[test]
fn exit_statuses_follow_coreutils_conventions() {
    assert_eq!(run(&["--", "sh", "-c", "kill -9 $$"]).0, 128 + 9);
    assert_eq!(run(&["--timeout", "200ms", "--", "sleep", "100"]).0, 124);
    assert_eq!(run(&["--", "no-such-program-xyz"]).0, 127);
    let (code, _, err) = run(&["--bogus"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown option --bogus") && err.contains("usage:"),
        "{err}"
    );
    assert_eq!(run(&["--timeout", "soon", "--", "true"]).0, 2);
    assert_eq!(run(&[]).0, 2);
}

#[test]
fn cwd_and_env_reach_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(&[
        "--cwd",
        dir.path().to_str().unwrap(),
        "--env",
        "GREETING=hi there",
        "--",
        "sh",
        "-c",
        "pwd; echo $GREETING",
    ]);
    assert_eq!(code, 0);
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(out, format!("{}\nhi there\n", canonical.display()));
}

/// Starts `runstream run` on a script that prints its pid then "ready"; returns the
/// runstream child process, the script's pid, and the stdout reader.
fn start_ready(
    args: &[&str],
    script: &str,
) -> (
    std::process::Child,
    u32,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = runstream()
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let pid: u32 = line.trim().parse().unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, pid, stdout)
}

#[test]
fn sigterm_stops_the_command_gracefully_with_exit_130() {
    let (mut child, pgid, _out) = start_ready(&[], "echo $$; sleep 100 & echo ready; wait");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        live_group_members(pgid).is_empty(),
        "the whole group is gone"
    );
}

#[test]
fn a_second_signal_kills_at_once() {
    let (mut child, pgid, _out) = start_ready(
        &["--grace", "1h"],
        "echo $$; trap '' TERM INT; echo ready; while :; do sleep 1; done",
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("stopping"), "{line}");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(live_group_members(pgid).is_empty());
}

#[test]
fn a_slow_reader_of_the_output_loses_nothing() {
    let child = runstream()
        .args(["run", "--", "seq", "1", "200000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read nothing for a while: the pipe fills, the printer blocks, the ring (10 000
    // entries) moves on. The child is not held back; the printer catches up from the log.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 200_000);
    assert_eq!(text.lines().last(), Some("200000"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_closed_stdout_stops_the_run_like_sigpipe() {
    let mut child = runstream()
        .args(["run", "--", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"y\ny\n");
    drop(stdout); // like `| head -2`
    assert_eq!(child.wait().unwrap().code(), Some(141));
}

#[test]
fn an_unusable_log_dir_is_refused_before_the_command_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let marker = dir.path().join("marker");
    let log_dir = file.join("logs"); // under a regular file: cannot be created
    let (code, out, err) = run(&[
        "--log-dir",
        log_dir.to_str().unwrap(),
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "runstream: cannot use --log-dir {}: Not a directory (os error 20)\n",
            log_dir.display()
        )
    );
    assert!(!marker.exists(), "the command must not have run");

    // A usable one is created, keeps the log, and holds nothing else (the probe is gone).
    let log_dir = dir.path().join("new/logs");
    let (code, _, err) = run(&["--log-dir", log_dir.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".jsonl")), "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with(".runstream-probe")),
        "{names:?}"
    );
}

#[test]
fn a_zero_timeout_means_no_timeout() {
    for zero in ["0", "0s", "0ms"] {
        let (code, _, err) = run(&["--timeout", zero, "--", "sh", "-c", "exit 3"]);
        assert_eq!(code, 3, "--timeout {zero}: {err}");
        assert!(!err.contains("timed out"), "{err}");
    }
}

#[test]
fn stdin_is_dev_null_so_piped_data_never_reaches_the_command() {
    let (reader, mut writer) = os_pipe::pipe().unwrap();
    std::io::Write::write_all(&mut writer, b"hello\n").unwrap();
    drop(writer); // the data is in the pipe, then end of file
    let out = runstream()
        .args(["run", "--", "cat"])
        .stdin(reader)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let (_, help, _) = run(&["--help"]);
    assert!(help.contains("stdin is /dev/null"), "{help}");
}

/// `runstream run -- sh -c 'touch MARKER; echo hi'` with the given stdout; returns the exit
/// code, stderr, and whether the command ran.
fn run_with_stdout(stdout: Stdio, close_fd_1: bool) -> (i32, String, bool) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let mut command = runstream();
    command
        .args(["run", "--", "sh", "-c", "touch \"$1\"; echo hi", "sh"])
        .arg(&marker)
        .stdout(stdout)
        .stderr(Stdio::piped());
    if close_fd_1 {
        // SAFETY: close() is async-signal-safe; fd 1 is the child's own copy.
        unsafe {
            command.pre_exec(|| {
                libc::close(1);
                Ok(())
            });
        }
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        marker.exists(),
    )
}

#[test]
#[cfg(target_os = "linux")] // elsewhere a closed fd 1 is /dev/null before runstream can see it
fn a_closed_stdout_is_refused_before_the_command_starts() {
    let (code, err, ran) = run_with_stdout(Stdio::inherit(), true);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "runstream: cannot write to stdout: Bad file descriptor (os error 9)\n"
    );
    assert!(!ran, "the command must not have run");
}

#[test]
fn a_read_only_stdout_is_refused_before_the_command_starts() {
    let read_only = std::fs::File::open("/dev/null").unwrap();
    let (code, err, ran) = run_with_stdout(read_only.into(), false);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "runstream: cannot write to stdout: Bad file descriptor (os error 9)\n"
    );
    assert!(!ran, "the command must not have run");
}

#[test]
#[cfg(target_os = "linux")] // /dev/full
fn a_failed_write_to_stdout_stops_the_run_with_exit_1() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = runstream()
        .args(["run", "--", "yes"]) // never ends unless stopped
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("runstream: cannot write to stdout: No space left on device"),
        "{err}"
    );
}

/// Issue 16.8: the exit status comes from the spawn error's kind: a script whose `#!`
/// interpreter is missing was found, so 126 (as a shell says), and stderr names the
/// interpreter; a missing program is 127.
#[test]
fn a_missing_interpreter_exits_126_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let crlf = crate::reliability::script(dir.path(), "crlf.sh", "#!/bin/sh\r\necho hi\r\n");
    let (code, _, err) = run(&["--", crlf.to_str().unwrap()]);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains(r#""/bin/sh\r""#), "{err}");
    assert_eq!(run(&["--", "no-such-program-xyz"]).0, 127);
}

/// Issue 16.9: `runstream run -- sleep 71 & kill -HUP $!` left `sleep` running with ppid
/// 1 (closing the terminal does this): the command sits in its own process group, which
/// a hangup never reaches, and runstream died of it. SIGHUP now stops the command as
/// SIGTERM does, and runstream exits 129.
#[test]
fn sighup_stops_the_command_gracefully_with_exit_129() {
    let (mut child, pgid, _out) = start_ready(&[], "echo $$; sleep 71 & echo ready; wait");
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(129), "{status:?}");
    assert!(
        live_group_members(pgid).is_empty(),
        "the whole group is gone"
    );
}
