//! Spawning a child in its own process group, signalling the group, and reading its pipes.
//! Platform code sits behind the same names in `unix.rs` (and, later, `windows.rs`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(unix))]
compile_error!("runstream supports unix platforms only for now");
