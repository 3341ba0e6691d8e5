//! Server settings; every default is written once, in `impl Default`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings for [`Server`](super::Server).
///
/// ```
/// use runstream::server::ServerConfig;
/// let config = ServerConfig::default();
/// assert_eq!(config.bind.to_string(), "127.0.0.1:8787");
/// assert_eq!(config.max_sse_clients, 512);
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on. Defaults to `127.0.0.1:8787`. Anything but loopback needs a
    /// `token`.
    pub bind: SocketAddr,
    /// When set, every `/api` request and `/metrics` needs `Authorization: Bearer TOKEN`
    /// (or `?token=TOKEN`, for EventSource). Defaults to `None`.
    pub token: Option<String>,
    /// Whether `POST /api/runs` (raw argv) is allowed. Defaults to `false`.
    pub allow_commands: bool,
    /// An origin allowed to call the API from a browser (CORS), or `*`. Defaults to none.
    pub cors_origin: Option<String>,
    /// Where runs and their logs are kept (`runs/{run_id}.json`, `.jsonl`). Defaults to
    /// `./runstream-data`.
    pub data_dir: PathBuf,
    /// The catalogue file that a reload ([`Server::reload_modules`](super::Server::reload_modules),
    /// SIGHUP, `POST /api/modules/reload`) reads again. Defaults to `None`: nothing to
    /// reload.
    pub modules_file: Option<PathBuf>,
    /// How often an idle SSE stream gets a `: keep-alive` comment. Defaults to 15 s.
    pub keep_alive: Duration,
    /// Most SSE connections at once; more get 503. Defaults to 512.
    pub max_sse_clients: usize,
    /// Largest request body; larger ones get 413. Defaults to 1 MiB.
    pub max_body_bytes: usize,
    /// The `retry:` hint sent to EventSource clients. Defaults to 2 s.
    pub sse_retry: Duration,
    /// Most connections served at once (streams included); more are answered 503 and
    /// closed. Defaults to 1024.
    pub max_connections: usize,
    /// Longest time from a request's first byte to the end of its headers; slower
    /// clients get 408 and are closed, so they cannot hold a thread. Defaults to 30 s.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit with no request and nothing being
    /// answered before it is closed. Defaults to 60 s.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8787)),
            token: None,
            allow_commands: false,
            cors_origin: None,
            data_dir: PathBuf::from("runstream-data"),
            modules_file: None,
            keep_alive: Duration::from_secs(15),
            max_sse_clients: 512,
            max_body_bytes: 1024 * 1024,
            sse_retry: Duration::from_secs(2),
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = ServerConfig::default();
        assert_eq!(c.bind, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(
            (c.token, c.allow_commands, c.cors_origin),
            (None, false, None)
        );
        assert_eq!(c.data_dir, PathBuf::from("runstream-data"));
        assert_eq!(c.modules_file, None);
        assert_eq!(c.keep_alive, Duration::from_secs(15));
        assert_eq!(c.max_sse_clients, 512);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.sse_retry, Duration::from_secs(2));
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
    }
}
