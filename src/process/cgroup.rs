//! cgroup v2 containment (Linux): each run in a cgroup of its own, which no process of the
//! run can leave (`setsid` leaves a process group, not a cgroup).
//!
//! Layout: under the cgroup runstream itself is in (`/proc/self/cgroup`, `0::PATH`, on the
//! cgroup2 mount found in `/proc/self/mountinfo`), one directory per engine,
//! `runstream-PID-N`, and in it one per run, named by its run id. The child is moved into
//! its run's cgroup by a pre-exec hook (it writes `0` to the cgroup's `cgroup.procs` between
//! fork and exec), so it runs nothing outside it. A graceful stop signals every process of
//! the cgroup; the end of the grace period writes `1` to `cgroup.kill`; the run's processes
//! are gone when `cgroup.events` says `populated 0`; then the directory is removed.
//!
//! Where the `memory` and `cpu` controllers can be enabled for the runs (they must be free
//! of cgroup v1 and the parent must hold no process itself, which systemd's `Delegate=yes`
//! or being in the root cgroup gives), a run's `memory.max` can be set and its peak memory
//! read from `memory.peak`. CPU time (`cpu.stat`, `usage_usec`) is there in every cgroup.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The controllers runstream asks for, when the hierarchy has them.
const WANTED_CONTROLLERS: [&str; 2] = ["cpu", "memory"];

/// The cgroup one engine makes its runs' cgroups in. Removed when dropped (it is empty by
/// then, unless a run's processes could not be killed).
#[derive(Debug)]
pub(crate) struct CgroupParent {
    dir: PathBuf,
    controllers: Vec<String>,
}

impl CgroupParent {
    /// Creates this engine's cgroup under the one runstream is in, or says why it cannot.
    pub fn create() -> Result<CgroupParent, String> {
        let base = own_cgroup_dir()?;
        remove_dead_engines(&base);
        static ENGINES: AtomicU64 = AtomicU64::new(0);
        let n = ENGINES.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("runstream-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create a cgroup under {}: {e}",
                    base.display()
                ))
            }
        }
        // (The root cgroup has no cgroup.kill, so it is looked for in ours.)
        if !dir.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&dir);
            return Err(format!(
                "{} has no cgroup.kill (Linux 5.14 or later is needed)",
                dir.display()
            ));
        }
        // Controllers reach the runs only when both the base and our directory pass them
        // down. The base refuses (EBUSY) when it holds processes itself and is not the
        // root: then runs get no memory limit or peak, and everything else still works.
        let offered = read_words(&base.join("cgroup.controllers"));
        let mut controllers = Vec::new();
        for name in WANTED_CONTROLLERS {
            if !offered.iter().any(|c| c == name) {
                continue;
            }
            let enable =
                |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), format!("+{name}"));
            if enable(&base).and_then(|()| enable(&dir)).is_ok() {
                controllers.push(name.to_string());
            }
        }
        Ok(CgroupParent { dir, controllers })
    }

    /// Where the runs' cgroups are made.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Controllers each run's cgroup has (`cpu`, `memory`), in that order.
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// Makes the cgroup of run `run_id`.
    pub fn create_run(&self, run_id: &str) -> io::Result<RunCgroup> {
        let dir = self.dir.join(run_id);
        fs::create_dir(&dir)?;
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .inspect_err(|_| {
                let _ = fs::remove_dir(&dir);
            })?;
        Ok(RunCgroup {
            dir,
            procs,
            memory: self.controllers.iter().any(|c| c == "memory"),
        })
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// One run's cgroup.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the spawn: the child writes to it between fork and
    /// exec, when it must not allocate (so cannot open a path).
    procs: File,
    /// Whether the memory controller is on for it.
    memory: bool,
}

/// What the kernel counted for a run's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CgroupUsage {
    /// CPU time of all its processes, user and system (`cpu.stat` `usage_usec`).
    pub cpu_seconds: Option<f64>,
    /// The most memory it used at once (`memory.peak`), with the memory controller.
    pub memory_peak_bytes: Option<u64>,
    /// How many of its processes the OOM killer killed (`memory.events` `oom_kill`).
    pub oom_kills: u64,
}

impl RunCgroup {
    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `memory.max` can be set.
    pub fn has_memory_controller(&self) -> bool {
        self.memory
    }

    /// Sets `memory.max`: the kernel's OOM killer acts inside the cgroup beyond it. Swap
    /// is limited to none, so that the limit is what the run can use.
    pub fn set_memory_max(&self, bytes: u64) -> io::Result<()> {
        fs::write(self.dir.join("memory.max"), bytes.to_string())?;
        // Absent without swap accounting; then there is no swap to limit.
        let swap = self.dir.join("memory.swap.max");
        if swap.exists() {
            fs::write(swap, "0")?;
        }
        Ok(())
    }

    /// Makes the child of `command` join this cgroup before it runs anything.
    pub fn place(&self, command: &mut Command) {
        let fd: RawFd = self.procs.as_raw_fd();
        // SAFETY: the hook only calls write(2), which is async-signal-safe, on an fd that
        // stays open until the spawn returns (self outlives the borrow of `command` in the
        // caller). It writes "0", which moves the writing process itself. A failure is
        // not fatal here: the parent checks and moves the child itself (`ensure_member`).
        unsafe {
            command.pre_exec(move || {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                Ok(())
            });
        }
    }

