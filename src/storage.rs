//! Whether the engine's log directory takes writes: every run log and status write
//! reports here, so the server's health can say that the data directory is degraded (a
//! full disk) instead of leaving it to its stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Timestamp;

/// The last failed write to the log directory, until a write succeeds again.
#[derive(Debug, Default)]
pub(crate) struct StorageHealth {
    failure: Mutex<Option<(String, Timestamp)>>,
}

impl StorageHealth {
    /// A write failed: `what` says which and why.
    pub fn failed(&self, what: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some((what, Timestamp::now()));
        }
    }

    /// A write succeeded.
    pub fn ok(&self) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The failure, with when it started, if writes are failing.
    pub fn failure(&self) -> Option<(String, Timestamp)> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes and removes a small file in `dir` (a status file's size): whether the
    /// directory takes writes now. Clears the failure when it does.
    pub fn probe(&self, dir: &Path) -> bool {
        let path = dir.join(format!(".runstream-probe-{}", std::process::id()));
        let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(&[b' '; 4096]));
        let _ = std::fs::remove_file(&path);
        match written {
            Ok(()) => {
                self.ok();
                true
            }
            Err(e) => {
                self.failed(format!("{}: {e}", dir.display()));
                false
            }
        }
    }
}

/// What [`Engine::storage`](crate::Engine::storage) says about the log directory.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StorageReport {
    /// The log directory (`None`: the engine keeps no logs).
    pub log_dir: Option<PathBuf>,
    /// Whether writes there succeed (the last one did, or a probe just did).
    pub writable: bool,
    /// Why the last write failed, while writes fail.
    pub error: Option<String>,
    /// Since when writes fail.
    pub failing_since: Option<Timestamp>,
    /// Free bytes on its file system for this user (unix), if they can be read.
    pub free_bytes: Option<u64>,
}

/// Free bytes for unprivileged users on the file system holding `dir`.
#[cfg(unix)]
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct passed; `path` is NUL-terminated.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
}

/// Not read on Windows.
#[cfg(not(unix))]
pub(crate) fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}
