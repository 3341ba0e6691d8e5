//! What a stop reaches (issue 10): processes that left the run's process group and keep
//! writing to its pipes, stopped processes (SIGCONT after SIGTERM), and cgroup v2
//! containment where this machine lets runstream make cgroups — with the process-group
//! path tested explicitly by turning cgroups off.
//!
//! cgroup tests print `SKIPPED …` and pass where no cgroup can be made (not root, no
//! cgroup2 mount, a read-only hierarchy).

use std::path::Path;
use std::time::{Duration, Instant};

use runstream::{Engine, EngineConfig, RunHandle, RunState, Stream};

use crate::util::{collect, is_alive, sh, texts, wait_for_entry, wait_running, PATIENCE};

/// An engine that holds runs by their process groups only.
fn groups_only(config: EngineConfig) -> Engine {
    Engine::new(EngineConfig {
        cgroups: false,
        ..config
    })
}

/// An engine with cgroups, or `None` (and a SKIPPED line) where none can be made.
fn with_cgroups(test: &str, config: EngineConfig) -> Option<Engine> {
    let engine = Engine::new(EngineConfig {
        cgroups: true,
        ..config
    });
    let c = engine.containment();
    if c.kind != "cgroup" {
        println!(
            "SKIPPED {test}: no cgroup can be made here ({})",
            c.reason.as_deref().unwrap_or("?")
        );
        return None;
    }
    Some(engine)
}

/// A shell script whose escapee (`setsid`, so outside the run's process group) writes its
/// pid to `pidfile`, then a line every 0.1 s for 5 minutes (longer than any wait of these
/// tests: a run that waited for it fails the test), to the run's stdout; the leader waits
/// for the pidfile, says `leader-done`, then runs `leader_tail`.
fn escapee_script(pidfile: &Path, leader_tail: &str) -> String {
    format!(
        "setsid sh -c 'echo $$ > {p}.tmp; mv {p}.tmp {p}; i=0; \
         while [ $i -lt 3000 ]; do echo escapee-$i; i=$((i+1)); sleep 0.1; done' & \
         while [ ! -e {p} ]; do sleep 0.01; done; echo leader-done; {leader_tail}",
        p = pidfile.display()
    )
}

/// A script whose escapee (`setsid`, output to /dev/null: it holds none of the run's
/// pipes) runs `escapee_head` then sleeps 100 s, after writing its pid to `pidfile`; the
/// leader waits for the pidfile, then runs `leader_tail`.
fn silent_escapee(pidfile: &Path, escapee_head: &str, leader_tail: &str) -> String {
    format!(
        "setsid sh -c '{escapee_head} echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 100' \
         >/dev/null 2>&1 & while [ ! -e {p} ]; do sleep 0.01; done; {leader_tail}",
        p = pidfile.display()
    )
}

