//! A lock on a directory of runs, so that two processes never disagree about which runs
//! are live: a second server on a data directory would take the first one's live runs
//! for runs lost in a crash, mark them failed and stop their process groups.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the locked directory.
pub const LOCK_FILE: &str = "runstream.lock";

/// A lock on a directory of runs (`{dir}/runstream.lock`), held until it is dropped.
///
/// - [`DirLock::exclusive`] is what a server takes on its log directory: it alone decides
///   that a run found `running` on disk was lost, so no one else may write runs there.
/// - [`DirLock::shared`] is what `runstream run --log-dir DIR` takes: any number of such
///   runs may write their own files into one directory (run ids never collide), but not
///   while a server owns it, and a server does not start while one of them is live.
///
/// The lock is an `flock(2)` on unix, released by the kernel when the process ends however
/// it ends, so a crash leaves no stale lock. On Windows it is the lock file opened without
/// sharing (exclusive) or shared for reading and writing, with the same effect.
/// The exclusive holder writes its pid into the file, for the messages of those refused.
#[derive(Debug)]
pub struct DirLock {
    /// Kept open: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

#[cfg(unix)]
impl Drop for DirLock {
    fn drop(&mut self) {
        crate::process::forget(std::os::fd::AsRawFd::as_raw_fd(&self._file));
    }
}

/// Why a [`DirLock`] could not be taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum DirLockError {
    /// Another process holds a conflicting lock.
    InUse {
        /// The locked directory.
        dir: PathBuf,
        /// The holders' pids, when they can be found (`/proc/locks`, or the pid the
        /// exclusive holder wrote).
        holders: Vec<u32>,
    },
    /// The lock file could not be created or locked.
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

impl fmt::Display for DirLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirLockError::InUse { dir, holders } => {
                write!(
                    f,
                    "{} is in use by another runstream process",
                    dir.display()
                )?;
                match holders.as_slice() {
                    [] => write!(f, " (pid unknown)"),
                    [pid] => write!(f, " (pid {pid})"),
                    pids => {
                        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                        write!(f, " (pids {})", list.join(", "))
                    }
                }
            }
            DirLockError::Io { path, source } => {
                write!(f, "cannot lock {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for DirLockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirLockError::Io { source, .. } => Some(source),
            DirLockError::InUse { .. } => None,
        }
    }
}

impl DirLock {
    /// Takes `dir` for this process alone (a server), or says who holds it. Creates `dir`
    /// if needed. Never waits.
    pub fn exclusive(dir: &Path) -> Result<DirLock, DirLockError> {
        let mut lock = DirLock::take(dir, true)?;
        // For the message of whoever is refused next (best effort: /proc/locks is better).
        let _ = lock
            ._file
            .set_len(0)
            .and_then(|()| writeln!(lock._file, "{}", std::process::id()));
        Ok(lock)
    }

    /// Takes `dir` together with other shared holders (`runstream run --log-dir`), or says
    /// who holds it exclusively. Creates `dir` if needed. Never waits.
    pub fn shared(dir: &Path) -> Result<DirLock, DirLockError> {
        DirLock::take(dir, false)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take(dir: &Path, exclusive: bool) -> Result<DirLock, DirLockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |source| DirLockError::Io {
            path: path.clone(),
            source,
        };
        crate::logfile::create_private_dir(dir).map_err(io_error)?;
        match sys::open_locked(&path, exclusive) {
            Ok(Some(file)) => {
                #[cfg(unix)]
                crate::process::close_in_children(std::os::fd::AsRawFd::as_raw_fd(&file));
                Ok(DirLock { _file: file, path })
            }
            Ok(None) => Err(DirLockError::InUse {
                dir: dir.to_path_buf(),
                holders: holders(&path),
            }),
            Err(e) => Err(io_error(e)),
        }
    }
}

/// Who holds the lock on `path`: from `/proc/locks` (Linux: every holder, shared ones
/// too), else the pid the exclusive holder wrote into the file.
fn holders(path: &Path) -> Vec<u32> {
    let from_proc = sys::holders_from_proc(path);
    if !from_proc.is_empty() {
        return from_proc;
    }
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text.trim().parse().into_iter().collect()
}

#[cfg(unix)]
mod sys {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Opens `path` and locks it without waiting; `None` when someone else holds it.
    pub fn open_locked(path: &Path, exclusive: bool) -> io::Result<Option<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let mode = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock on a descriptor `file` owns.
            if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
                return Ok(Some(file));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// The pids `/proc/locks` lists for `path`'s inode (Linux; empty elsewhere). Lines
    /// read `1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF`: the device as hex
    /// major:minor, then the inode.
    pub fn holders_from_proc(path: &Path) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let (Ok(meta), Ok(locks)) = (
            std::fs::metadata(path),
            std::fs::read_to_string("/proc/locks"),
        ) else {
            return Vec::new();
        };
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev as _), libc::minor(dev as _));
        let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
        let mut pids: Vec<u32> = locks
            .lines()
            .filter(|l| !l.contains("->")) // a process waiting for the lock, not holding it
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let at = fields.iter().position(|f| *f == wanted)?;
                fields.get(at.checked_sub(1)?)?.parse().ok()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

#[cfg(windows)]
mod sys {
    use super::*;
    use std::os::windows::fs::OpenOptionsExt;

    /// `ERROR_SHARING_VIOLATION`: another handle's share mode does not allow this open.
    const SHARING_VIOLATION: i32 = 32;

    /// Opens `path` with no sharing (exclusive) or shared reading and writing; `None` when
    /// another handle's sharing forbids it.
    pub fn open_locked(path: &Path, exclusive: bool) -> io::Result<Option<File>> {
        // FILE_SHARE_READ | FILE_SHARE_WRITE for shared holders, nothing for the exclusive.
        let share = if exclusive { 0 } else { 0x1 | 0x2 };
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .share_mode(share)
            .open(path)
        {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.raw_os_error() == Some(SHARING_VIOLATION) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Windows has no `/proc/locks`.
    pub fn holders_from_proc(_path: &Path) -> Vec<u32> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclude_an_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirLock::shared(dir.path()).unwrap();
        let b = DirLock::shared(dir.path()).unwrap();
        match DirLock::exclusive(dir.path()) {
            Err(DirLockError::InUse { holders, .. }) => {
                if cfg!(target_os = "linux") {
                    assert_eq!(holders, vec![std::process::id()]);
                }
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop((a, b));
        let x = DirLock::exclusive(dir.path()).unwrap();
        let refused = DirLock::shared(dir.path()).unwrap_err().to_string();
        // On Windows the exclusive holder's file cannot be opened by others, so the pid it
        // wrote there cannot be read: the message says "pid unknown".
        if cfg!(unix) {
            assert!(
                refused.contains(&format!("(pid {})", std::process::id())),
                "{refused}"
            );
        }
        assert!(
            refused.contains("in use by another runstream process"),
            "{refused}"
        );
        assert_eq!(x.path(), dir.path().join(LOCK_FILE));
    }
}
