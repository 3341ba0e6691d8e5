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