fn read_pid(pidfile: &Path) -> u32 {
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Kills the process if a failed assertion left it running — only if it is still the
/// one this test started (same start time): its pid may have been reused by now.
struct KillOnDrop(u32, Option<String>);

impl KillOnDrop {
    fn new(pid: u32) -> KillOnDrop {
        KillOnDrop(pid, start_time(pid))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.1.is_some() && start_time(self.0) == self.1 && is_alive(self.0) {
            // SAFETY: kill(2) on the process this test started (start time checked).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(19)?
            .to_string(),
    )
}

/// Waits (bounded) until `pid` is gone: a process that got SIGTERM needs a moment.
fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while is_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn issue10_the_leak_deadline_is_not_moved_by_an_escapee_that_keeps_writing() {
    let engine = groups_only(EngineConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let run = engine.submit(sh(&escapee_script(&pidfile, ""))).unwrap();
    let (entries, status) = collect(&run);
    let escapee = read_pid(&pidfile);
    let _guard = KillOnDrop::new(escapee);
    // Finished 500 ms after the leader, while the escapee still wrote (it would have
    // written 3000 lines, for 5 minutes).
    let lines = texts(&entries, Stream::Stdout);
    assert!(
        lines.contains(&"leader-done".to_string()) && lines.len() < 3000,
        "the run waited for the escapee: {} lines",
        lines.len()
    );
    assert_eq!(status.status, RunState::Completed);
    let system = texts(&entries, Stream::System);
    let held = system
        .iter()
        .find(|m| m.contains("still held open"))
        .unwrap_or_else(|| panic!("{system:?}"));
    // The log names the process: pid and command line.
    assert!(
        held.contains(&format!("pid {escapee} (sh -c echo $$ >")),
        "{held}"
    );
}

/// Cancel and timeout reach a process that left the group and holds the pipes, after the
/// leader exited. The leak timeout is long here, so the run is still waiting for its
/// pipes when the stop comes.
fn stop_after_the_leader_exited(stop: impl FnOnce(&RunHandle), timeout: Option<Duration>) {
    let engine = groups_only(EngineConfig {
        leak_timeout: Duration::from_secs(120),
        ..EngineConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let mut spec = sh(&escapee_script(&pidfile, "")).grace(Duration::from_secs(2));
    if let Some(t) = timeout {
        spec = spec.timeout(t);
    }
    let run = engine.submit(spec).unwrap();
    stop(&run);
    let status = run.wait_timeout(PATIENCE).expect("the stop ended the run");
    let escapee = read_pid(&pidfile);
    let _guard = KillOnDrop::new(escapee);
    assert!(wait_gone(escapee), "the escapee was stopped too");
    let expected = match timeout {
        Some(_) => RunState::TimedOut,
        None => RunState::Cancelled,
    };
    assert_eq!(status.status, expected, "{status:?}");
    let (entries, _) = collect(&run);
    let system = texts(&entries, Stream::System);
    assert!(
        system.iter().any(|m| m.contains("sent SIGTERM")
            && m.contains(&format!("pid {escapee} ("))
            && m.contains("which held the output pipe")),
        "{system:?}"
    );
}

#[test]
fn issue10_cancel_stops_an_escapee_that_keeps_writing_after_the_leader_exited() {
    stop_after_the_leader_exited(
        |run| {
            wait_for_entry(run, |e| e.message == "escapee-3");
            assert!(run.cancel());
        },
        None,
    );
}

#[test]
fn issue10_a_timeout_stops_an_escapee_that_keeps_writing_after_the_leader_exited() {
    // The leader exits at once; the escapee writes for minutes.
    stop_after_the_leader_exited(|_| {}, Some(Duration::from_secs(3)));
}

#[test]
fn issue10_cancel_while_the_leader_lives_stops_the_escapee_too() {
    let engine = groups_only(EngineConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let run = engine
        .submit(sh(&escapee_script(&pidfile, "sleep 100")).grace(Duration::from_secs(2)))
        .unwrap();
    wait_for_entry(&run, |e| e.message == "leader-done");
    let escapee = read_pid(&pidfile);
    let _guard = KillOnDrop::new(escapee);
    assert!(run.cancel());
    let status = run.wait_timeout(PATIENCE).expect("cancelled");
    assert_eq!(status.status, RunState::Cancelled);
    assert!(wait_gone(escapee), "the escapee got SIGTERM with the group");
}

#[test]
fn issue10_an_escapee_that_ignores_sigterm_gets_sigkill_when_the_grace_period_ends() {
    let engine = groups_only(EngineConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let script = escapee_script(&pidfile, "sleep 100").replacen(
        "setsid sh -c '",
        "setsid sh -c 'trap \"\" TERM; ",
        1,
    );
    let run = engine
        .submit(sh(&script).grace(Duration::from_millis(300)))
        .unwrap();
    wait_for_entry(&run, |e| e.message == "escapee-3");
    let escapee = read_pid(&pidfile);
    let _guard = KillOnDrop::new(escapee);
    assert!(run.cancel());
    let status = run.wait_timeout(PATIENCE).expect("cancelled");
    assert_eq!(status.status, RunState::Cancelled);
    assert!(wait_gone(escapee), "SIGKILL reached the escapee");
    let (entries, _) = collect(&run);
    let system = texts(&entries, Stream::System);
    assert!(
        system
            .iter()
            .any(|m| m.starts_with("grace period ended: sent SIGKILL")
                && m.contains(&format!("pid {escapee} ("))),
        "{system:?}"
    );
}

#[test]
fn issue10_a_stopped_process_gets_sigcont_after_sigterm_and_handles_it() {
    let engine = groups_only(EngineConfig::default());
    let run = engine
        .submit(
            sh("trap 'echo got-term; exit 0' TERM; echo ready; sleep 1000 & wait")
                .grace(Duration::from_secs(60)),
        )
        .unwrap();
    wait_for_entry(&run, |e| e.message == "ready");
    let pgid = run.status().pid.unwrap();
    // Stop the group only once `sleep` runs: a fork of the shell that has not exec'd yet
    // has the shell's TERM trap, takes the SIGTERM into it, then execs a `sleep` that
    // never saw one and lives on to the end of the 60 s grace period.
    let deadline = Instant::now() + PATIENCE;
    while !group_runs(pgid, "sleep") {
        assert!(Instant::now() < deadline, "the shell never started sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: killpg(2) on the group of the run this test started.
    assert_eq!(unsafe { libc::killpg(pgid as i32, libc::SIGSTOP) }, 0);
    let deadline = Instant::now() + PATIENCE;
    while process_state(pgid) != Some('T') {
        assert!(Instant::now() < deadline, "the shell never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(run.cancel());
    // With a 60 s grace, only the shell's own handler can end the run in time.
    let status = run
        .wait_timeout(PATIENCE)
        .expect("the stopped shell ran its SIGTERM handler");
    let (entries, _) = collect(&run);
    assert!(
        texts(&entries, Stream::Stdout).contains(&"got-term".to_string()),
        "{:?}",
        texts(&entries, Stream::System)
    );
    assert_eq!(status.status, RunState::Cancelled);
    assert_eq!(status.exit_code, Some(0));
}

/// Whether a live process of group `pgid` runs the program `name` (its exec'd name).
fn group_runs(pgid: u32, name: &str) -> bool {
    crate::util::live_group_members(pgid)
        .into_iter()
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
}

/// The state letter of `/proc/PID/stat` (`T` when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn issue10_without_cgroups_runs_say_they_are_held_by_their_process_group() {
    let engine = groups_only(EngineConfig::default());
    let c = engine.containment();
    assert_eq!(c.kind, "process_group");
    assert!(c.reason.as_deref().unwrap().contains("turned off"), "{c:?}");
    let run = engine.submit(sh("echo hi")).unwrap();
    let status = run.wait();
    assert_eq!(status.containment.as_deref(), Some("process_group"));
    assert_eq!((status.cgroup, status.cpu_seconds), (None, None));
    // A memory limit cannot be enforced: the run goes on and says so.
    let run = engine.submit(sh("echo hi").memory_max_mb(64)).unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed);
    assert!(
        texts(&entries, Stream::System)
            .iter()
            .any(|m| m.starts_with("memory_max_mb 64 is not enforced")),
        "{entries:?}"
    );
}

#[test]
fn issue10_with_cgroups_each_run_has_its_own_and_reports_cpu_time() {
    let Some(engine) = with_cgroups(
        "issue10_with_cgroups_each_run_has_its_own_and_reports_cpu_time",
        EngineConfig::default(),
    ) else {
        return;
    };
    let run = engine
        .submit(sh(
            "cat /proc/self/cgroup; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
        ))
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Completed, "{entries:?}");
    assert_eq!(status.containment.as_deref(), Some("cgroup"));
    let dir = status.cgroup.clone().expect("the run's cgroup is recorded");
    assert!(dir.ends_with(run.id()), "{dir}");
    // The child ran in it from its first instruction (cat is its first command).
    let own = texts(&entries, Stream::Stdout);
    assert!(
        own.iter()
            .any(|l| l.starts_with("0::") && l.ends_with(run.id())),
        "{own:?}"
    );
    assert!(status.cpu_seconds.unwrap() > 0.0, "{status:?}");
    assert!(
        !Path::new(&dir).exists(),
        "the cgroup is removed at the end"
    );
}

#[test]
fn issue10_with_cgroups_an_escapee_is_stopped_when_the_leader_exits() {
    let Some(engine) = with_cgroups(
        "issue10_with_cgroups_an_escapee_is_stopped_when_the_leader_exits",
        EngineConfig::default(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    // The escapee ignores SIGTERM and writes nowhere of the run's: only the cgroup can
    // find it, and only cgroup.kill ends it.
    let script = silent_escapee(&pidfile, "trap \"\" TERM;", "echo leader-done");
    let run = engine
        .submit(sh(&script).grace(Duration::from_millis(300)))
        .unwrap();
    let (entries, status) = collect(&run);
    let escapee = read_pid(&pidfile);
    let _guard = KillOnDrop::new(escapee);
    assert_eq!(status.status, RunState::Completed);
    assert!(!is_alive(escapee), "cgroup.kill ended the escapee");
    let system = texts(&entries, Stream::System);
    assert!(
        system
            .iter()
            .any(|m| m.contains("outlived the leader") && m.contains("of its cgroup")),
        "{system:?}"
    );
    assert!(
        system.iter().any(|m| m.starts_with("grace period ended")),
        "{system:?}"
    );
}

#[test]
fn issue10_with_cgroups_a_memory_limit_ends_the_run_failed_by_the_oom_killer() {
    let test = "issue10_with_cgroups_a_memory_limit_ends_the_run_failed_by_the_oom_killer";
    let Some(engine) = with_cgroups(test, EngineConfig::default()) else {
        return;
    };
    if !engine
        .containment()
        .controllers
        .iter()
        .any(|c| c == "memory")
    {
        println!("SKIPPED {test}: the memory controller is not available to runstream's cgroup");
        return;
    }
    // 200 MiB of memory in a shell variable, with a limit of 32 MiB.
    let run = engine
        .submit(
            sh("x=$(head -c 209715200 /dev/zero | tr '\\0' a); echo survived ${#x}")
                .memory_max_mb(32),
        )
        .unwrap();
    let (entries, status) = collect(&run);
    assert_eq!(status.status, RunState::Failed, "{entries:?}");
    let message = status.error_message.unwrap();
    assert!(message.contains("OOM killer"), "{message}");
    assert!(message.contains("32 MiB"), "{message}");
    assert!(status.memory_peak_bytes.unwrap() > 16 << 20);
}

#[test]
fn issue10_with_cgroups_cancel_reaches_every_process_of_the_cgroup() {
    let Some(engine) = with_cgroups(
        "issue10_with_cgroups_cancel_reaches_every_process_of_the_cgroup",
        EngineConfig::default(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let script = silent_escapee(&pidfile, "", "echo ready; sleep 100");
    let run = engine.submit(sh(&script)).unwrap();
    wait_running(&run);
    wait_for_entry(&run, |e| e.message == "ready");
    let escapee = read_pid(&pidfile);
    let _guard = KillOnDrop::new(escapee);
    assert!(run.cancel());
    let status = run.wait_timeout(PATIENCE).expect("cancelled");
    assert_eq!(status.status, RunState::Cancelled);
    assert!(
        !is_alive(escapee),
        "the escapee got SIGTERM through the cgroup"
    );
}
