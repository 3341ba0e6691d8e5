//! `runstream serve`: the HTTP server, until SIGINT/SIGTERM (Windows: Ctrl-C/Ctrl-Break).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use runstream::server::{Catalogue, Server};
use runstream::Engine;

use crate::serve_args::ServeArgs;
use crate::{reload_requests, stop_requests, token};

/// Serves until a signal; returns the exit status.
pub fn run(args: ServeArgs) -> i32 {
    // Before any thread starts (the environment is not thread-safe); clap has read it.
    token::scrub_env();
    let token_file = args.token_file().map(token::read_file).transpose();
    let mut args = args.into_config();
    match token_file {
        Ok(Some(token)) => args.server.token = Some(token),
        Ok(None) => {}
        Err(e) => {
            eprintln!("runstream: {e}");
            return 2;
        }
    }
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
    if let Err(e) = create_private_dir(&args.server.data_dir.join("runs")) {
        eprintln!(
            "runstream: cannot create data directory {}: {e}",
            args.server.data_dir.display()
        );
        return 1;
    }
    warn_if_shared(&args.server.data_dir.join("runs"));
    let grace = args.engine.default_grace;
    let data_dir = args.server.data_dir.clone();
    // Processes that leave a run (setsid, double fork) stay our children: found, stopped
    // and reaped here rather than by init.
    #[cfg(target_os = "linux")]
    if let Err(e) = runstream::reap_orphans() {
        log::warn!("cannot become a child subreaper, orphans of runs go to init: {e}");
    }
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
    // Each connection takes descriptors, and the usual soft limit of 1024 would run out
    // near 500 clients, well before --max-connections. Runs get the limit from before.
    if let Some((before, after)) = runstream::raise_open_file_limit() {
        log::debug!("open file limit raised from {before} to {after}");
    }
    let open_to_any_site =
        args.server.cors_origin.as_deref() == Some("*") && args.server.token.is_none();
    let engine = Arc::new(Engine::new(args.engine));
    let containment = engine.containment();
    match (&containment.cgroup_dir, &containment.reason) {
        (Some(dir), _) => log::info!("each run in a cgroup of its own under {}", dir.display()),
        (None, why) => log::warn!(
            "runs are held by their process groups (a process can leave with setsid): {}",
            why.as_deref().unwrap_or("no cgroups here")
        ),
    }
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

/// Creates `dir` and its missing parents, each only for its owner (0700): the data dir
/// holds every run's output and parameters. An existing directory keeps its mode (it may
/// be shared on purpose, like /tmp); the files in it are 0600 anyway.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Says so when other users may enter `dir` (one made before runstream created it 0700,
/// say): the files of older runs in it may be readable by them.
fn warn_if_shared(dir: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).map_or(0, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            log::warn!(
                "{} is open to other users (mode {:o}): runs' files hold their output and \
                 parameters; new ones are 0600, older ones may not be (chmod 700 it)",
                dir.display(),
                mode & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}
