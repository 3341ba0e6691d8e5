//! `runstream serve`: the HTTP server, until SIGINT/SIGTERM (Windows: Ctrl-C/Ctrl-Break).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use runstream::server::{Catalogue, Server};
use runstream::Engine;

use crate::serve_args::ServeArgs;
use crate::{reload_requests, stop_requests};

/// Serves until a signal; returns the exit status.
pub fn run(args: ServeArgs) -> i32 {
    let args = args.into_config();
    let catalogue = match &args.modules {
        Some(path) => match Catalogue::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("runstream: {e}");
                return 2;
            }
        },
        None => Catalogue::default(),
    };
    if let Err(e) = std::fs::create_dir_all(args.server.data_dir.join("runs")) {
        eprintln!(
            "runstream: cannot create data directory {}: {e}",
            args.server.data_dir.display()
        );
        return 1;
    }
    let grace = args.engine.default_grace;
    let data_dir = args.server.data_dir.clone();
    let signal_rx = match stop_requests::listen() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runstream: cannot handle signals: {e}");
            return 1;
        }
    };
    let reload_rx = match reload_requests::listen() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runstream: cannot handle SIGHUP: {e}");
            return 1;
        }
    };
    #[cfg(unix)]
    raise_open_file_limit();
    let open_to_any_site =
        args.server.cors_origin.as_deref() == Some("*") && args.server.token.is_none();
    let engine = Arc::new(Engine::new(args.engine));
    let server = match Server::start(Arc::clone(&engine), catalogue, args.server) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("runstream: {e}");
            return 2;
        }
    };
    println!("listening on http://{}", server.addr());
    let _ = std::io::stdout().flush();
    log::info!("data in {}", data_dir.display());
    if open_to_any_site {
        log::warn!(
            "--cors-origin * without --token: any web site a visitor of this machine opens \
             can use this API through their browser"
        );
    }

    {
        // The outcome (what changed, or why the old catalogue stays) is logged by the reload.
        let server = Arc::clone(&server);
        std::thread::spawn(move || {
            for () in reload_rx {
                let _ = server.reload_modules();
            }
        });
    }

    if signal_rx.recv().is_err() {
        return 1;
    }
    log::info!("shutting down: stopping every run (a second signal kills them at once)");
    let stopper = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || server.shutdown(grace + Duration::from_secs(2)))
    };
    std::thread::spawn(move || {
        if signal_rx.recv().is_ok() {
            log::warn!("second signal: killing every process group");
            for run in engine.list() {
                run.kill();
            }
            for run in engine.list() {
                run.wait_timeout(Duration::from_secs(2));
            }
            std::process::exit(1);
        }
    });
    let _ = stopper.join();
    log::info!("stopped");
    0
}

/// Raises the soft limit on open files to the hard one, as Go's runtime and most servers
/// do: each connection takes two descriptors, and the usual soft limit of 1024 would run
/// out near 500 clients, well before `--max-connections`.
#[cfg(unix)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        // Some systems report an unlimited hard limit that setrlimit then refuses.
        let wanted = limit.rlim_max.min(1 << 20);
        if wanted <= limit.rlim_cur {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            log::debug!("open file limit raised from {before} to {wanted}");
        }
    }
}
