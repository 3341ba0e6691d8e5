//! `runstream serve`'s options, declared with clap. Each default is read from
//! `ServerConfig::default()` or `EngineConfig::default()`, so `--help` shows what the
//! library does when an option is left out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use runstream::server::ServerConfig;
use runstream::EngineConfig;

use crate::values::{parse_bind, parse_origin, ByteSize, HumanDuration};

/// What `runstream serve` was asked to do.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// IP:PORT or NAME:PORT to listen on (port 0 picks one)
    #[arg(long, value_name = "ADDR", value_parser = parse_bind,
          default_value_t = ServerConfig::default().bind)]
    bind: SocketAddr,
    /// Module catalogue (JSON); SIGHUP or POST /api/modules/reload reads it again
    /// without stopping any run
    #[arg(long, value_name = "FILE")]
    modules: Option<PathBuf>,
    /// Runs and their logs (DIR/runs/{run_id}.json, .jsonl)
    #[arg(long, value_name = "DIR", default_value_os_t = ServerConfig::default().data_dir)]
    data_dir: PathBuf,
    /// Require `Authorization: Bearer TOKEN`; needed to bind anything but loopback.
    /// Every local user can read it in the process list: prefer --token-file, or
    /// RUNSTREAM_TOKEN (taken out of the environment at start, so runs do not inherit it)
    #[arg(long, env = "RUNSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from FILE's first line (kept out of the process list); it replaces
    /// --token and RUNSTREAM_TOKEN
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow POST /api/runs with a raw argv
    #[arg(long)]
    allow_commands: bool,
    /// Hold runs by their process groups only, even where a cgroup could be made for each
    /// (see docs/PLATFORMS.md)
    #[arg(long)]
    no_cgroups: bool,
    /// Allow a browser app on ORIGIN (or *) to call the API
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    cors_origin: Option<String>,
    /// Runs live at once, the rest queue (the default is the number of CPUs)
    #[arg(long, value_name = "N",
          default_value_t = EngineConfig::default().max_concurrent)]
    max_concurrent: usize,
    /// Default time between SIGTERM and SIGKILL
    #[arg(long, value_name = "DUR",
          default_value_t = HumanDuration(EngineConfig::default().default_grace))]
    grace: HumanDuration,
    /// SSE keep-alive interval
    #[arg(long, value_name = "DUR",
          default_value_t = HumanDuration(ServerConfig::default().keep_alive))]
    keep_alive: HumanDuration,
    /// Open streams at most
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_sse_clients)]
    max_sse_clients: usize,
    /// Open connections at most, streams included; more are answered 503
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_connections)]
    max_connections: usize,
    /// A run's log file at most (e.g. 500M, 2G; 0 = no limit): beyond it the output is
    /// kept in memory only
    #[arg(long, value_name = "SIZE",
          default_value_t = ByteSize(EngineConfig::default().max_log_bytes.unwrap_or(0)))]
    max_log_size: ByteSize,
}

/// The settings `runstream serve` starts with.
pub struct ServeConfig {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    pub modules: Option<PathBuf>,
}

impl ServeArgs {
    /// The file `--token-file` names, read by `serve` before it starts.
    pub fn token_file(&self) -> Option<&std::path::Path> {
        self.token_file.as_deref()
    }

