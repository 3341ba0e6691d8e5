//! What holds a run's processes together so that all of them can be stopped: a cgroup of
//! its own where runstream can write one (Linux, cgroup v2), else its process group (unix)
//! or job object (Windows); plus, found on Linux by the pipes' inodes, any process outside
//! them that holds the run's output pipes (a `setsid` escapee, in the process-group case).

use std::io;
use std::path::PathBuf;

#[cfg(target_os = "linux")]
use super::cgroup::{CgroupParent, CgroupUsage, RunCgroup};
use super::{describe_holders, pipe_holders, PipeHolder, ProcessGroup, Signal};

/// How an engine holds each run's processes together, as `/api/health` and each run's log
/// report it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Containment {
    /// `"cgroup"` (each run in a cgroup v2 of its own: no process can leave it),
    /// `"process_group"` (unix: a process can leave with `setsid`), or `"job_object"`
    /// (Windows).
    pub kind: &'static str,
    /// Kind `cgroup`: the cgroup the runs' cgroups are made in.
    pub cgroup_dir: Option<PathBuf>,
    /// Kind `cgroup`: the controllers each run's cgroup has (`cpu`, `memory`); with
    /// `memory`, `RunSpec::memory_max_mb` is enforced and peak memory is reported.
    pub controllers: Vec<String>,
    /// Why no cgroup is used, when none is.
    pub reason: Option<String>,
}

/// An engine's containment: the cgroup its runs go in, if one could be made.
#[derive(Debug)]
pub(crate) struct EngineContainment {
    info: Containment,
    #[cfg(target_os = "linux")]
    parent: Option<CgroupParent>,
}

impl EngineContainment {
    /// Uses cgroups when `cgroups` is set and a cgroup can be made; else the platform's
    /// process grouping, with the reason.
    pub fn detect(cgroups: bool) -> EngineContainment {
        let fallback = if cfg!(windows) {
            "job_object"
        } else {
            "process_group"
        };
        let off = |reason: String| Containment {
            kind: fallback,
            cgroup_dir: None,
            controllers: Vec::new(),
            reason: Some(reason),
        };
        if !cgroups {
            return EngineContainment {
                info: off("cgroups are turned off (EngineConfig::cgroups)".into()),
                #[cfg(target_os = "linux")]
                parent: None,
            };
        }
        #[cfg(target_os = "linux")]
        {
            match CgroupParent::create() {
                Ok(parent) => EngineContainment {
                    info: Containment {
                        kind: "cgroup",
                        cgroup_dir: Some(parent.dir().to_path_buf()),
                        controllers: parent.controllers().to_vec(),
                        reason: None,
                    },
                    parent: Some(parent),
                },
                Err(why) => EngineContainment {
                    info: off(why),
                    parent: None,
                },
            }
        }
        #[cfg(not(target_os = "linux"))]
        EngineContainment {
            info: off("cgroups exist only on Linux".into()),
        }
    }

    /// What the engine uses.
    pub fn info(&self) -> &Containment {
        &self.info
    }

    /// Makes run `run_id`'s cgroup. `Ok(None)`: cgroups are not in use. `Err`: they are,
    /// but this run's could not be made (it then runs in its process group only).
    #[cfg(target_os = "linux")]
    pub fn create_run(&self, run_id: &str) -> Result<Option<RunCgroup>, String> {
        let Some(parent) = &self.parent else {
            return Ok(None);
        };
        parent.create_run(run_id).map(Some).map_err(|e| {
            format!(
                "cannot create the run's cgroup in {}: {e}",
                parent.dir().display()
            )
        })
    }
}

/// No cgroups off Linux: an empty type stands for a run's cgroup.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub(crate) enum RunCgroup {}

#[cfg(not(target_os = "linux"))]
impl RunCgroup {
    /// The cgroup's directory (there is none: no value of this type exists here).
    pub fn dir(&self) -> &std::path::Path {
        match *self {}
    }
}

/// What the kernel counted for a run (cgroup kind only).
#[cfg(not(target_os = "linux"))]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CgroupUsage {
    pub cpu_seconds: Option<f64>,
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: u64,
}

#[cfg(not(target_os = "linux"))]
impl EngineContainment {
    pub fn create_run(&self, _run_id: &str) -> Result<Option<RunCgroup>, String> {
        Ok(None)
    }
}

