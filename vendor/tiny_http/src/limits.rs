//! runstream patch: limits that keep one client from holding the server's threads, file
//! descriptors or memory (upstream has none: a client could send an endless header line,
//! or open connections and never send a request).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;

/// Limits on what one connection may take. The defaults suit a server on the open network.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most connections served at once; more are answered 503 and closed. Default 1024.
    pub max_connections: usize,
    /// Longest time from a request's first byte to the end of its headers; a client slower
    /// than this gets 408 and is closed. Default 30 s.
    pub header_timeout: Duration,
    /// How long a connection may sit with no request arriving and no response in progress
    /// before it is closed (noticed up to one read tick later). Default 60 s.
    pub idle_timeout: Duration,
    /// Longest request line or header line, in bytes (414 or 431 beyond). Default 8 KiB.
    pub max_line_bytes: usize,
    /// Most header lines in one request (431 beyond). Default 100.
    pub max_headers: usize,
    /// Renders the body of the server's own error answers (400, 408, 414, 431, 503) from
    /// the status code and a reason; sent as `application/json`. `None`: an empty body.
    pub error_body: Option<fn(u16, &str) -> String>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_line_bytes: 8 * 1024,
            max_headers: 100,
            error_body: None,
        }
    }
}

impl ConnectionLimits {
    /// How often a blocked header read wakes up to check the deadlines. It is also the
    /// longest a request body may stall before reading it fails.
    pub(crate) fn read_tick(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 2).max(Duration::from_millis(10))
    }

    /// The server's own error answer (the connection is closed after it; tiny_http does
    /// not let a response set `Connection`).
    pub(crate) fn error_response(&self, status: u16, reason: &str) -> crate::ResponseBox {
        use crate::{Header, Response, StatusCode};
        match self.error_body {
            Some(render) => Response::from_string(render(status, reason))
                .with_status_code(StatusCode(status))
                .with_header(
                    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap(),
                )
                .boxed(),
            None => Response::empty(StatusCode(status)).boxed(),
        }
    }
}

/// Counts the connections being served; a slot is given back when its guard drops.
#[derive(Clone, Default)]
pub(crate) struct ConnectionCount(Arc<AtomicUsize>);

/// One counted connection.
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionCount {
    /// A slot, or `None` when `max` are already taken.
    pub fn take(&self, max: usize) -> Option<ConnectionSlot> {
        let taken = self.0.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(Arc::clone(&self.0)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers connections over the limit with 503 on one thread of its own, so the accept
/// loop never blocks on a client. It reads (briefly) what the client sent first: closing a
/// socket with unread input resets it, and the client would see a reset, not the 503.
pub(crate) struct Rejecter {
    queue: SyncSender<Connection>,
}

impl Rejecter {
    pub fn start(limits: Arc<ConnectionLimits>) -> Rejecter {
        // Bounded: when even this backs up, connections are simply closed.
        let (queue, incoming) = sync_channel::<Connection>(64);
        let started = std::thread::Builder::new()
            .name("tiny-http-rejecter".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                for mut connection in incoming {
                    let _ = connection.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = connection.set_write_timeout(Some(Duration::from_millis(200)));
                    let mut head = Vec::new();
                    // Bounded in time too, or a client dripping bytes would stall every
                    // rejection behind it.
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while head.len() < 16 * 1024
                        && Instant::now() < deadline
                        && !head.windows(4).any(|w| w == b"\r\n\r\n")
                    {
                        match connection.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reason = "too many connections; try again later";
                    let mut writer = Vec::new();
                    let _ = limits.error_response(503, reason).raw_print(
                        &mut writer,
                        crate::HTTPVersion(1, 1),
                        &[],
                        false,
                        None,
                    );
                    let _ = connection.write_all(&writer);
                    let _ = connection.shutdown(std::net::Shutdown::Write);
                }
            });
        if let Err(e) = started {
            log::error!("cannot start the thread that rejects connections: {}", e);
        }
        Rejecter { queue }
    }

    pub fn reject(&self, connection: Connection) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(connection) {
            log::warn!("too many connections: closing one unanswered");
        }
    }
}
