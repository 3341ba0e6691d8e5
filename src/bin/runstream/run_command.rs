//! `runstream run`: one command through the engine, in the foreground.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runstream::{Engine, EngineConfig, From, Next, RunSpec, RunState, RunStatus, SpawnErrorKind};

use crate::args::RunArgs;
use crate::printer::{Printer, Style};
use crate::stop_requests::{self, StopRequest};
use crate::terminal_view;

/// Runs the command; returns the process exit status to use.
pub fn run(args: RunArgs) -> i32 {
    // Refuse before starting anything when the output has nowhere to go: the run would go
    // on with its output silently lost.
    if let Some(e) = stdout_check::unusable() {
        eprintln!("runstream: cannot write to stdout: {e}");
        return 1;
    }
    // Whoever asked for the log to be kept should learn what is wrong with the directory
    // before anything starts (the engine would refuse the run with a less specific error).
    // Shared: several `runstream run`s may write their runs into one directory, but not
    // into a server's, whose crash recovery would take a live run here for a lost one.
    let _dir_lock = match &args.log_dir {
        Some(dir) => match check_log_dir(dir).and_then(|()| {
            runstream::DirLock::shared(dir).map_err(|e| match e {
                runstream::DirLockError::InUse { .. } => format!("{e}: a server owns it"),
                _ => e.to_string(),
            })
        }) {
            Ok(lock) => Some(lock),
            Err(reason) => {
                eprintln!(
                    "runstream: cannot use --log-dir {}: {reason}",
                    dir.display()
                );
                return 2;
            }
        },
        None => None,
    };

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
        // The log is how a slow reader of our stdout loses nothing: it must hold it all.
        max_log_bytes: None,
        ..EngineConfig::default()
    });
    let (program, program_args) = args.command();
    let mut spec = RunSpec::new(program).args(program_args).grace(args.grace());
    if let Some(dir) = &args.cwd {
        spec = spec.cwd(dir);
    }
    for (k, v) in &args.env {
        spec = spec.env(k, v);
    }
    if let Some(t) = args.timeout() {
        spec = spec.timeout(t);
    }
    // As a container's PID 1 (or under one that does not reap), orphans of the command
    // come to us: reap them, as tini does. Elsewhere, as a subreaper, they come to us too.
    #[cfg(target_os = "linux")]
    if let Err(e) = runstream::reap_orphans() {
        eprintln!("runstream: cannot reap orphans (PR_SET_CHILD_SUBREAPER): {e}");
    }
    // Listening before the command starts: a signal that comes as soon as it runs must
    // stop it, not end runstream and leave it behind.
    let requests = stop_requests::listen_with_hangup();
    let run = match engine.submit(spec) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("runstream: {e}");
            return 2;
        }
    };

    // First SIGINT/SIGTERM/SIGHUP (Windows: Ctrl-C/Ctrl-Break): graceful cancel. Second:
    // kill. The first one's exit status is kept (0: none came).
    let stopped_with = Arc::new(AtomicI32::new(0));
    match requests {
        Ok(requests) => {
            let run = run.clone();
            let stopped_with = Arc::clone(&stopped_with);
            // On the live view, a message takes the bottom row (a progress bar's, which
            // its next frame redraws below) instead of being written into it.
            let row = if terminal_view::same_terminal() {
                terminal_view::ERASE_ROW
            } else {
                ""
            };
            std::thread::spawn(move || {
                for request in requests {
                    let first = stopped_with
                        .compare_exchange(
                            0,
                            request.exit_status(),
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok();
                    // Stop first, say it after: after a hangup the terminal may be gone,
                    // and stderr with it (a write gets EIO; `eprintln!` would panic).
                    if first {
                        run.cancel();
                        let _ = writeln!(
                            io::stderr(),
                            "{row}runstream: stopping ({}; press Ctrl-C again to kill)",
                            stop_requests::GRACEFUL
                        );
                    } else {
                        run.kill();
                        let _ = writeln!(io::stderr(), "{row}runstream: killing the process group");
                    }
                }
            });
        }
        Err(e) => eprintln!("runstream: cannot handle signals, Ctrl-C will not stop cleanly: {e}"),
    }

    let printed = print_output(&run, args.json);
    if args.metrics {
        eprint!("{}", crate::metrics_table::render(&run.metrics()));
    }
    let stopped_with = stopped_with.load(Ordering::SeqCst);
    let code = match &printed.stdout_error {
        // A hangup usually takes the terminal, and our stdout, with it: the hangup is
        // what ended the run.
        _ if stopped_with == StopRequest::Hangup.exit_status() => stopped_with,
        // Like a command killed by SIGPIPE: whoever read our output stopped reading.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => 141,
        // Like coreutils' "write error" (the printer said why).
        Some(_) => 1,
        None => {
            let status = &printed.status;
            exit_code(
                status.status,
                status.exit_code,
                status.signal,
                status.spawn_error,
                stopped_with,
            )
        }
    };
    drop(engine);
    drop(scratch);
    code
}