/// Removes a run's cgroup that was made but never used (the spawn failed).
pub(crate) fn discard_cgroup(cgroup: Option<RunCgroup>) {
    #[cfg(target_os = "linux")]
    if let Some(cgroup) = cgroup {
        let _ = cgroup.remove();
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cgroup;
}

/// Spawns `spec` in `cgroup` (joined before the child runs anything), or as
/// [`super::spawn`] does without one. `on_pid` gets the child's pid before the child may
/// run its program (on unix; on Windows, where a crash of runstream kills the job, just
/// after the spawn): whoever records it there loses no child to a crash.
pub(crate) fn spawn_contained(
    spec: &crate::RunSpec,
    cgroup: Option<&RunCgroup>,
    on_pid: &(dyn Fn(u32) + Sync),
) -> Result<super::Spawned, crate::spawn_error::SpawnError> {
    // Recorded as a run's leader as it is spawned, so that the orphan reaper never takes
    // its exit status.
    #[cfg(target_os = "linux")]
    return super::spawn_leader(|| spawn_in(spec, cgroup, on_pid), |s| s.pid);
    #[cfg(not(target_os = "linux"))]
    spawn_in(spec, cgroup, on_pid)
}

#[cfg(unix)]
fn spawn_in(
    spec: &crate::RunSpec,
    cgroup: Option<&RunCgroup>,
    on_pid: &(dyn Fn(u32) + Sync),
) -> Result<super::Spawned, crate::spawn_error::SpawnError> {
    #[cfg(target_os = "linux")]
    if let Some(cgroup) = cgroup {
        let spawned = super::spawn_with(spec, |command| cgroup.place(command), Some(on_pid))?;
        if let Err(e) = cgroup.ensure_member(spawned.pid) {
            log::warn!(
                "pid {} could not join its cgroup {}: {e}",
                spawned.pid,
                cgroup.dir().display()
            );
        }
        return Ok(spawned);
    }
    #[cfg(not(target_os = "linux"))]
    if let Some(never) = cgroup {
        match *never {}
    }
    super::spawn_with(spec, |_| {}, Some(on_pid))
}

#[cfg(not(unix))]
fn spawn_in(
    spec: &crate::RunSpec,
    cgroup: Option<&RunCgroup>,
    on_pid: &(dyn Fn(u32) + Sync),
) -> Result<super::Spawned, crate::spawn_error::SpawnError> {
    if let Some(never) = cgroup {
        match *never {}
    }
    let spawned = super::spawn(spec)?;
    on_pid(spawned.pid);
    Ok(spawned)
}

/// Sets the run's `memory.max` to `mb` MiB, before the child is spawned; says why not in
/// the `Err`.
pub(crate) fn limit_memory(cgroup: Option<&RunCgroup>, mb: u64) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    if let Some(cgroup) = cgroup {
        if !cgroup.has_memory_controller() {
            return Err(
                "the memory controller is not available to runstream's cgroup \
                 (see /api/health, containment.controllers)"
                    .into(),
            );
        }
        return cgroup
            .set_memory_max(mb.saturating_mul(1 << 20))
            .map_err(|e| format!("cannot set memory.max: {e}"));
    }
    let _ = (cgroup, mb);
    Err("the run has no cgroup".into())
}

/// What holds a run: `cgroup` when it has one, else the engine's fallback kind (also when
/// the engine uses cgroups but this run's could not be made).
pub(crate) fn run_kind(engine: &Containment, has_cgroup: bool) -> &'static str {
    match (has_cgroup, engine.kind) {
        (true, _) => "cgroup",
        (false, "cgroup") => "process_group",
        (false, kind) => kind,
    }
}

/// Every process of one run that runstream knows of: its process group, its cgroup, and
/// the processes outside both found holding its output pipes.
pub(crate) struct RunProcesses {
    group: ProcessGroup,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // always `None` there
    cgroup: Option<RunCgroup>,
    /// The output pipes' inodes (none where they cannot be read).
    pipes: Vec<u64>,
    /// Processes outside the group and cgroup that held the pipes when last looked for:
    /// a stop signals them with the group.
    strays: Vec<PipeHolder>,
}

/// What [`RunProcesses::signal`] reached.
pub(crate) enum Signalled {
    /// Nothing was alive.
    Nobody,
    /// The signal went out: to the group (`true`), and to `others` ("3 process(es) of its
    /// cgroup", "pid 40 (sleep 9), which held the output pipe").
    Sent { group: bool, others: Vec<String> },
    /// Signalling the group failed, and nothing else was reached.
    Failed(io::Error),
}

