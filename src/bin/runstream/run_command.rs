//! `runstream run`: one command through the engine, in the foreground.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runstream::{Engine, EngineConfig, From, Level, Next, RunSpec, RunState, RunStatus, Stream};

use crate::args::RunArgs;
use crate::stop_requests;

/// Runs the command; returns the process exit status to use.
pub fn run(args: RunArgs) -> i32 {
    let engine = Engine::new(EngineConfig {
        max_concurrent: 1,
        log_dir: args.log_dir.clone(),
        ..EngineConfig::default()
    });
    let mut spec = RunSpec::new(args.program).args(args.args);
    if let Some(dir) = args.cwd {
        spec = spec.cwd(dir);
    }
    for (k, v) in args.env {
        spec = spec.env(k, v);
    }
    if let Some(t) = args.timeout {
        spec = spec.timeout(t);
    }
    if let Some(g) = args.grace {
        spec = spec.grace(g);
    }
    let run = match engine.submit(spec) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("runstream: {e}");
            return 2;
        }
    };

    // First SIGINT/SIGTERM (Windows: Ctrl-C/Ctrl-Break): graceful cancel. Second: kill.
    let user_stopped = Arc::new(AtomicBool::new(false));
    match stop_requests::listen() {
        Ok(requests) => {
            let run = run.clone();
            let user_stopped = Arc::clone(&user_stopped);
            std::thread::spawn(move || {
                for () in requests {
                    if user_stopped.swap(true, Ordering::SeqCst) {
                        eprintln!("runstream: killing the process group");
                        run.kill();
                    } else {
                        eprintln!(
                            "runstream: stopping ({}; press Ctrl-C again to kill)",
                            stop_requests::GRACEFUL
                        );
                        run.cancel();
                    }
                }
            });
        }
        Err(e) => eprintln!("runstream: cannot handle signals, Ctrl-C will not stop cleanly: {e}"),
    }

    let final_status = print_output(&run, args.json);
    exit_code(&final_status, user_stopped.load(Ordering::SeqCst))
}

/// Prints entries as they come: stdout entries to stdout, stderr entries to stderr, each
/// with its own terminator (so `\r` progress bars redraw in place); the engine's warnings
/// to stderr. With `json`, every entry is one JSON line on stdout.
fn print_output(run: &runstream::RunHandle, json: bool) -> RunStatus {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let mut sub = run.subscribe(From::Start);
    // A closed stdout (e.g. `| head`) must not stop the run early; keep draining.
    let mut out_ok = true;
    loop {
        match sub.next(Duration::from_secs(3600)) {
            Next::Entries(entries) => {
                let mut out = stdout.lock();
                let mut err = stderr.lock();
                for e in entries.iter() {
                    let written = if json {
                        out.write_all(e.json().as_bytes()).and_then(|()| out.write_all(b"\n"))
                    } else {
                        match e.stream {
                            Stream::Stdout => write!(out, "{}{}", e.message, e.end.terminator()),
                            Stream::Stderr => write!(err, "{}{}", e.message, e.end.terminator()),
                            Stream::System if e.level >= Level::Warning => {
                                writeln!(err, "runstream: {}", e.message)
                            }
                            Stream::System => Ok(()),
                        }
                    };
                    out_ok &= written.is_ok();
                }
                if out_ok {
                    out_ok = out.flush().is_ok();
                }
                let _ = err.flush();
            }
            Next::Gap { from_seq, to_seq } => eprintln!(
                "runstream: {} lines lost: the output was read too slowly (use --log-dir to keep everything)",
                to_seq - from_seq + 1
            ),
            Next::Status(_) | Next::Gpu { .. } | Next::Timeout => {}
            Next::End(status) => return status,
        }
    }
}

/// The child's code; 128+N for signal N; 124 on timeout; 130 when the user stopped it;
/// 127/126 when it could not be started.
fn exit_code(status: &RunStatus, user_stopped: bool) -> i32 {
    match status.status {
        RunState::TimedOut => 124,
        RunState::Cancelled if user_stopped => 130,
        _ => match (status.exit_code, status.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => {
                // The engine's own entry already said why ("failed to start: …").
                let not_found = status
                    .error_message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("program not found"));
                if not_found {
                    127
                } else {
                    126
                }
            }
        },
    }
}
