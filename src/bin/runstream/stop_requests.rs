//! Stop requests from outside, one message each: SIGINT and SIGTERM on unix; Ctrl-C and
//! Ctrl-Break through the console control handler on Windows.

use crossbeam_channel::Receiver;

/// What the first request does, for the words printed when it comes.
#[cfg(unix)]
pub const GRACEFUL: &str = "SIGTERM";
/// What the first request does, for the words printed when it comes.
#[cfg(windows)]
pub const GRACEFUL: &str = "CTRL_BREAK";

/// Starts listening; every request from now on arrives on the receiver.
#[cfg(unix)]
pub fn listen() -> Result<Receiver<()>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_channel(&[SIGINT, SIGTERM])
}

/// One message on the receiver for every one of `signals` from now on (their default
/// actions no longer happen).
#[cfg(unix)]
pub fn signal_channel(signals: &[libc::c_int]) -> Result<Receiver<()>, String> {
    let mut signals = signal_hook::iterator::Signals::new(signals).map_err(|e| e.to_string())?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Starts listening; every request from now on arrives on the receiver.
///
/// Ctrl-C and Ctrl-Break are requests. Closing the console window, logging off and shutting
/// down are left to the default handler, which ends runstream at once: the job objects'
/// `KILL_ON_JOB_CLOSE` then takes every run's processes with it (Windows would end
/// runstream a few seconds later anyway).
#[cfg(windows)]
pub fn listen() -> Result<Receiver<()>, String> {
    use std::sync::OnceLock;

    use crossbeam_channel::Sender;
    use windows_sys::core::BOOL;
    use windows_sys::Win32::System::Console::{
        SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_C_EVENT,
    };

    static REQUESTS: OnceLock<Sender<()>> = OnceLock::new();

    // Windows calls this on a thread of its own.
    unsafe extern "system" fn handler(event: u32) -> BOOL {
        match event {
            CTRL_C_EVENT | CTRL_BREAK_EVENT => match REQUESTS.get() {
                Some(tx) => {
                    let _ = tx.send(());
                    1
                }
                None => 0,
            },
            _ => 0,
        }
    }

    let (tx, rx) = crossbeam_channel::unbounded();
    if REQUESTS.set(tx).is_err() {
        return Err("already listening".into());
    }
    // SAFETY: `handler` is a valid handler routine for the whole life of the process.
    if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(rx)
}

/// What asked `runstream run` to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGINT or SIGTERM (Windows: Ctrl-C, Ctrl-Break).
    Stop,
    /// SIGHUP: the terminal went away (closed window, lost ssh session).
    Hangup,
}

impl StopRequest {
    /// The exit status when this request stopped the command: 130 as for Ctrl-C, and 129
    /// (128 + SIGHUP) for a hangup, what a shell reports for a job the hangup ended.
    pub fn exit_status(self) -> i32 {
        match self {
            StopRequest::Stop => 130,
            StopRequest::Hangup => 129,
        }
    }
}

/// Like [`listen`], and SIGHUP too. A run's command sits in a process group of its own,
/// so a hangup never reaches it: were runstream to die of SIGHUP (the default), the
/// command would live on, orphaned. `runstream run` stops it as for SIGTERM instead.
#[cfg(unix)]
pub fn listen_with_hangup() -> Result<Receiver<StopRequest>, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| e.to_string())?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let request = if signal == SIGHUP {
                StopRequest::Hangup
            } else {
                StopRequest::Stop
            };
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// On Windows there is no SIGHUP: closing the console is left to the default handler (see
/// [`listen`]), and the job object takes the command with runstream.
#[cfg(windows)]
pub fn listen_with_hangup() -> Result<Receiver<StopRequest>, String> {
    let requests = listen()?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for () in requests {
            if tx.send(StopRequest::Stop).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
