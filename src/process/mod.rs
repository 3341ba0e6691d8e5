//! Spawning a child in its own process group, signalling the group, and reading its pipes.
//! Platform code sits behind the same names in `unix.rs` (process groups, signals, `/proc`)
//! and `windows.rs` (a job object per run, `CTRL_BREAK_EVENT`, `TerminateJobObject`).

mod command;
mod open_files;
pub(crate) use command::*;
pub use open_files::raise_open_file_limit;
#[cfg(unix)]
pub(crate) use open_files::restore_open_file_limit;

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

#[cfg(not(any(unix, windows)))]
compile_error!("runstream supports unix and Windows");
