//! The listening socket, bound with a backlog that absorbs bursts of connections.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// Connections the kernel may hold completed but not yet accepted. std binds with 128: a
/// page opening hundreds of EventSource streams at once (a dashboard reload) overflowed
/// it, and an overflowing connection waits for a SYN retransmit (1 s, 3 s, ...) or is
/// dropped. Capped by `/proc/sys/net/core/somaxconn`, which the kernel applies anyway.
/// Unix only: on Windows the socket keeps std's backlog.
#[cfg(unix)]
pub(crate) const LISTEN_BACKLOG: i32 = 1024;

/// Binds `addr` for tiny_http, on unix with a backlog of `LISTEN_BACKLOG` (at most
/// `somaxconn`).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // listen(2) on a socket that already listens only changes its backlog.
        // SAFETY: a valid socket descriptor owned by `listener`.
        if unsafe { libc::listen(listener.as_raw_fd(), backlog()) } != 0 {
            log::warn!(
                "cannot raise the listen backlog: {}",
                io::Error::last_os_error()
            );
        }
    }
    Ok(listener)
}

/// [`LISTEN_BACKLOG`], or less where the system allows less.
#[cfg(unix)]
fn backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&max| max > 0)
        .map_or(LISTEN_BACKLOG, |max| max.min(LISTEN_BACKLOG))
}
