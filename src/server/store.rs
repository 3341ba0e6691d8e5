//! Runs on disk after a restart: finished runs are listed again with their logs; runs that
//! were live when the server died are marked failed and what is left of their process
//! groups is terminated (on unix; on Windows nothing is left, see `terminate_leftovers`).

use std::path::Path;
use std::time::Duration;

#[cfg(unix)]
use crate::process::{self, PipeHolder, ProcessGroup, Signal};
use crate::{Engine, RunState, RunStatus, Timestamp};

/// Error message of a run that was live when the server stopped.
pub const LOST_RUN_MESSAGE: &str = "server stopped while the run was live";

/// Loads every `{run_id}.json` under `dir` into `engine`, oldest first. Returns how many
/// runs were loaded and how many of them had been live.
pub fn recover(engine: &Engine, dir: &Path, grace: Duration) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut statuses: Vec<RunStatus> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            match serde_json::from_str::<RunStatus>(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!("skipping {}: not a run status ({e})", p.display());
                    None
                }
            }
        })
        .collect();
    statuses.sort_by_key(|s| s.created_at);
    let mut lost = 0;
    for mut status in statuses {
        if !status.status.is_finished() {
            lost += 1;
            terminate_leftovers(&status, grace);
            let log = dir.join(format!("{}.jsonl", status.run_id));
            // Said in the run's own log too, so whoever reads it learns why it ends.
            let note = format!(
                "{LOST_RUN_MESSAGE}: marked failed when the server started again (what was \
                 left of process group {} was terminated)",
                status.pid.map_or("?".to_string(), |p| p.to_string())
            );
            // It ended some time after its last output, but when is unknown: the last
            // output is the latest moment it is known to have been alive (not the restart,
            // which would count the server's downtime as the run's).
            let last_seen = match crate::logfile::close_after_crash(&log, note) {
                Ok(last) => last,
                Err(e) => {
                    log::warn!("cannot close the log of {}: {e}", status.run_id);
                    None
                }
            };
            status.status = RunState::Failed;
            status.cancelling = false;
            status.error_message = Some(LOST_RUN_MESSAGE.into());
            status.completed_at = Some(
                last_seen
                    .into_iter()
                    .chain(status.started_at)
                    .max()
                    .unwrap_or_else(Timestamp::now),
            );
            status.refresh_duration();
            crate::logfile::save_status(&dir.join(format!("{}.json", status.run_id)), &status);
        }
        let log = dir.join(format!("{}.jsonl", status.run_id));
        let id = status.run_id.clone();
        if let Err(e) = engine.adopt_finished(status, &log) {
            log::warn!("cannot load the log of {id}: {e}");
        }
    }
    (engine.list().len(), lost)
}

/// SIGTERM, then SIGKILL after `grace`, to what is left of a lost run, in the background:
/// every process of its cgroup (Linux, when it had one), its process group, and every
/// process marked with its run id (`RUNSTREAM_RUN_ID` in the environment it started with),
/// which finds them even when the server died before the run's pid reached the disk.
#[cfg(unix)]
fn terminate_leftovers(status: &RunStatus, grace: Duration) {
    #[cfg(target_os = "linux")]
    if let Some(dir) = status.cgroup.clone() {
        let run_id = status.run_id.clone();
        std::thread::spawn(move || {
            match process::stop_lost_cgroup(std::path::Path::new(&dir), grace) {
                Ok(0) => {}
                Ok(n) => log::warn!("run {run_id}: stopped {n} process(es) left in cgroup {dir}"),
                Err(e) => log::warn!("run {run_id}: cannot clean up cgroup {dir}: {e}"),
            }
        });
    }
    let group = lost_group(status);
    let marked = process::marked_processes(crate::run::RUN_ID_VARIABLE, &status.run_id);
    if group.is_none() && marked.is_empty() {
        return;
    }
    log::warn!(
        "run {}: terminating what is left of it: {}{}",
        status.run_id,
        group
            .as_ref()
            .map_or(String::new(), |g| format!("process group {}; ", g.id())),
        process::describe_holders(&marked)
    );
    if let Some(group) = &group {
        let _ = group.signal(Signal::Term);
    }
    for p in &marked {
        p.signal(Signal::Term);
    }
    let run_id = status.run_id.clone();
    std::thread::spawn(move || {
        let alive = || {
            group.as_ref().is_some_and(|g| !g.live_members().is_empty())
                || marked.iter().any(PipeHolder::is_alive)
        };
        let deadline = crate::deadline::after(grace);
        while std::time::Instant::now() < deadline {
            if !alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        log::warn!("run {run_id}: grace period ended, sending SIGKILL to what is left");
        if let Some(group) = &group {
            let _ = group.signal(Signal::Kill);
        }
        for p in &marked {
            p.signal(Signal::Kill);
        }
    });
}

/// A lost run's process group, if something of it is alive and it is still ours. The
/// group is only touched when its leader is gone or is still the very process we started
/// (same start time), and when no member is older than that leader (our leader's
/// descendants all started after it): a reused pid is never signalled. What this cannot
/// tell apart: our group died entirely, its id was reused by a new group whose leader then
/// exited too — possible only after the pid space wrapped around in between, and then
/// only members younger than our leader are at risk.
#[cfg(unix)]
fn lost_group(status: &RunStatus) -> Option<ProcessGroup> {
    let pgid = status.pid?;
    if let Some(leader) = process::proc_stat(pgid) {
        if status.process_start_time != Some(leader.start_time) || leader.pgid != pgid {
            return None; // the pid now belongs to another process
        }
    }
    let group = ProcessGroup::from_id(pgid);
    let members = group.live_members();
    let older_than_leader = |pid: &u32| {
        process::proc_stat(*pid)
            .zip(status.process_start_time)
            .is_some_and(|(stat, leader_start)| stat.start_time < leader_start)
    };
    if members.is_empty() || members.iter().any(older_than_leader) {
        return None; // nothing left, or a process older than our leader: not ours
    }
    Some(group)
}

/// Nothing to do on Windows: a run's processes were in a job object whose only handle was
/// the server's, with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, so Windows killed them all
/// when the server stopped, however it stopped.
#[cfg(windows)]
fn terminate_leftovers(_status: &RunStatus, _grace: Duration) {}
