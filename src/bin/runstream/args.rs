//! The command line of `runstream`, declared with clap: the subcommands and `run`'s
//! options (`serve`'s are in `serve_args.rs`). Defaults shown in `--help` are read from the
//! library's `Default` impls, never written here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand};
use runstream::EngineConfig;

use crate::client;
use crate::serve_args::ServeArgs;
use crate::values::{parse_env, HumanDuration};

/// Run long jobs as child processes, capture their output live, stream it over SSE, stop
/// them cleanly.
#[derive(Debug, Parser)]
#[command(
    name = "runstream",
    version,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = CLIENT_NOTES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand and its options.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command in the foreground, its output live
    Run(RunArgs),
    /// Serve the HTTP API, the SSE streams and the web page until SIGINT/SIGTERM
    Serve(ServeArgs),
    /// Print the GPUs once (name, memory, utilisation, temperature, power, processes)
    #[command(
        after_help = "NVML comes from the NVIDIA driver (libnvidia-ml.so.1, nvml.dll), \
or from the library named by RUNSTREAM_NVML_LIBRARY.\n\
Exit status: 0; 1 when no GPU can be read (the reason on stderr)."
    )]
    Gpu,
    /// List a server's runs (queued and running ones; --all for every run)
    Ps(client::ps::PsArgs),
    /// Start a module on a server and print its run id (--follow: stream its output)
    Start(client::start::StartArgs),
    /// Print a run's output (-f: follow it until the run ends)
    Logs(client::logs::LogsArgs),
    /// Cancel runs on a server (SIGTERM to each run's process group, SIGKILL after its grace)
    Cancel(client::cancel::CancelArgs),
    /// List a server's modules and their parameters
    Modules(client::modules::ModulesArgs),
}

const CLIENT_NOTES: &str = "\
ps, start, logs, cancel and modules talk to a running `runstream serve` (--url, --token, or
RUNSTREAM_URL, RUNSTREAM_TOKEN). Their exit statuses: 0 done; 2 bad command line; 65 the
server refused the request (bad parameter, run already finished); 66 no such run or
module; 69 the server cannot be reached; 77 wrong or missing token; 70 anything else.
`start --follow` exits with the run's status, as `run` does.
";

const RUN_NOTES: &str = "\
The command's stdin is /dev/null: runs are not interactive.
Ctrl-C / SIGTERM stops the command gracefully (exit 130), and so does SIGHUP, the
terminal closing (exit 129); a second one kills it.

Exit status: the command's own; 128+N if it died by signal N; 124 on timeout;
127 if it could not be found, 126 if it was found but could not be started (its #!
interpreter is missing, say); 141 if stdout was
closed by its reader, 1 if stdout cannot be written (closed, read-only, disk full):
the command is then stopped, or not started if that is known before; 2 for a bad
option or an unusable --log-dir.
";

/// What `runstream run` was asked to do.
#[derive(Debug, Args)]
#[command(after_help = RUN_NOTES)]
pub struct RunArgs {
    /// Print every entry as one JSON line on stdout
    #[arg(long)]
    pub json: bool,
    /// When the command ends, print each metric found in its output (loss=0.1,
    /// loss: 0.1, {'loss': 0.1}) with its last, min and max, on stderr
    #[arg(long)]
    pub metrics: bool,
    /// Stop the command after DUR (e.g. 90s, 500ms, 2m, 1h; 0 = none); exit 124
    #[arg(long, value_name = "DUR")]
    timeout: Option<HumanDuration>,
    /// Time between SIGTERM and SIGKILL when stopping
    #[arg(long, value_name = "DUR", default_value_t = HumanDuration(EngineConfig::default().default_grace))]
    grace: HumanDuration,
    /// Working directory
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable (repeatable)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Keep the full output in DIR/{run_id}.jsonl (without it the same file is temporary
    /// and removed at exit); if DIR cannot be created or written, nothing is started
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// The command and its arguments (options after PROGRAM belong to it)
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true)]
    command: Vec<OsString>,
}

impl RunArgs {
    /// The timeout; `0` means none, as `timeout_seconds: 0` in the HTTP API and
    /// `timeout 0 CMD`.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(|t| t.0).filter(|t| !t.is_zero())
    }

    /// Time between SIGTERM and SIGKILL.
    pub fn grace(&self) -> Duration {
        self.grace.0
    }

    /// The program and its arguments.
    pub fn command(&self) -> (&OsString, &[OsString]) {
        let (program, args) = self.command.split_first().expect("clap requires PROGRAM");
        (program, args)
    }
}

