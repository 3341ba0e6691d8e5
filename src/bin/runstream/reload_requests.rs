//! Reload requests from outside: SIGHUP on unix (what `systemctl reload` sends), one
//! message each. Registering the handler also means SIGHUP can no longer end the
//! server (its default action would), whatever sends it: a closed terminal included.

use crossbeam_channel::Receiver;

/// Starts listening; every SIGHUP from now on arrives on the receiver.
#[cfg(unix)]
pub fn listen() -> Result<Receiver<()>, String> {
    crate::stop_requests::signal_channel(&[signal_hook::consts::SIGHUP])
}

/// Windows has no SIGHUP: the receiver never gets anything (reload with
/// `POST /api/modules/reload`).
#[cfg(windows)]
pub fn listen() -> Result<Receiver<()>, String> {
    Ok(crossbeam_channel::never())
}
