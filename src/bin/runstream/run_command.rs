//! `runstream run`: one command through the engine, in the foreground.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runstream::{Engine, EngineConfig, From, Level, Next, RunSpec, RunState, RunStatus, Stream};

use crate::args::RunArgs;
use crate::stop_requests;

/// Runs the command; returns the process exit status to use.
pub fn run(args: RunArgs) -> i32 {
    // The output always goes through a log file, so that a consumer slower than the child
    // (a pipe, a busy disk) loses nothing: it reads what the ring let go from the file.
    // Without --log-dir that file is temporary.
    let scratch = match &args.log_dir {
        Some(_) => None,
        None => match ScratchDir::create() {
            Ok(dir) => Some(dir),
            Err(e) => {
                eprintln!("runstream: cannot create a temporary directory for the output: {e}");
                return 1;
            }
        },
    };
    let log_dir = args
        .log_dir
        .clone()
        .or_else(|| scratch.as_ref().map(|d| d.0.clone()));
    let engine = Engine::new(EngineConfig {
        max_concurrent: 1,
        log_dir,
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

    let printed = print_output(&run, args.json);
    let code = if printed.stdout_closed {
        // Like a command killed by SIGPIPE: whoever read our output stopped reading.
        141
    } else {
        exit_code(&printed.status, user_stopped.load(Ordering::SeqCst))
    };
    drop(engine);
    drop(scratch);
    code
}

/// A temporary directory for the run's log, removed when dropped.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn create() -> io::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("runstream-run-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How printing ended.
struct Printed {
    status: RunStatus,
    /// Our stdout was closed by its reader (`| head`): the run was stopped.
    stdout_closed: bool,
}

/// Prints entries as they come: stdout entries to stdout, stderr entries to stderr, each
/// with its own terminator (so `\r` progress bars redraw in place); the engine's warnings
/// to stderr. With `json`, every entry is one JSON line on stdout. Writes are buffered per
/// batch (flushed when the batch ends, and when output switches between stdout and stderr,
/// so their order is kept). If stdout is closed by its reader, the run is stopped, as a
/// pipeline stops on SIGPIPE.
fn print_output(run: &runstream::RunHandle, json: bool) -> Printed {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let mut sub = run.subscribe(From::Start);
    let mut stdout_closed = false;
    loop {
        match sub.next(Duration::from_secs(3600)) {
            Next::Entries(entries) => {
                if stdout_closed {
                    continue; // draining until the stopped run ends
                }
                let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
                let mut err = BufWriter::with_capacity(16 * 1024, stderr.lock());
                let mut last = Stream::Stdout;
                let mut written = Ok(());
                for e in entries.iter() {
                    let target = if json { Stream::Stdout } else { e.stream };
                    if target != last {
                        // Keep stdout and stderr in the order they were written.
                        let _ = if last == Stream::Stdout {
                            out.flush()
                        } else {
                            err.flush()
                        };
                        last = target;
                    }
                    written = if json {
                        out.write_all(e.json().as_bytes())
                            .and_then(|()| out.write_all(b"\n"))
                    } else {
                        match e.stream {
                            Stream::Stdout => out
                                .write_all(e.message.as_bytes())
                                .and_then(|()| out.write_all(e.end.terminator().as_bytes())),
                            Stream::Stderr => {
                                let _ = write!(err, "{}{}", e.message, e.end.terminator());
                                Ok(())
                            }
                            Stream::System if e.level >= Level::Warning => {
                                let _ = writeln!(err, "runstream: {}", e.message);
                                Ok(())
                            }
                            Stream::System => Ok(()),
                        }
                    };
                    if written.is_err() {
                        break;
                    }
                }
                let flushed = written.and_then(|()| out.flush());
                let _ = err.flush();
                if flushed.is_err() {
                    stdout_closed = true;
                    drop(out);
                    run.cancel();
                }
            }
            Next::Gap { from_seq, to_seq } => eprintln!(
                "runstream: {} lines lost: the output log could not be read back",
                to_seq - from_seq + 1
            ),
            Next::Status(_) | Next::Gpu { .. } | Next::Timeout => {}
            Next::End(status) => {
                return Printed {
                    status,
                    stdout_closed,
                }
            }
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
