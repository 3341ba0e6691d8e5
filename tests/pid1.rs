//! `runstream run` as a container's PID 1 (issue 14): in a new PID namespace
//! (`unshare --pid --fork --mount-proc`) it reaps every orphan reparented to it, stops the
//! command's group gracefully on SIGTERM and exits with the documented status, and its
//! `--json` lines are complete. Prints `SKIPPED …` where `unshare` is not permitted (not
//! root, or user namespaces off).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::util::PATIENCE;

/// `unshare --pid --fork --mount-proc runstream run ARGS…`, or `None` (and a SKIPPED line)
/// where unshare cannot run here.
fn pid1_runstream(test: &str, args: &[&str]) -> Option<Command> {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "SKIPPED {test}: unshare --pid is not permitted here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("SKIPPED {test}: cannot run unshare: {e}");
            return None;
        }
    }
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_runstream"))
        .arg("run")
        .args(args);
    Some(command)
}

#[test]
fn issue14_as_pid_1_it_reaps_every_orphan() {
    // 50 grandchildren orphaned at once (their parent subshells exit at once); when they
    // have all exited, count the zombies left in the namespace, for up to 10 s.
    let script = r#"
        i=0; while [ $i -lt 50 ]; do (sleep 0.05 &); i=$((i+1)); done
        n=0
        while [ $n -lt 500 ]; do
            live=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 == "(sleep)" && $3 != "Z"' | wc -l)
            zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == "Z"' | wc -l)
            [ "$live" -eq 0 ] && [ "$zombies" -eq 0 ] && break
            sleep 0.02; n=$((n+1))
        done
        echo "pid1=$(cat /proc/1/comm) live=$live zombies=$zombies""#;
    let Some(mut command) = pid1_runstream(
        "issue14_as_pid_1_it_reaps_every_orphan",
        &["--", "sh", "-c", script],
    ) else {
        return;
    };
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "pid1=runstream live=0 zombies=0");
}

#[test]
fn issue14_as_pid_1_sigterm_stops_the_group_gracefully_and_the_json_is_complete() {
    let script = "trap 'echo got-term; exit 0' TERM; echo ready; sleep 1000 & wait";
    let Some(mut command) = pid1_runstream(
        "issue14_as_pid_1_sigterm_stops_the_group_gracefully_and_the_json_is_complete",
        &["--json", "--grace", "60s", "--", "sh", "-c", script],
    ) else {
        return;
    };
    let mut unshare = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = unshare.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("\"message\":\"ready\""))
    {
        seen.push(
            lines
                .recv_timeout(PATIENCE)
                .expect("the command said ready"),
        );
    }
    // PID 1 of the namespace is unshare's child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let pid1: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the runstream process this test started (through unshare).
    assert_eq!(unsafe { libc::kill(pid1, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = unshare.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "runstream did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    seen.extend(lines.iter());
    // 130: stopped by the user (README, `runstream run` exit statuses).
    assert_eq!(status.code(), Some(130), "{seen:?}");
    let entries: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "every entry, in order: {seen:?}");
    }
    let messages: Vec<&str> = entries
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"got-term"), "{messages:?}");
    assert_eq!(messages.last(), Some(&"exited with code 0"), "{messages:?}");
}

#[test]
fn issue14_as_a_subreaper_orphans_come_to_runstream_and_are_reaped() {
    // An orphaned grandchild: its new parent is runstream ($PPID of the shell), not init;
    // once it exits, it does not stay a zombie.
    let script = r#"
        (sleep 0.3 & echo $! > "$ORPHAN_FILE")
        orphan=$(cat "$ORPHAN_FILE")
        echo "parent=$(awk '{print $4}' /proc/$orphan/stat) runstream=$PPID"
        n=0
        while [ -e /proc/$orphan ] && [ $n -lt 500 ]; do sleep 0.02; n=$((n+1)); done
        [ -e /proc/$orphan ] && echo "left=$(awk '{print $3}' /proc/$orphan/stat)" || echo reaped"#;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runstream"))
        .args(["run", "--", "sh", "-c", script])
        .env("ORPHAN_FILE", dir.path().join("orphan.pid"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (parent, runstream) = lines[0].split_once(' ').unwrap();
    assert_eq!(
        parent.strip_prefix("parent="),
        runstream.strip_prefix("runstream="),
        "{stdout}"
    );
    assert_eq!(lines[1], "reaped", "{stdout}");
}
