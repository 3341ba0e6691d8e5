//! Regressions from the second outside battery (issue 16), through the library API:
//! deadlines that cannot overflow, and spawn errors that say what is missing.

use std::time::Duration;

use runstream::{RunSpec, RunState};

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
