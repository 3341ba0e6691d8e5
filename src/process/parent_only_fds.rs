//! Descriptors that only this process may hold, closed in every child between fork and exec.
//!
//! A data directory's lock is an `flock(2)`, which belongs to the open file description: a
//! fork shares it until the fork execs (the descriptor is close-on-exec) or exits. A child
//! held at the spawn gate (`spawn_gate.rs`) can wait there for a while, and when the server
//! is killed meanwhile, that child kept the lock alive, so the restarted server refused to
//! start ("held by" the dead server's fork). Closing the descriptor in the child releases
//! nothing (the parent still holds it) and leaves the lock to the parent alone.

use std::os::fd::RawFd;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// Room for a server's data-dir lock and a few more; registering past it only logs.
const SLOTS: usize = 8;
const EMPTY: RawFd = -1;

static FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(EMPTY) }; SLOTS];

/// Marks `fd` as this process's alone: children close it before they run anything.
pub fn close_in_children(fd: RawFd) {
    let free = FDS.iter().find(|slot| {
        slot.compare_exchange(EMPTY, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    if free.is_none() {
        log::warn!("more than {SLOTS} descriptors to keep from children; {fd} is not");
    }
}

/// Undoes [`close_in_children`], before `fd` is closed (its number may be reused).
pub fn forget(fd: RawFd) {
    for slot in &FDS {
        let _ = slot.compare_exchange(fd, EMPTY, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Adds the pre-exec hook that closes the registered descriptors. Call it before any other
/// hook, so that a child waiting in a later one does not hold them.
pub(crate) fn close_before_exec(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only atomic loads and close(2), both async-signal-safe, run in the child.
    unsafe {
        command.pre_exec(|| {
            for slot in &FDS {
                let fd = slot.load(Ordering::SeqCst);
                if fd != EMPTY {
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
}
