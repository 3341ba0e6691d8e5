//! The open-file limit: a server raises its own (each connection takes descriptors), and
//! its children get the limit the process started with, as Go's `os/exec` does. Programs
//! that use `select()` break when a descriptor is above 1024, so a child must not inherit
//! a raised soft limit it never asked for.

#[cfg(unix)]
use std::sync::OnceLock;

/// The soft and hard `RLIMIT_NOFILE` from before [`raise_open_file_limit`] raised them.
#[cfg(unix)]
static ORIGINAL: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises this process's soft limit on open files to its hard limit (at most 2^20), as
/// Go's runtime and most servers do; returns the soft limit before and after when it
/// changed. Runs spawned afterwards get the soft limit from before, not the raised one.
/// On Windows (no such limit) it does nothing.
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            let original = limit;
            // Some systems report an unlimited hard limit that setrlimit then refuses.
            let wanted = limit.rlim_max.min(1 << 20);
            if wanted <= limit.rlim_cur {
                return None;
            }
            // Recorded first: a child spawned from now on must get it back.
            let original = *ORIGINAL.get_or_init(|| original);
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return None;
            }
            // rlim_t is u64 on Linux, not on every unix.
            #[allow(clippy::unnecessary_cast)]
            Some((original.rlim_cur as u64, wanted as u64))
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Makes `command`'s child start with the open-file limit this process started with, if
/// [`raise_open_file_limit`] changed it (otherwise the child inherits ours, which is that
/// one). The child sets it between fork and exec: lowering one's own soft limit cannot
/// fail and is async-signal-safe.
#[cfg(unix)]
pub(crate) fn restore_open_file_limit(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;

    let Some(&original) = ORIGINAL.get() else {
        return;
    };
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe, on a value it
    // owns; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &original);
            Ok(())
        });
    }
}