/// Parses the command line; on `--help`/`--version` prints and exits 0, on a bad command
/// line says what is wrong in one line, then the usage, and exits 2.
pub fn parse() -> Cli {
    Cli::try_parse().unwrap_or_else(|e| std::process::exit(report(&e)))
}

/// Prints a clap outcome that is not a parsed command line; returns the exit status.
fn report(e: &clap::Error) -> i32 {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            // clap trims the newline after an `after_help` text.
            if !e.render().to_string().ends_with('\n') {
                println!();
            }
        }
        _ => eprintln!(
            "runstream: {}\n\n{}\n\nFor more information, try '--help'.",
            describe(e),
            usage(e)
        ),
    }
    e.exit_code()
}

/// One line naming the bad option or value.
fn describe(e: &clap::Error) -> String {
    if let (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) =
        (e.kind(), e.get(ContextKind::InvalidArg))
    {
        return match e.get(ContextKind::SuggestedArg) {
            Some(ContextValue::String(hint)) => {
                format!("unknown option {arg} (did you mean {hint}?)")
            }
            _ => format!("unknown option {arg}"),
        };
    }
    // clap's own first paragraph names the option ("invalid value 'soon' for '--timeout
    // <DUR>': ...", "the following required arguments were not provided:\n  <PROGRAM>"),
    // joined into one line; its "error: " prefix goes, as every message here starts
    // "runstream: ".
    let text = e.to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let line = first.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// The usage line of the subcommand the error is about (clap keeps it in some errors
/// only), e.g. `usage: runstream run [OPTIONS] <PROGRAM>...`.
fn usage(e: &clap::Error) -> String {
    let usage = match e.get(ContextKind::Usage) {
        Some(ContextValue::StyledStr(usage)) => usage.to_string(),
        _ => {
            let mut cli = Cli::command();
            cli.build();
            let named = std::env::args().nth(1);
            match named.and_then(|name| cli.find_subcommand_mut(&name).cloned()) {
                Some(mut sub) => sub.render_usage().to_string(),
                None => cli.render_usage().to_string(),
            }
        }
    };
    usage.replacen("Usage:", "usage:", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("runstream").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn run(args: &[&str]) -> Result<RunArgs, clap::Error> {
        match parse(&[&["run"], args].concat())? {
            Command::Run(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_options_and_program() {
        let r = run(&[
            "--json",
            "--timeout=2s",
            "--env",
            "A=b=c",
            "--",
            "python3",
            "-u",
            "x.py",
        ])
        .unwrap();
        assert!(r.json);
        assert_eq!(r.timeout(), Some(Duration::from_secs(2)));
        assert_eq!(r.env, [("A".to_string(), "b=c".to_string())]);
        let (program, args) = r.command();
        assert_eq!(program, "python3");
        assert_eq!(args, ["-u", "x.py"]);
        // Options after the program belong to the program.
        let r = run(&["echo", "--json"]).unwrap();
        assert_eq!((r.json, r.command().1.len()), (false, 1));
        // The grace defaults to the engine's.
        assert_eq!(r.grace(), EngineConfig::default().default_grace);
    }

    #[test]
    fn a_zero_timeout_is_no_timeout() {
        for zero in ["0", "0s", "0ms", "0.0m"] {
            assert_eq!(
                run(&["--timeout", zero, "--", "true"]).unwrap().timeout(),
                None
            );
        }
        let r = run(&["--timeout=1ms", "--", "true"]).unwrap();
        assert_eq!(r.timeout(), Some(Duration::from_millis(1)));
    }

    #[test]
    fn bad_options_are_errors_that_name_the_option() {
        let message = |args: &[&str]| describe(&run(args).unwrap_err());
        assert_eq!(
            message(&["--bogus", "--", "true"]),
            "unknown option --bogus"
        );
        assert!(message(&["--timeout"]).contains("--timeout"));
        assert!(message(&["--timeout", "soon", "--", "true"]).contains("--timeout"));
        assert!(message(&["--env", "novalue", "--", "true"]).contains("--env"));
        assert!(message(&["--json"]).contains("PROGRAM"));
        // An empty string is a program name, not a request for help.
        assert_eq!(run(&[""]).unwrap().command().0, "");
        assert_eq!(parse(&[]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn help_lists_the_subcommands_and_the_defaults() {
        let help = Cli::command().render_long_help().to_string();
        for line in ["run ", "serve ", "gpu "] {
            assert!(help.contains(line), "{help}");
        }
        let mut cli = Cli::command();
        let run_help = cli
            .find_subcommand_mut("run")
            .unwrap()
            .render_help()
            .to_string();
        assert!(run_help.contains("[default: 5s]"), "{run_help}");
        assert!(run_help.contains("stdin is /dev/null"), "{run_help}");
    }
}
