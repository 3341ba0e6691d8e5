//! Unix process control: `process_group(0)` spawn, `killpg`, `/proc` group scans, and pipe
//! reads that another thread can interrupt. `windows.rs` has the same names.

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;

use os_pipe::{PipeReader, PipeWriter};
use shared_child::SharedChild;

use super::{prepare, PreparedCommand, Signal, Spawned};
use crate::spawn_error::SpawnError;
use crate::spec::RunSpec;

/// Spawns `spec` as the leader of a new process group, stdin null, stdout and stderr on two
/// pipes. Errors are worded for a person ("working directory … does not exist").
#[allow(dead_code)] // the name both platforms have; runs spawn through `spawn_with` here
pub(crate) fn spawn(spec: &RunSpec) -> Result<Spawned, SpawnError> {
    spawn_with(spec, |_| {}, None)
}

/// [`spawn`], with `setup` adding to the command first (a pre-exec hook that joins a
/// cgroup), and with `on_pid`, the child held between fork and exec until `on_pid` has
/// returned with its pid (see `spawn_gate.rs`).
pub(crate) fn spawn_with(
    spec: &RunSpec,
    setup: impl FnOnce(&mut std::process::Command),
    on_pid: Option<&(dyn Fn(u32) + Sync)>,
) -> Result<Spawned, SpawnError> {
    let PreparedCommand {
        mut command,
        stdout,
        stderr,
    } = prepare(spec)?;
    command.process_group(0);
    // First of the pre-exec hooks: a child held at a later one must not hold our locks.
    super::close_before_exec(&mut command);
    super::restore_open_file_limit(&mut command);
    setup(&mut command);
    let child = match on_pid {
        None => SharedChild::spawn(&mut command),
        Some(on_pid) => super::SpawnGate::new()
            .map_err(|e| SpawnError::resources("could not create a pipe", &e))?
            .spawn(&mut command, on_pid, SharedChild::spawn)
            .map_err(|e| SpawnError::resources("cannot create a thread", &e))?,
    }
    .map_err(|e| SpawnError::from_spawn(spec, e))?;
    // The Command holds our copies of the pipes' write ends: while they live, the readers
    // never see EOF. Drop it now.
    drop(command);
    let pid = child.id();
    Ok(Spawned {
        child,
        pid,
        group: ProcessGroup { id: pid },
        stdout,
        stderr,
    })
}

/// Unix words for the two ways to stop a group.
impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }

    /// What was done, for the run's log: "sent SIGTERM to process group 1234".
    pub fn sent_message(self, group: u32) -> String {
        format!("sent {} to process group {group}", self.name())
    }

    /// What could not be done, for the run's log.
    pub fn failure_message(self, group: u32) -> String {
        format!("could not send {} to process group {group}", self.name())
    }
}

/// A run's process group: the child leads it (its pid is the group id) and every
/// descendant is in it unless it left with `setsid`/`setpgid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessGroup {
    id: u32,
}

impl ProcessGroup {
    /// The group of a process we did not spawn (a run found on disk after a restart).
    #[cfg(feature = "server")]
    pub fn from_id(id: u32) -> ProcessGroup {
        ProcessGroup { id }
    }

    /// The group id (the leader's pid).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `signal` to every member. `Ok(false)` when none is left.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        signal_group(self.id, signal)
    }

    /// Members still alive (zombies do not count).
    pub fn live_members(&self) -> Vec<u32> {
        live_group_members(self.id)
    }

    /// Whether process `pid` is a member.
    pub fn contains(&self, pid: u32) -> bool {
        proc_stat(pid).is_some_and(|s| s.pgid == self.id)
    }
}

/// Sends `signal` to every process in group `pgid`. `Ok(false)` when the group is gone.
///
/// SIGTERM is followed by SIGCONT, as systemd does: a stopped process (Ctrl-Z, a debugger,
/// `kill -STOP`) would otherwise not run its SIGTERM handler until SIGKILL came, and a job
/// that saves a checkpoint on SIGTERM would lose it.
fn signal_group(pgid: u32, signal: Signal) -> io::Result<bool> {
    let sig = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid as libc::pid_t, sig) } == 0 {
        if signal == Signal::Term {
            // SAFETY: as above.
            unsafe { libc::killpg(pgid as libc::pid_t, libc::SIGCONT) };
        }
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// One process as `/proc/PID/stat` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: u32,
    pub state: u8,
    /// The parent's pid.
    pub ppid: u32,
    pub pgid: u32,
    /// Clock ticks after boot when the process started (field 22): with the pid, it names
    /// a process uniquely even after pids wrap around.
    pub start_time: u64,
}

/// When process `pid` started (clock ticks after boot), to tell it from a later process
/// with the same pid after a restart.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

/// Reads `/proc/PID/stat`.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Live (not zombie) processes in group `pgid`, found by scanning `/proc`.
///
/// `kill(-pgid, 0)` cannot answer this: it also counts zombies, and where PID 1 does not
/// reap orphans a killed grandchild may stay a zombie forever.
fn live_group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|s| s.pgid == pgid && !matches!(s.state, b'Z' | b'X' | b'x'))
        .map(|s| s.pid)
        .collect()
}

/// The exit code and terminating signal of an exit status.
pub(crate) fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), status.signal())
}

/// A signal's conventional name, for messages.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// Lets one thread wake every reader blocked on a pipe: dropping the `ReadStopper` makes
/// each `StopWatch` readable (EOF), which `read_or_stop` notices.
pub(crate) struct ReadStopper(#[allow(dead_code)] PipeWriter);

/// The readers' side of a [`ReadStopper`].
pub(crate) struct StopWatch(PipeReader);

impl StopWatch {
    pub fn try_clone(&self) -> io::Result<StopWatch> {
        Ok(StopWatch(self.0.try_clone()?))
    }
}

/// A stopper and the watch its readers poll.
pub(crate) fn read_stopper() -> io::Result<(ReadStopper, StopWatch)> {
    let (r, w) = os_pipe::pipe()?;
    Ok((ReadStopper(w), StopWatch(r)))
}

/// Reads from `pipe` into `buf`, unless `stop` fires first. `Ok(None)`: stopped.
/// `Ok(Some(0))`: end of file.
///
/// A read blocked on a pipe that a stray process (one that left the group with setsid)
/// keeps open would block forever, and closing the fd from another thread does not wake
/// it; polling on a second pipe does.
pub(crate) fn read_or_stop(
    pipe: &mut PipeReader,
    stop: &StopWatch,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let mut fds = [
        libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if fds[0].revents != 0 {
            return loop {
                match pipe.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other.map(Some),
                }
            };
        }
        if fds[1].revents != 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let s = parse_stat(4242, text).unwrap();
        assert_eq!((s.state, s.pgid, s.start_time), (b'S', 4240, 987654));
        assert_eq!(s.ppid, 1);
    }

    #[test]
    fn our_own_process_is_in_proc() {
        let me = proc_stat(std::process::id()).unwrap();
        assert!(me.start_time > 0);
        assert!(live_group_members(me.pgid).contains(&std::process::id()));
    }
}