    /// The library's settings: its defaults, with what the command line says on top.
    pub fn into_config(self) -> ServeConfig {
        let data_dir = self.data_dir;
        let server = ServerConfig {
            bind: self.bind,
            token: self.token.filter(|t| !t.is_empty()),
            allow_commands: self.allow_commands,
            cors_origin: self.cors_origin,
            keep_alive: self.keep_alive.0.max(Duration::from_millis(10)),
            max_sse_clients: self.max_sse_clients,
            max_connections: self.max_connections.max(1),
            data_dir: data_dir.clone(),
            modules_file: self.modules.clone(),
            ..ServerConfig::default()
        };
        let engine = EngineConfig {
            max_concurrent: self.max_concurrent.max(1),
            default_grace: self.grace.0,
            max_log_bytes: Some(self.max_log_size.0).filter(|&n| n > 0),
            log_dir: Some(data_dir.join("runs")),
            cgroups: !self.no_cgroups,
            ..EngineConfig::default()
        };
        ServeConfig {
            server,
            engine,
            modules: self.modules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::{CommandFactory, Parser};

    fn serve(args: &[&str]) -> Result<ServeConfig, clap::Error> {
        let argv = ["runstream", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(s) => Ok(s.into_config()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_options_the_library_defaults_apply() {
        std::env::remove_var("RUNSTREAM_TOKEN");
        let c = serve(&[]).unwrap();
        let (server, engine) = (ServerConfig::default(), EngineConfig::default());
        assert_eq!(c.server.bind, server.bind);
        assert_eq!(c.server.token, None);
        assert_eq!(c.server.data_dir, server.data_dir);
        assert_eq!(c.server.keep_alive, server.keep_alive);
        assert_eq!(c.server.max_sse_clients, server.max_sse_clients);
        assert_eq!(c.server.max_connections, server.max_connections);
        assert_eq!(c.engine.max_concurrent, engine.max_concurrent);
        assert_eq!(c.engine.default_grace, engine.default_grace);
        assert_eq!(c.engine.max_log_bytes, engine.max_log_bytes);
        assert_eq!(c.engine.log_dir, Some(server.data_dir.join("runs")));
        assert_eq!(c.modules, None);
    }

    #[test]
    fn every_option_is_applied() {
        let c = serve(&[
            "--bind=localhost:0",
            "--modules",
            "m.json",
            "--data-dir",
            "/d",
            "--token",
            "t",
            "--allow-commands",
            "--cors-origin",
            "http://app.example:3000/",
            "--max-concurrent",
            "0",
            "--grace",
            "2m",
            "--keep-alive",
            "1ms",
            "--max-sse-clients",
            "7",
            "--max-connections",
            "0",
            "--max-log-size",
            "0",
        ])
        .unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.modules, Some(PathBuf::from("m.json")));
        assert_eq!(
            c.server.modules_file, c.modules,
            "reloads read the same file"
        );
        assert_eq!(c.engine.log_dir, Some(PathBuf::from("/d/runs")));
        assert_eq!(c.server.token.as_deref(), Some("t"));
        assert!(c.server.allow_commands);
        assert_eq!(
            c.server.cors_origin.as_deref(),
            Some("http://app.example:3000")
        );
        assert_eq!(c.engine.max_concurrent, 1, "at least one");
        assert_eq!(c.engine.default_grace, Duration::from_secs(120));
        assert_eq!(
            c.server.keep_alive,
            Duration::from_millis(10),
            "at least 10 ms"
        );
        assert_eq!(c.server.max_sse_clients, 7);
        assert_eq!(c.server.max_connections, 1, "at least one");
        assert_eq!(c.engine.max_log_bytes, None, "0 = no limit");
        // An empty token is no token.
        assert_eq!(serve(&["--token", ""]).unwrap().server.token, None);
        let size = serve(&["--max-log-size", "500M"]).unwrap();
        assert_eq!(size.engine.max_log_bytes, Some(500 << 20));
    }

    #[test]
    fn bad_values_name_the_option() {
        for (args, option) in [
            (&["--bind", "localhost"][..], "--bind"),
            (&["--cors-origin", "ftp://x"], "--cors-origin"),
            (&["--max-log-size", "1X"], "--max-log-size"),
            (&["--grace", "soon"], "--grace"),
            (&["--max-concurrent", "many"], "--max-concurrent"),
            (&["--bogus"], "--bogus"),
        ] {
            let e = serve(args).err().expect("an error").to_string();
            assert!(e.contains(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn help_lists_every_option_with_its_default() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        let (server, engine) = (ServerConfig::default(), EngineConfig::default());
        for default in [
            format!("[default: {}]", server.bind),
            format!("[default: {}]", server.data_dir.display()),
            format!("[default: {}]", engine.max_concurrent),
            "[default: 5s]".to_string(),
            "[default: 15s]".to_string(),
            format!("[default: {}]", server.max_sse_clients),
            format!("[default: {}]", server.max_connections),
            "[default: 1G]".to_string(),
        ] {
            assert!(help.contains(&default), "{default} in {help}");
        }
        for option in [
            "--bind",
            "--modules",
            "--data-dir",
            "--token",
            "--allow-commands",
            "--cors-origin",
            "--max-concurrent",
            "--grace",
            "--keep-alive",
            "--max-sse-clients",
            "--max-connections",
            "--max-log-size",
        ] {
            assert!(help.contains(option), "{option} in {help}");
        }
    }
}
