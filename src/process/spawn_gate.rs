//! Holds a freshly forked child before it runs anything until its pid is on disk, so that
//! a server killed at any moment leaves no child that crash recovery cannot find.
//!
//! Between fork and exec (a pre-exec hook) the child writes its pid on a "hello" pipe and
//! waits for one byte on a "go" pipe. A thread of ours reads the pid, hands it to the
//! caller (who records it), then writes the byte. If runstream dies first, the child
//! exits with 127 without running the program: it sees end-of-file on the go pipe, or —
//! since a sibling forked at the same moment may hold a copy of its write end until that
//! sibling execs (or, stuck at its own gate, forever) — that its parent changed, which it
//! checks every 50 ms.
//!
//! The thread is needed because `Command::spawn` returns only once the child has exec'd:
//! the gate must be opened while spawn is still waiting.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use os_pipe::{PipeReader, PipeWriter};

/// The two pipes of one spawn.
pub(crate) struct SpawnGate {
    hello_read: PipeReader,
    hello_write: PipeWriter,
    go_read: PipeReader,
    go_write: PipeWriter,
}

impl SpawnGate {
    pub fn new() -> io::Result<SpawnGate> {
        let (hello_read, hello_write) = os_pipe::pipe()?;
        let (go_read, go_write) = os_pipe::pipe()?;
        Ok(SpawnGate {
            hello_read,
            hello_write,
            go_read,
            go_write,
        })
    }

    /// Runs `spawn` (which spawns `command`) with the gate in the child's way, calling
    /// `on_pid` with the child's pid before the child may go on to exec. The outer `Err`:
    /// the gate's thread could not be created (nothing was spawned).
    pub fn spawn<T>(
        self,
        command: &mut Command,
        on_pid: &(dyn Fn(u32) + Sync),
        spawn: impl FnOnce(&mut Command) -> T,
    ) -> io::Result<T> {
        let SpawnGate {
            mut hello_read,
            hello_write,
            go_read,
            mut go_write,
        } = self;
        let (hello, go): (RawFd, RawFd) = (hello_write.as_raw_fd(), go_read.as_raw_fd());
        let (hello_back, go_back): (RawFd, RawFd) = (hello_read.as_raw_fd(), go_write.as_raw_fd());
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the hook calls only close, getpid, getppid, write, poll, read and _exit,
        // which are async-signal-safe, on fds that stay open in the parent until the spawn
        // returns (they are dropped below, after it). All four are close-on-exec: the
        // program never sees them.
        unsafe {
            command.pre_exec(move || {
                // The child's copies of our ends: with them open, end-of-file never comes.
                libc::close(hello_back);
                libc::close(go_back);
                let pid = (libc::getpid() as u32).to_ne_bytes();
                if libc::write(hello, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                    libc::_exit(127);
                }
                let mut wait = libc::pollfd {
                    fd: go,
                    events: libc::POLLIN,
                    revents: 0,
                };
                loop {
                    if libc::getppid() != parent {
                        libc::_exit(127); // runstream is gone, and with it any record of us
                    }
                    if libc::poll(&mut wait, 1, 50) < 1 {
                        continue; // timeout, or EINTR: look at the parent again
                    }
                    let mut byte = 0u8;
                    match libc::read(go, (&mut byte as *mut u8).cast(), 1) {
                        1 => return Ok(()),
                        -1 if *libc::__errno_location() == libc::EINTR => continue,
                        _ => libc::_exit(127), // end of file: runstream is gone
                    }
                }
            });
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("runstream-gate".into())
                .spawn_scoped(scope, move || {
                    let mut pid = [0u8; 4];
                    // End of file (no child was made, or it died first): nothing to open.
                    if hello_read.read_exact(&mut pid).is_ok() {
                        on_pid(u32::from_ne_bytes(pid));
                        let _ = go_write.write_all(b"g");
                    }
                })?;
            let spawned = spawn(command);
            // Our copy of the hello pipe's write end: the thread above sees end of file
            // when no child holds it either (the spawn failed before the hook ran).
            drop(hello_write);
            drop(go_read);
            Ok(spawned)
        })
    }
}