impl Signalled {
    /// For the run's log: "sent SIGTERM to process group 12, and to pid 40 (sleep 9),
    /// which held the output pipe". `None` when nothing was reached.
    pub fn message(&self, signal: Signal, group: u32) -> Option<Result<String, String>> {
        match self {
            Signalled::Nobody => None,
            Signalled::Failed(e) => Some(Err(format!("{}: {e}", signal.failure_message(group)))),
            Signalled::Sent {
                group: to_group,
                others,
            } => {
                let mut text = match to_group {
                    true => signal.sent_message(group),
                    false => format!("sent {}", signal.name()),
                };
                for (i, other) in others.iter().enumerate() {
                    text += if *to_group || i > 0 {
                        ", and to "
                    } else {
                        " to "
                    };
                    text += other;
                }
                Some(Ok(text))
            }
        }
    }
}

impl RunProcesses {
    pub fn new(group: ProcessGroup, cgroup: Option<RunCgroup>, pipes: Vec<u64>) -> RunProcesses {
        RunProcesses {
            group,
            cgroup,
            pipes,
            strays: Vec::new(),
        }
    }

    /// The run's process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// The processes outside the group and cgroup that hold the output pipes now (a
    /// `setsid` escapee).
    pub fn pipe_holders_outside(&self) -> Vec<PipeHolder> {
        let members = self.members();
        pipe_holders(&self.pipes)
            .into_iter()
            .filter(|h| !members.contains(&h.pid))
            .collect()
    }

    /// Whether a process other than this one still holds an output pipe open (`true`
    /// where that cannot be known).
    pub fn pipes_held_by_others(&self) -> bool {
        !super::CAN_FIND_PIPE_HOLDERS || !pipe_holders(&self.pipes).is_empty()
    }

    /// Makes `strays` part of the run: later signals reach them. Returns those that were
    /// not known yet.
    pub fn adopt(&mut self, strays: Vec<PipeHolder>) -> Vec<PipeHolder> {
        let new: Vec<PipeHolder> = strays
            .into_iter()
            .filter(|h| !self.strays.contains(h))
            .collect();
        self.strays.extend(new.iter().cloned());
        new
    }

    /// Live processes of the group and cgroup (zombies do not count).
    fn members(&self) -> Vec<u32> {
        #[allow(unused_mut)] // only Linux adds the cgroup's
        let mut pids = self.group.live_members();
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = &self.cgroup {
            pids.extend(cgroup.pids());
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Everything still alive: members and known strays.
    pub fn alive(&mut self) -> Vec<u32> {
        self.strays.retain(PipeHolder::is_alive);
        let mut pids = self.members();
        pids.extend(self.strays.iter().map(|s| s.pid));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to the group, every process of the cgroup (SIGKILL: `cgroup.kill`)
    /// and the known strays. SIGTERM is followed by SIGCONT, as systemd does, so that a
    /// stopped process (Ctrl-Z, a debugger) gets to handle it.
    pub fn signal(&mut self, signal: Signal) -> Signalled {
        let mut reached = Vec::new();
        let group = self.group.signal(signal);
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = &self.cgroup {
            let n = match signal {
                Signal::Term => {
                    let n = cgroup.signal_all(libc::SIGTERM);
                    cgroup.signal_all(libc::SIGCONT);
                    n
                }
                Signal::Kill => {
                    let n = cgroup.pids().len();
                    if let Err(e) = cgroup.kill() {
                        log::warn!("cannot kill cgroup {}: {e}", cgroup.dir().display());
                    }
                    n
                }
            };
            if n > 0 {
                reached.push(format!("{n} process(es) of its cgroup"));
            }
        }
        self.strays.retain(PipeHolder::is_alive);
        let strays: Vec<PipeHolder> = self
            .strays
            .iter()
            .filter(|s| s.signal(signal))
            .cloned()
            .collect();
        if !strays.is_empty() {
            reached.push(format!(
                "{}, which held the output pipe",
                describe_holders(&strays)
            ));
        }
        match group {
            Ok(true) => Signalled::Sent {
                group: true,
                others: reached,
            },
            _ if !reached.is_empty() => Signalled::Sent {
                group: false,
                others: reached,
            },
            Ok(false) => Signalled::Nobody,
            Err(e) => Signalled::Failed(e),
        }
    }

    /// What the kernel counted; all `None` without a cgroup.
    pub fn usage(&self) -> CgroupUsage {
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = &self.cgroup {
            return cgroup.usage();
        }
        CgroupUsage::default()
    }

    /// Removes the run's cgroup once it is empty; says why not in the `Err`.
    pub fn remove_cgroup(&self) -> Result<(), String> {
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = &self.cgroup {
            return cgroup
                .remove()
                .map_err(|e| format!("cannot remove cgroup {}: {e}", cgroup.dir().display()));
        }
        Ok(())
    }
}
