//! Spawning a child in its own process group, signalling the group, and reading its pipes.
//! Platform code sits behind the same names in `unix.rs` (process groups, signals, `/proc`)
//! and `windows.rs` (a job object per run, `CTRL_BREAK_EVENT`, `TerminateJobObject`).

mod command;
mod open_files;
pub(crate) use command::*;
#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(all(target_os = "linux", feature = "server"))]
pub(crate) use cgroup::stop_lost as stop_lost_cgroup;
mod containment;
#[cfg(target_os = "linux")]
mod reaper;
pub use containment::Containment;
pub(crate) use containment::{
    discard_cgroup, limit_memory, run_kind, spawn_contained, EngineContainment, RunProcesses,
};
#[cfg(target_os = "linux")]
pub use reaper::reap_orphans;
#[cfg(target_os = "linux")]
pub(crate) use reaper::{leader_reaped, spawn_leader};
#[cfg(unix)]
mod parent_only_fds;
#[cfg(unix)]
pub(crate) use parent_only_fds::{close_before_exec, close_in_children, forget};
mod pipe_holders;
#[cfg(unix)]
mod spawn_gate;
pub use open_files::raise_open_file_limit;
#[cfg(unix)]
pub(crate) use open_files::restore_open_file_limit;
#[cfg(all(unix, feature = "server"))]
pub(crate) use pipe_holders::marked_processes;
pub(crate) use pipe_holders::{
    describe_holders, pipe_holders, pipe_inode, PipeHolder, CAN_FIND_PIPE_HOLDERS,
};
#[cfg(unix)]
pub(crate) use spawn_gate::SpawnGate;

/// How the engine stops a process group: gracefully (`Term`), or at once (`Kill`). The
/// names are unix's; each platform file says what they do there (`name`, messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Kill,
}

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// Off Linux the engine does not reap orphans: the pid is not recorded.
#[cfg(not(target_os = "linux"))]
pub(crate) fn leader_reaped(_pid: u32) {}

#[cfg(not(any(unix, windows)))]
compile_error!("runstream supports unix and Windows");
