//! The engine on every platform, through the `runstream-test-child` helper: capture, exit
//! codes, the graceful stop, timeouts and the queue. The unix-only modules check the same
//! things (and more) with `sh`; these run under Windows too.

use std::time::Duration;

use runstream::{Engine, EngineConfig, LineEnd, RunSpec, RunState, Stream};

use crate::util::*;

#[test]
fn the_helper_child_output_is_captured_with_cr_progress_and_invalid_utf8() {
    let engine = engine();
    let run = engine
        .submit(child(&[
            "out",
            "a\\rb\\rc\\n",
            "err",
            "oops\\n",
            "out",
            "ok\\xff\\xfe end\\n",
            "out",
            "crlf\\r\\n",
            "exit",
            "3",
        ]))
        .unwrap();
    let (entries, status) = collect(&run);
    let out: Vec<_> = entries
        .iter()
        .filter(|e| e.stream == Stream::Stdout)
        .map(|e| (e.message.as_str(), e.end))
        .collect();
    assert_eq!(
        out,
        [
            ("a", LineEnd::Cr),
            ("b", LineEnd::Cr),
            ("c", LineEnd::Lf),
            ("ok\u{fffd}\u{fffd} end", LineEnd::Lf),
            ("crlf", LineEnd::Lf),
        ]
    );
    assert_eq!(texts(&entries, Stream::Stderr), ["oops"]);
    assert_eq!(
        (status.status, status.exit_code, status.signal),
        (RunState::Failed, Some(3), None)
    );
    assert_eq!(status.error_message.as_deref(), Some("oops"));
    assert!(status.pid.is_some());
    let system = texts(&entries, Stream::System);
    assert_eq!(
        system.last().map(String::as_str),
        Some("exited with code 3")
    );
}

#[test]
fn a_graceful_stop_reaches_the_child_within_the_grace_period() {
    let engine = engine();
    let run = engine
        .submit(
            child(&["on-stop", "42", "out", "ready\\n", "sleep", "100000"])
                .grace(Duration::from_secs(2)),
        )
        .unwrap();
    wait_for_entry(&run, |e| e.message == "ready");
    assert!(run.cancel());
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Cancelled);
    let system = texts(&entries, Stream::System);
    let stdout = texts(&entries, Stream::Stdout);
    if system
        .iter()
        .any(|m| m.contains("could not send CTRL_BREAK"))
    {
        // Windows, and runstream shares no console with the child (always so under wine in
        // CI; wine cannot send CTRL_BREAK_EVENT at all, see docs/PLATFORMS.md): what must
        // still happen is the fallback, the job's termination after the grace period.
        eprintln!(
            "{}: CTRL_BREAK could not be sent; checked the fallback: {system:?}",
            if under_wine() { "wine" } else { "windows" }
        );
        assert_eq!((status.exit_code, status.signal), (Some(1), None));
        assert!(
            system
                .iter()
                .any(|m| m.starts_with("grace period ended: terminated the job")),
            "{system:?}"
        );
        return;
    }
    assert_eq!(stdout, ["ready", "stop requested"]);
    assert_eq!((status.exit_code, status.signal), (Some(42), None));
    assert!(
        !system.iter().any(|m| m.starts_with("grace period ended")),
        "stopped within the grace period: {system:?}"
    );
}

#[test]
fn a_run_timeout_ends_timed_out() {
    let engine = engine();
    let run = engine
        .submit(
            child(&["out", "ready\\n", "sleep", "100000"])
                .timeout(Duration::from_millis(200))
                .grace(Duration::from_millis(500)),
        )
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::TimedOut);
    assert!(status
        .error_message
        .unwrap()
        .contains("timed out after 0.2 s"));
    let system = texts(&entries, Stream::System);
    assert!(
        system
            .iter()
            .any(|m| m.starts_with("timed out after 0.2 s: sent ")
                || m.starts_with("timed out after 0.2 s: could not send ")),
        "{system:?}"
    );
}

#[test]
fn cancel_of_a_queued_helper_run_never_spawns_it() {
    let engine = Engine::new(EngineConfig {
        max_concurrent: 1,
        ..EngineConfig::default()
    });
    let first = engine.submit(child(&["sleep", "100000"])).unwrap();
    wait_running(&first);
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("spawned");
    let queued = engine
        .submit(child(&["touch", touched.to_str().unwrap()]))
        .unwrap();
    assert_eq!(queued.status().status, RunState::Queued);
    assert!(queued.cancel());
    let status = queued.wait();
    assert_eq!(status.status, RunState::Cancelled);
    assert_eq!((status.pid, status.started_at), (None, None));
    first.kill();
    first.wait();
    assert!(!touched.exists(), "the queued run was never spawned");
}

#[test]
fn a_missing_program_fails_with_a_clear_message() {
    let engine = engine();
    let status = engine
        .submit(RunSpec::new("no-such-program-xyz"))
        .unwrap()
        .wait();
    assert_eq!(status.status, RunState::Failed);
    assert_eq!(
        status.error_message.as_deref(),
        Some("program not found: no-such-program-xyz")
    );
}
