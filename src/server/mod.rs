//! The HTTP server (feature `server`): JSON API, SSE streams and the web page on
//! tiny_http, one thread per request and per stream.
//!
//! ```no_run
//! use std::sync::Arc;
//! use runstream::{Engine, EngineConfig};
//! use runstream::server::{Catalogue, Server, ServerConfig};
//!
//! let engine = Arc::new(Engine::new(EngineConfig {
//!     log_dir: Some("runstream-data/runs".into()),
//!     ..EngineConfig::default()
//! }));
//! let server = Server::start(engine, Catalogue::default(), ServerConfig::default()).unwrap();
//! println!("listening on http://{}", server.addr());
//! server.wait();
//! ```

mod api;
mod auth;
mod config;
mod download;
mod http;
mod live_catalogue;
mod metrics;
mod modules;
mod page;
mod run_json;
mod run_metrics;
mod same_origin;
mod sse;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::ServerConfig;
pub use http::ApiError;
pub use live_catalogue::{ReloadError, ReloadReport};
pub use modules::{BuildError, Catalogue, Module, ParamType, Parameter};
pub use run_json::run_json;

use crate::Engine;
use live_catalogue::LiveCatalogue;

/// Longest request line or header line: 414 or 431 beyond (a URL with a token and a
/// query fits many times over).
const MAX_HEADER_LINE: usize = 8 * 1024;
/// Most header lines in one request: 431 beyond.
const MAX_HEADERS: usize = 100;

/// What every request handler shares.
pub(crate) struct AppState {
    engine: Arc<Engine>,
    catalogue: LiveCatalogue,
    config: ServerConfig,
    started: Instant,
    sse_clients: AtomicUsize,
    shutting_down: AtomicBool,
}

/// A running server. Stop it with [`Server::shutdown`].
pub struct Server {
    state: Arc<AppState>,
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Loads the runs on disk (from the engine's log directory), binds `config.bind` and
    /// starts answering requests on a background thread.
    ///
    /// Refuses to bind a non-loopback address without a token.
    pub fn start(
        engine: Arc<Engine>,
        catalogue: Catalogue,
        config: ServerConfig,
    ) -> Result<Server, String> {
        if !config.bind.ip().is_loopback() && config.token.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "refusing to listen on {} without a token: anyone who can reach it could run \
                 programs here. Pass --token (or RUNSTREAM_TOKEN), or bind 127.0.0.1",
                config.bind
            ));
        }
        catalogue.check()?;
        if let Some(dir) = engine.config().log_dir.clone() {
            let (loaded, lost) = store::recover(&engine, &dir, engine.config().default_grace);
            if loaded > 0 {
                log::info!(
                    "loaded {loaded} runs from {} ({lost} were live when the server stopped)",
                    dir.display()
                );
            }
        }
        let http = tiny_http::Server::new(tiny_http::ServerConfig {
            addr: tiny_http::ConfigListenAddr::IP(vec![config.bind]),
            ssl: None,
            limits: tiny_http::ConnectionLimits {
                max_connections: config.max_connections,
                header_timeout: config.header_timeout,
                idle_timeout: config.idle_timeout,
                max_line_bytes: MAX_HEADER_LINE,
                max_headers: MAX_HEADERS,
                error_body: Some(http::connection_error_body),
            },
        })
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| "the server is not on an IP socket".to_string())?;
        let http = Arc::new(http);
        let state = Arc::new(AppState {
            engine,
            catalogue: LiveCatalogue::new(catalogue, config.modules_file.clone()),
            config,
            started: Instant::now(),
            sse_clients: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
        });
        let accept = {
            let (http, state) = (Arc::clone(&http), Arc::clone(&state));
            std::thread::Builder::new()
                .name("runstream-http".into())
                .spawn(move || accept_loop(&http, &state))
                .map_err(|e| format!("cannot start the server thread: {e}"))?
        };
        Ok(Server {
            state,
            http,
            addr,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The address it listens on (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine it serves.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.state.engine
    }

    /// Reads the modules file (`ServerConfig::modules_file`) again and serves the new
    /// catalogue from now on; `SIGHUP` to `runstream serve` and `POST /api/modules/reload`
    /// call this. Nothing that runs is touched: live and queued runs keep the spec they
    /// were submitted with (a removed module's runs go on), and only runs started
    /// afterwards see new or changed modules. When the file cannot be read or checked,
    /// the old catalogue stays and the error says why (it is also logged and shown in
    /// `/api/health` until a reload succeeds).
    pub fn reload_modules(&self) -> Result<ReloadReport, ReloadError> {
        self.state.catalogue.reload()
    }

    /// Open SSE streams now.
    pub fn sse_clients(&self) -> usize {
        self.state.sse_clients.load(Ordering::SeqCst)
    }

    /// Graceful stop: stop accepting connections, cancel every run (each with its grace
    /// period; whatever is alive at `deadline` is killed), let every stream send its
    /// `complete`, then return. Run states are already on disk.
    pub fn shutdown(&self, deadline: Duration) {
        self.state.shutting_down.store(true, Ordering::SeqCst);
        self.http.unblock();
        self.state.engine.shutdown(deadline);
        let until = Instant::now() + Duration::from_secs(5);
        while self.sse_clients() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(accept) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = accept.join();
        }
    }

    /// Blocks until the server stops accepting (after [`Server::shutdown`]).
    pub fn wait(&self) {
        let accept = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(accept) = accept {
            let _ = accept.join();
        }
    }
}

fn accept_loop(http: &tiny_http::Server, state: &Arc<AppState>) {
    loop {
        match http.recv() {
            Ok(request) => {
                // Handed over through a channel, so that when no thread can be made the
                // request is still here to be answered (a closure that failed to spawn
                // is dropped, and an unanswered request gets an empty 500).
                let (tx, rx) = crossbeam_channel::bounded(1);
                let _ = tx.send(request);
                let state_for_thread = Arc::clone(state);
                let handed = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name("runstream-request".into())
                    .spawn(move || {
                        if let Ok(request) = handed.recv() {
                            api::handle(&state_for_thread, request);
                        }
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start a request thread: {e}");
                    if let Ok(request) = rx.try_recv() {
                        let error = ApiError::resources(format!(
                            "cannot create a thread for the request: {e}"
                        ));
                        let _ = request.respond(http::json_response(error.status, &error.body()));
                    }
                }
            }
            Err(e) => {
                if !state.shutting_down.load(Ordering::SeqCst) {
                    log::error!("accepting connections failed: {e}");
                }
                return;
            }
        }
        if state.shutting_down.load(Ordering::SeqCst) {
            return;
        }
    }
}