/// Creates `dir` if needed, then creates and removes a file in it: what the engine will
/// do with the run's log.
fn check_log_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let probe = dir.join(format!(".runstream-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("cannot create a file in it: {e}"))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove {}: {e}", probe.display()))
}

/// Whether fd 1 can take the output, checked before anything starts because std hides the
/// answer later: a write to a closed or read-only fd 1 fails with EBADF, and `io::stdout()`
/// turns EBADF into success (a missing stdout is treated as a sink), so the output would
/// be lost without a word.
#[cfg(unix)]
mod stdout_check {
    /// EBADF, what a write to fd 1 would get, if fd 1 was closed at start or cannot be
    /// written.
    pub fn unusable() -> Option<std::io::Error> {
        // SAFETY: F_GETFL only reads the flags of fd 1.
        let flags = unsafe { libc::fcntl(1, libc::F_GETFL) };
        let writable = flags != -1 && flags & libc::O_ACCMODE != libc::O_RDONLY;
        (closed_at_start() || !writable).then(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Rust's runtime reopens a closed fd 0, 1 or 2 on /dev/null before `main` (so that a
    /// file opened later cannot take its place), so a closed fd 1 can only be seen before
    /// that: by an ELF constructor (`.init_array`), which the loader runs before `main`.
    #[cfg(target_os = "linux")]
    fn closed_at_start() -> bool {
        use std::sync::atomic::{AtomicBool, Ordering};

        static CLOSED: AtomicBool = AtomicBool::new(false);

        extern "C" fn check() {
            // SAFETY: F_GETFD only reads the flags of fd 1; it fails only if fd 1 is closed.
            let closed = unsafe { libc::fcntl(1, libc::F_GETFD) } == -1;
            CLOSED.store(closed, Ordering::Relaxed);
        }

        #[used]
        #[link_section = ".init_array"]
        static CHECK: extern "C" fn() = check;

        CLOSED.load(Ordering::Relaxed)
    }

    /// Elsewhere a closed fd 1 is not noticed: it is /dev/null by the time `main` runs.
    #[cfg(not(target_os = "linux"))]
    fn closed_at_start() -> bool {
        false
    }
}

#[cfg(not(unix))]
mod stdout_check {
    pub fn unusable() -> Option<std::io::Error> {
        None
    }
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
    /// Writing to our stdout failed, and the run was stopped: `BrokenPipe` when its reader
    /// went away (`| head`), anything else when it cannot take the output (a full disk).
    stdout_error: Option<io::Error>,
}

/// Prints entries as they come (see [`Printer`]). If a write to stdout fails, the run is
/// stopped, as a pipeline stops on SIGPIPE: the output has nowhere to go. Any failure but
/// the reader going away is said on stderr.
fn print_output(run: &runstream::RunHandle, json: bool) -> Printed {
    let mut printer = Printer::new(Style {
        json,
        timestamps: false,
    });
    let mut sub = run.subscribe(From::Start);
    let mut stdout_error = None;
    loop {
        match sub.next(Duration::from_secs(3600)) {
            Next::Entries(entries) => {
                if stdout_error.is_some() {
                    continue; // draining until the stopped run ends
                }
                if let Err(e) = printer.print(&entries) {
                    // A reader that went away is the normal end of `| head`: nothing to say.
                    if e.kind() != io::ErrorKind::BrokenPipe {
                        eprintln!("runstream: cannot write to stdout: {e}");
                    }
                    run.cancel();
                    stdout_error = Some(e);
                }
            }
            Next::Gap { from_seq, to_seq } => eprintln!(
                "runstream: {} lines lost: the output log could not be read back",
                to_seq - from_seq + 1
            ),
            Next::Status(_) | Next::Gpu { .. } | Next::Timeout => {}
            Next::End(status) => {
                printer.finish();
                return Printed {
                    status,
                    stdout_error,
                };
            }
        }
    }
}

/// The child's code; 128+N for signal N; 124 on timeout; `stopped_with` (130, or 129 for
/// a hangup) when the user stopped it; 127/126 when it could not be started. Also the exit
/// status of `runstream start --follow`.
pub fn exit_code(
    state: RunState,
    exit_code: Option<i32>,
    signal: Option<i32>,
    spawn_error: Option<SpawnErrorKind>,
    stopped_with: i32,
) -> i32 {
    match state {
        RunState::TimedOut => 124,
        RunState::Cancelled if stopped_with != 0 => stopped_with,
        _ => match (exit_code, signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            // The engine's own entry already said why ("failed to start: …"); the kind
            // decides between 127 (not found) and 126 (found, could not start).
            (None, None) => spawn_error.map_or(126, SpawnErrorKind::exit_status),
        },
    }
}