    /// Moves `pid` in if the pre-exec hook could not; `Err` when it is not in the cgroup.
    pub fn ensure_member(&self, pid: u32) -> io::Result<()> {
        let wanted = self.dir.to_string_lossy().into_owned();
        let inside = fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("0::"))
                .any(|path| wanted.ends_with(path) && path.len() > 1)
        });
        if inside {
            return Ok(());
        }
        (&self.procs).write_all(pid.to_string().as_bytes())
    }

    /// Processes in the cgroup now (zombies are not: a process leaves its cgroup as it
    /// exits).
    pub fn pids(&self) -> Vec<u32> {
        read_words(&self.dir.join("cgroup.procs"))
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Sends `signal` to every process in the cgroup; returns how many got it. A process
    /// forked while this runs may be missed: the stop's later steps (SIGKILL through
    /// `cgroup.kill`, which the kernel applies to forks in progress too) catch it.
    pub fn signal_all(&self, signal: libc::c_int) -> usize {
        self.pids()
            .into_iter()
            // SAFETY: kill has no memory-safety preconditions. The pids were read from the
            // cgroup just now; a member that exited and whose pid was reused in between is
            // the race every process supervisor has, over microseconds.
            .filter(|&pid| unsafe { libc::kill(pid as libc::pid_t, signal) } == 0)
            .count()
    }

    /// SIGKILL to every process of the cgroup, at once, by the kernel (`cgroup.kill`).
    pub fn kill(&self) -> io::Result<()> {
        fs::write(self.dir.join("cgroup.kill"), "1")
    }

    /// CPU time, peak memory and OOM kills so far.
    pub fn usage(&self) -> CgroupUsage {
        let key = |file: &str, key: &str| -> Option<u64> {
            fs::read_to_string(self.dir.join(file))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        };
        CgroupUsage {
            cpu_seconds: key("cpu.stat", "usage_usec ").map(|us| us as f64 / 1e6),
            memory_peak_bytes: fs::read_to_string(self.dir.join("memory.peak"))
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            oom_kills: key("memory.events", "oom_kill ").unwrap_or(0),
        }
    }

    /// Removes the cgroup (possible once it is empty).
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir(&self.dir)
    }
}

/// Whether the cgroup at `dir` still has processes.
#[cfg(feature = "server")]
fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Crash recovery: stops whatever is left in the cgroup of a run that was live when the
/// server died — SIGTERM (and SIGCONT) to each process, `cgroup.kill` after `grace` — and
/// removes the cgroup (and the dead engine's directory above it, once that is empty).
/// Blocks until it is empty or 5 s after the kill. Returns how many processes were in it.
#[cfg(feature = "server")]
pub(crate) fn stop_lost(dir: &Path, grace: std::time::Duration) -> io::Result<usize> {
    use std::time::{Duration, Instant};
    let procs = dir.join("cgroup.procs");
    if !procs.exists() {
        return Ok(0);
    }
    let pids: Vec<u32> = read_words(&procs)
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    for &pid in &pids {
        // SAFETY: kill has no memory-safety preconditions; the pids are the cgroup's now.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
            libc::kill(pid as libc::pid_t, libc::SIGCONT);
        }
    }
    let wait_empty = |until: Instant| {
        while populated(dir) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_empty(crate::deadline::after(grace));
    if populated(dir) {
        fs::write(dir.join("cgroup.kill"), "1")?;
        wait_empty(Instant::now() + Duration::from_secs(5));
    }
    fs::remove_dir(dir)?;
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent); // other lost runs may still be in it: fine
    }
    Ok(pids.len())
}

/// Removes the empty cgroups of engines whose process is gone (a server killed before it
/// could remove its own). A cgroup that still has processes stays: crash recovery stops
/// that run and removes it.
fn remove_dead_engines(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("runstream-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            // Runs' cgroups made just before the crash, before any child was recorded
            // (it exited at the spawn gate): empty. Removing fails, as it should, for
            // one that still has processes.
            for run in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                if run.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(run.path());
                }
            }
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// The directory of the cgroup this process is in, on the cgroup2 mount.
fn own_cgroup_dir() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let (root, mount) = mountinfo
        .lines()
        .find_map(cgroup2_mount)
        .ok_or("no cgroup v2 hierarchy is mounted")?;
    let cgroups = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process is in no cgroup v2 (no 0:: line in /proc/self/cgroup)")?;
    // A mount of part of the hierarchy (in a container) shows paths below its root.
    let relative = own.strip_prefix(root.as_str()).unwrap_or(own);
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// `(root, mount point)` of a cgroup2 line of `/proc/self/mountinfo`:
/// `36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw`.
fn cgroup2_mount(line: &str) -> Option<(String, PathBuf)> {
    let (fields, tail) = line.split_once(" - ")?;
    if tail.split_whitespace().next()? != "cgroup2" {
        return None;
    }
    let fields: Vec<&str> = fields.split_whitespace().collect();
    Some((
        unescape(fields.get(3)?),
        PathBuf::from(unescape(fields.get(4)?)),
    ))
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(u8::is_ascii_digit));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_mountinfo() {
        let line = "36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount(line),
            Some(("/".into(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let v1 = "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount(v1), None);
        let odd = "1 2 0:3 /a\\040b /mnt/c\\134g rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mount(odd),
            Some(("/a b".into(), PathBuf::from("/mnt/c\\g")))
        );
    }
}
