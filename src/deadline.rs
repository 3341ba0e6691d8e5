//! Deadlines that cannot overflow: `Instant + Duration` panics when the sum is past what
//! an `Instant` holds, and timeouts and grace periods come from users (a catalogue's
//! `timeout_seconds: 1e19`, `RunSpec::timeout(Duration::MAX)`).

use std::time::{Duration, Instant};

/// A deadline so far away that it never comes: about 30 years.
const NEVER: Duration = Duration::from_secs(1_000_000_000);

/// `now + d`, or, when that cannot be represented, a deadline that never comes. Either way
/// the caller keeps a real deadline, so "a deadline is set" stays true (a grace period
/// too long to end still means SIGKILL is due, not that nothing is left to stop).
pub(crate) fn after(d: Duration) -> Instant {
    later(Instant::now(), d)
}

/// `from + d`, saturating as [`after`] does.
pub(crate) fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(NEVER))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_give_far_deadlines_not_panics() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) >= later(now, NEVER));
        assert!(later(now, Duration::from_secs_f64(1e19)) > now + Duration::from_secs(1 << 29));
        assert_eq!(
            later(now, Duration::from_secs(2)),
            now + Duration::from_secs(2)
        );
        let _ = after(Duration::MAX);
    }
}
