//! `runstream serve`: the HTTP server, until SIGINT/SIGTERM (Windows: Ctrl-C/Ctrl-Break).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runstream::server::{Catalogue, Server, ServerConfig};
use runstream::{Engine, EngineConfig};

use crate::args::parse_duration;
use crate::stop_requests;

pub const USAGE: &str = "\
usage: runstream serve [OPTIONS]
  --bind ADDR            IP:PORT or NAME:PORT to listen on (default 127.0.0.1:8787;
                         port 0 picks one)
  --modules FILE         module catalogue (JSON)
  --data-dir DIR         runs and their logs (default ./runstream-data)
  --token TOKEN          require Authorization: Bearer TOKEN (or RUNSTREAM_TOKEN);
                         needed to bind anything but loopback
  --allow-commands       allow POST /api/runs with a raw argv
  --no-cgroups           hold runs by their process groups only, even where a cgroup
                         could be made for each (see docs/PLATFORMS.md)
  --cors-origin ORIGIN   allow a browser app on ORIGIN (or *) to call the API
  --max-concurrent N     runs live at once (default: CPU count); the rest queue
  --grace DUR            default time between SIGTERM and SIGKILL (default 5s)
  --keep-alive DUR       SSE keep-alive interval (default 15s)
  --max-sse-clients N    open streams at most (default 512)
  --max-connections N    open connections at most, streams included (default 1024);
                         more are answered 503
  --max-log-size SIZE    a run's log file at most (e.g. 500M, 2G; 0 = no limit;
                         default 1G): beyond it the output is kept in memory only
";

struct ServeArgs {
    server: ServerConfig,
    engine: EngineConfig,
    modules: Option<PathBuf>,
    data_dir: PathBuf,
}

fn parse(options: Vec<String>) -> Result<ServeArgs, String> {
    let mut server = ServerConfig::default();
    let mut engine = EngineConfig::default();
    let mut modules = None;
    let mut data_dir = PathBuf::from("runstream-data");
    server.token = std::env::var("RUNSTREAM_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let mut it = options.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name} takes a number, got {v:?}"))
        };
        match name.as_str() {
            "--bind" => server.bind = parse_bind(&value()?)?,
            "--modules" => modules = Some(PathBuf::from(value()?)),
            "--data-dir" => data_dir = PathBuf::from(value()?),
            "--token" => server.token = Some(value()?).filter(|t| !t.is_empty()),
            "--allow-commands" => server.allow_commands = true,
            "--no-cgroups" => engine.cgroups = false,
            "--cors-origin" => server.cors_origin = Some(parse_origin(&value()?)?),
            "--max-concurrent" => engine.max_concurrent = number(value()?)?.max(1),
            "--grace" => engine.default_grace = parse_duration(&value()?)?,
            "--keep-alive" => {
                server.keep_alive = parse_duration(&value()?)?.max(Duration::from_millis(10))
            }
            "--max-sse-clients" => server.max_sse_clients = number(value()?)?,
            "--max-connections" => server.max_connections = number(value()?)?.max(1),
            "--max-log-size" => {
                engine.max_log_bytes = Some(parse_size(&value()?)?).filter(|&n| n > 0)
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {name}")),
        }
    }
    engine.log_dir = Some(data_dir.join("runs"));
    Ok(ServeArgs {
        server,
        engine,
        modules,
        data_dir,
    })
}

/// `IP:PORT`, or `NAME:PORT` resolved now (IPv4 preferred: `localhost` then serves
/// `http://127.0.0.1:PORT` as well as `http://localhost:PORT`).
fn parse_bind(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let bad = |why: String| format!("--bind takes IP:PORT or NAME:PORT, got {text:?}{why}");
    let addrs: Vec<_> = text
        .to_socket_addrs()
        .map_err(|e| bad(format!(": {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad(": the name has no address".into()))
}

/// `*`, or an origin as browsers send it: `scheme://host[:port]`, no path (a trailing `/`
/// is dropped: it would never match).
fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/');
    if origin == "*" {
        return Ok(origin.to_string());
    }
    let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
    });
    if valid {
        Ok(origin.to_string())
    } else {
        Err(format!(
            "--cors-origin takes * or an origin like https://app.example:3000, got {text:?}"
        ))
    }
}

/// `1234`, `500K`, `500M`, `2G`, `1T` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("--max-log-size takes a size like 500M or 2G, got {text:?}");
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Serves until a signal; returns the exit status.
pub fn run(options: Vec<String>) -> i32 {
    let args = match parse(options) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("runstream: {e}\n\n{USAGE}");
            return 2;
        }
    };
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
    if let Err(e) = std::fs::create_dir_all(args.data_dir.join("runs")) {
        eprintln!(
            "runstream: cannot create data directory {}: {e}",
            args.data_dir.display()
        );
        return 1;
    }
    let grace = args.engine.default_grace;
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
    #[cfg(unix)]
    raise_open_file_limit();
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
    log::info!("data in {}", args.data_dir.display());
    if open_to_any_site {
        log::warn!(
            "--cors-origin * without --token: any web site a visitor of this machine opens \
             can use this API through their browser"
        );
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

#[cfg(test)]
mod tests {
    use super::{parse_bind, parse_origin, parse_size};

    #[test]
    fn binds_take_names_and_origins_are_normalised() {
        assert_eq!(
            parse_bind("localhost:8787").unwrap(),
            "127.0.0.1:8787".parse().unwrap()
        );
        assert_eq!(parse_bind("[::1]:1").unwrap(), "[::1]:1".parse().unwrap());
        assert!(parse_bind("localhost").is_err(), "a port is needed");
        assert_eq!(
            parse_origin("http://app.example:3000/").unwrap(),
            "http://app.example:3000"
        );
        assert_eq!(parse_origin("*").unwrap(), "*");
        for bad in ["app.example", "ftp://x", "https://x/path", "https://"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3KB"), Ok(3 << 10));
        for bad in ["", "M", "1X", "-1G", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
