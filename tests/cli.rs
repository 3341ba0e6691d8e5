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
