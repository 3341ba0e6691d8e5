//! Orphans: what tini and dumb-init do for a container, for runstream's own binaries.
//!
//! When a process's parent exits, the kernel gives it to the nearest "child subreaper"
//! among its ancestors, or to PID 1. Whoever gets it must `wait` for it when it exits, or
//! it stays a zombie for as long as that process lives. [`reap_orphans`] makes this
//! process a subreaper (`PR_SET_CHILD_SUBREAPER`; as PID 1 of a container it is one
//! anyway) and starts a thread that reaps every orphan that exits.
//!
//! It reaps only pids it has looked at: zombie children (from
//! `/proc/self/task/*/children`) that are not the leader of a live run. It never calls
//! `waitpid(-1)`, which would take the exit status of a run's leader from the thread that
//! waits for it. Spawning a leader and recording its pid happen under the same lock as a
//! reaping pass, so a leader that exits at once is never mistaken for an orphan.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How often the children are looked at for zombies.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// Pids of run leaders spawned and not yet waited for: never reaped here.
fn leaders() -> MutexGuard<'static, HashSet<u32>> {
    static LEADERS: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    LEADERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Spawns a run's leader with `spawn` and records its pid, both while no reaping pass
/// runs.
pub(crate) fn spawn_leader<T, E>(
    spawn: impl FnOnce() -> Result<T, E>,
    pid: impl Fn(&T) -> u32,
) -> Result<T, E> {
    let mut leaders = leaders();
    let spawned = spawn()?;
    leaders.insert(pid(&spawned));
    Ok(spawned)
}

/// The leader `pid` was waited for: its pid is free for the kernel to reuse.
pub(crate) fn leader_reaped(pid: u32) {
    leaders().remove(&pid);
}

/// Makes this process a child subreaper (Linux) and starts a thread that reaps the orphans
/// given to it — what an init process does. Call it once, early, from a program whose
/// children are all the engine's runs (or that waits for its own children by pid only and
/// does not mind that orphans of the runs become its children): `runstream run` and
/// `runstream serve` do.
///
/// Orphans that are still alive when this process exits go to the next subreaper or to
/// PID 1, as usual.
pub fn reap_orphans() -> std::io::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("runstream-reaper".into())
        .spawn(|| loop {
            reap_once();
            std::thread::sleep(REAP_EVERY);
        })?;
    let _ = STARTED.set(());
    Ok(())
}

/// One pass over this process's children.
fn reap_once() -> usize {
    reap(children())
}

/// Reaps each of `candidates` that is a zombie child and not a run's leader. Returns how
/// many.
fn reap(candidates: Vec<u32>) -> usize {
    let leaders = leaders();
    let mut reaped = 0;
    for pid in candidates {
        if leaders.contains(&pid) || !is_zombie(pid) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on one pid that is our zombie child and no run's leader, with
        // WNOHANG: it returns at once.
        if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) } > 0 {
            reaped += 1;
        }
    }
    reaped
}

/// This process's children, from every thread's `children` file (an orphan goes to one
/// thread of its new parent).
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    super::proc_stat(pid).is_some_and(|s| s.state == b'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaps_a_zombie_child_but_never_a_registered_leader() {
        let spawn = || {
            std::process::Command::new("true")
                .spawn()
                .map_err(|e| e.to_string())
        };
        let mut leader = spawn_leader(spawn, std::process::Child::id).unwrap();
        // Reaped by `reap` below, not by `Child::wait`: that is what is tested.
        #[allow(clippy::zombie_processes)]
        let orphan = spawn().unwrap();
        let wait_zombie = |pid: u32| {
            while !is_zombie(pid) {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_zombie(leader.id());
        wait_zombie(orphan.id());
        // Only these two: other tests of this binary have children of their own.
        assert_eq!(reap(vec![leader.id(), orphan.id()]), 1);
        assert!(
            !is_zombie(orphan.id()),
            "the unregistered zombie was reaped"
        );
        assert!(
            is_zombie(leader.id()),
            "the leader's status is left to its waiter"
        );
        assert!(leader.wait().unwrap().success());
        leader_reaped(leader.id());
    }
}
