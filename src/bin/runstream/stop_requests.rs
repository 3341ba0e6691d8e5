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
