//! Which processes hold a run's output pipes open: found on Linux by the pipes' inodes in
//! `/proc/*/fd`, so that the run's log can name a process that left the run's process group
//! (`setsid`) and kept writing, and so that a cancel or timeout can stop it too.
//!
//! Elsewhere (macOS, the BSDs, Windows) there is no `/proc` to read: no holder is found and
//! the run's log says only that the pipe was still held open.

use os_pipe::PipeReader;

/// A process found holding one of a run's pipes. The start time tells it from a later
/// process that reuses its pid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))] // never found there
pub(crate) struct PipeHolder {
    pub pid: u32,
    pub start_time: u64,
    /// Its command line, arguments joined by spaces, at most [`COMMAND_CHARS`] characters.
    pub command: String,
}

/// Most characters of a holder's command line in a log entry.
#[cfg(target_os = "linux")]
const COMMAND_CHARS: usize = 200;

/// Whether [`pipe_holders`] can find anything here (it reads `/proc/*/fd`).
pub(crate) const CAN_FIND_PIPE_HOLDERS: bool = cfg!(target_os = "linux");

impl PipeHolder {
    /// `pid 1234 (sh -c …)`, for the run's log.
    pub fn describe(&self) -> String {
        format!("pid {} ({})", self.pid, self.command)
    }
}

impl PipeHolder {
    /// Whether the process is still alive and is the one found (not a later process that
    /// reuses its pid). Zombies are not alive.
    #[cfg(unix)]
    pub fn is_alive(&self) -> bool {
        super::proc_stat(self.pid).is_some_and(|s| {
            s.start_time == self.start_time && !matches!(s.state, b'Z' | b'X' | b'x')
        })
    }

    /// Sends `signal` (SIGTERM then SIGCONT for `Term`) if it is still the process found.
    /// Returns whether it was sent.
    #[cfg(unix)]
    pub fn signal(&self, signal: super::Signal) -> bool {
        if !self.is_alive() {
            return false;
        }
        let pid = self.pid as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the start time was checked just
        // now, so the pid is the process that held the pipe.
        unsafe {
            match signal {
                super::Signal::Term => {
                    let sent = libc::kill(pid, libc::SIGTERM) == 0;
                    libc::kill(pid, libc::SIGCONT);
                    sent
                }
                super::Signal::Kill => libc::kill(pid, libc::SIGKILL) == 0,
            }
        }
    }

    /// Never found off unix.
    #[cfg(not(unix))]
    pub fn is_alive(&self) -> bool {
        false
    }

    /// Never found off unix.
    #[cfg(not(unix))]
    pub fn signal(&self, _signal: super::Signal) -> bool {
        false
    }
}

/// Names `holders` for a log entry: "pid 12 (sleep 9), pid 13 (sh -c …)".
pub(crate) fn describe_holders(holders: &[PipeHolder]) -> String {
    holders
        .iter()
        .map(PipeHolder::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pipe's identity, which `/proc/PID/fd/N` shows as `pipe:[INODE]`.
#[cfg(unix)]
pub(crate) fn pipe_inode(pipe: &PipeReader) -> Option<u64> {
    use std::os::fd::AsFd;
    let file = std::fs::File::from(pipe.as_fd().try_clone_to_owned().ok()?);
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| m.ino())
}

/// No pipe identity to look for where there is no `/proc`.
#[cfg(not(unix))]
pub(crate) fn pipe_inode(_pipe: &PipeReader) -> Option<u64> {
    None
}

/// Every process but this one that has an fd on one of the pipes `inodes`.
#[cfg(target_os = "linux")]
pub(crate) fn pipe_holders(inodes: &[u64]) -> Vec<PipeHolder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let me = std::process::id();
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    processes_where(|pid| {
        // A child of ours that has not exec'd yet (another run's, forked a moment ago, or
        // held at the spawn gate) has a copy of every fd we have, this run's pipes
        // included, until its exec closes them: it is not a holder.
        let unexeced_fork = super::proc_stat(pid).is_some_and(|s| s.ppid == me)
            && own_exe.is_some()
            && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == own_exe;
        if unexeced_fork {
            return false;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false; // gone, or not ours to read
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        })
    })
}

/// Every process whose environment (as it started) has `name=value`: how crash recovery
/// finds a lost run's processes by their `RUNSTREAM_RUN_ID`, even when the run's pid never
/// reached its status file. (A process that cleared its environment is not found.)
#[cfg(all(target_os = "linux", feature = "server"))]
pub(crate) fn marked_processes(name: &str, value: &str) -> Vec<PipeHolder> {
    let wanted = format!("{name}={value}").into_bytes();
    processes_where(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == wanted.as_slice()))
    })
}

/// Every process but this one for which `keep(pid)` holds, by pid.
#[cfg(target_os = "linux")]
fn processes_where(keep: impl Fn(u32) -> bool) -> Vec<PipeHolder> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<PipeHolder> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && keep(pid))
        .filter_map(|pid| {
            let stat = super::proc_stat(pid)?;
            Some(PipeHolder {
                pid,
                start_time: stat.start_time,
                command: command_line(pid),
            })
        })
        .collect();
    found.sort_by_key(|h| h.pid);
    found
}

/// No `/proc` to scan: nothing is found.
#[cfg(all(unix, not(target_os = "linux"), feature = "server"))]
pub(crate) fn marked_processes(_name: &str, _value: &str) -> Vec<PipeHolder> {
    Vec::new()
}

/// No `/proc` to scan: nothing is found.
#[cfg(not(target_os = "linux"))]
pub(crate) fn pipe_holders(_inodes: &[u64]) -> Vec<PipeHolder> {
    Vec::new()
}

/// `/proc/PID/cmdline` with its NULs as spaces, shortened; the kernel's name for the
/// process (`/proc/PID/comm`) when it has none (a kernel thread, a zombie).
#[cfg(target_os = "linux")]
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    if text.is_empty() {
        text = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| format!("[{}]", c.trim_end()))
            .unwrap_or_else(|_| "?".into());
    }
    if text.chars().count() > COMMAND_CHARS {
        text = text.chars().take(COMMAND_CHARS).collect::<String>() + "…";
    }
    text
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn finds_the_process_that_holds_a_pipe_and_names_it() {
        let (reader, writer) = os_pipe::pipe().unwrap();
        let inode = pipe_inode(&reader).unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(writer)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let found = pipe_holders(&[inode]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id());
        assert_eq!(found[0].command, "sleep 30");
        assert_eq!(
            found[0].describe(),
            format!("pid {} (sleep 30)", child.id())
        );
        // Only the reader (ours) is left: this process is never a holder.
        assert!(pipe_holders(&[inode]).is_empty());
    }
}
