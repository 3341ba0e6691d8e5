//! Command-line parsing for `runstream`, by hand: the grammar is small and a parser crate
//! would cost more build time than it saves.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: runstream run [OPTIONS] -- PROGRAM [ARGS...]
       runstream serve [OPTIONS]
       runstream gpu
       runstream --version | --help

gpu: prints the GPUs once (name, memory, utilisation, temperature, power, processes).

run: runs one command through the engine in the foreground, output live.
  --json             print every entry as one JSON line on stdout
  --timeout DUR      stop the command after DUR (e.g. 90s, 500ms, 2m, 1h; 0 = none);
                     exit 124
  --grace DUR        time between SIGTERM and SIGKILL when stopping (default 5s)
  --cwd DIR          working directory
  --env KEY=VALUE    set an environment variable (repeatable)
  --log-dir DIR      keep the full output in DIR/{run_id}.jsonl (without it the same
                     file is temporary and removed at exit); if DIR cannot be
                     created or written, nothing is started (exit 2)
  The command's stdin is /dev/null: runs are not interactive.
  Ctrl-C / SIGTERM stops the command gracefully (exit 130), and so does SIGHUP, the
  terminal closing (exit 129); a second one kills it.
  Exit status: the command's own; 128+N if it died by signal N; 124 on timeout;
  127 if it could not be found, 126 if it could not be started; 141 if stdout was
  closed by its reader, 1 if stdout cannot be written (closed, read-only, disk full):
  the command is then stopped, or not started if that is known before.
";

/// What `runstream run` was asked to do.
#[derive(Debug, Default, PartialEq)]
pub struct RunArgs {
    pub json: bool,
    pub timeout: Option<Duration>,
    pub grace: Option<Duration>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub log_dir: Option<PathBuf>,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// A subcommand and its options, or a request for help/version.
#[derive(Debug)]
pub enum Command {
    Run(RunArgs),
    Serve(Vec<String>),
    Gpu,
    Help,
    Version,
}

/// Parses the whole command line (without the program name).
pub fn parse(mut argv: impl Iterator<Item = OsString>) -> Result<Command, String> {
    let Some(first) = argv.next() else {
        return Err("missing command".into());
    };
    match first.to_str() {
        Some("run") => match parse_run(argv) {
            Err(e) if e.is_empty() => Ok(Command::Help),
            other => other.map(Command::Run),
        },
        Some("serve") => argv
            .map(|a| {
                a.into_string()
                    .map_err(|a| format!("argument is not UTF-8: {a:?}"))
            })
            .collect::<Result<_, _>>()
            .map(Command::Serve),
        Some("gpu") => Ok(Command::Gpu),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some("-V" | "--version") => Ok(Command::Version),
        _ => Err(format!("unknown command {first:?}")),
    }
}

fn parse_run(mut argv: impl Iterator<Item = OsString>) -> Result<RunArgs, String> {
    let mut out = RunArgs::default();
    let mut rest = Vec::new();
    while let Some(arg) = argv.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--" {
            rest.extend(argv.by_ref());
            break;
        }
        if !text.starts_with('-') || text == "-" {
            rest.push(arg);
            rest.extend(argv.by_ref());
            break;
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (text.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => argv
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--json" => out.json = true,
            // 0 = no timeout, as `timeout_seconds: 0` in the HTTP API and `timeout 0 CMD`.
            "--timeout" => out.timeout = Some(parse_duration(&value()?)?).filter(|t| !t.is_zero()),
            "--grace" => out.grace = Some(parse_duration(&value()?)?),
            "--cwd" => out.cwd = Some(value()?.into()),
            "--log-dir" => out.log_dir = Some(value()?.into()),
            "--env" => {
                let pair = value()?;
                let (k, v) = pair
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("--env takes KEY=VALUE, got {pair:?}"))?;
                out.env.push((k.to_string(), v.to_string()));
            }
            _ => return Err(format!("unknown option {name}")),
        }
    }
    let mut rest = rest.into_iter();
    out.program = rest.next().ok_or("missing the command to run (after --)")?;
    out.args = rest.collect();
    Ok(out)
}

/// `90s`, `500ms`, `2m`, `1h`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration out of range: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, String> {
        match parse(
            std::iter::once("run")
                .chain(args.iter().copied())
                .map(OsString::from),
        )? {
            Command::Run(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
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
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.env, [("A".to_string(), "b=c".to_string())]);
        assert_eq!(r.program, "python3");
        assert_eq!(r.args, ["-u", "x.py"]);
        // Options after the program belong to the program.
        let r = run(&["echo", "--json"]).unwrap();
        assert_eq!((r.json, r.args.len()), (false, 1));
    }

    #[test]
    fn a_zero_timeout_is_no_timeout() {
        for zero in ["0", "0s", "0ms", "0.0m"] {
            assert_eq!(
                run(&["--timeout", zero, "--", "true"]).unwrap().timeout,
                None
            );
        }
        let r = run(&["--timeout=1ms", "--", "true"]).unwrap();
        assert_eq!(r.timeout, Some(Duration::from_millis(1)));
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(run(&["--bogus", "--", "true"]).is_err());
        assert!(run(&["--timeout"]).is_err());
        assert!(run(&["--env", "novalue", "--", "true"]).is_err());
        assert!(run(&["--json"]).is_err());
    }
}
