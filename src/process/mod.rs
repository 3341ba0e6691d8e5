//! Spawning a child in its own process group, signalling the group, and reading its pipes.
//! Platform code sits behind the same names in `unix.rs` (process groups, signals, `/proc`)
//! and `windows.rs` (a job object per run, `CTRL_BREAK_EVENT`, `TerminateJobObject`).

mod command;
pub(crate) use command::*;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

#[cfg(not(any(unix, windows)))]
compile_error!("runstream supports unix and Windows");
