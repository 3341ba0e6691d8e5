//! Keeping `serve`'s token away from the runs: `RUNSTREAM_TOKEN` is taken out of the
//! environment (every run's child would inherit it), and `--token-file` reads it from a
//! file (an argument is visible to every local user in `/proc/PID/cmdline`).

use std::path::Path;

/// The variable that may hold the token.
pub const ENV_VAR: &str = "RUNSTREAM_TOKEN";

/// Removes `RUNSTREAM_TOKEN` from this process's environment (clap has read it), so that
/// no child inherits it. Its value is also overwritten where the process's initial
/// environment keeps it, which `/proc/PID/environ` shows (readable by the same user,
/// hence by every run). Call it before any other thread starts: the environment is not
/// thread-safe.
pub fn scrub_env() {
    #[cfg(unix)]
    // SAFETY: no other thread runs yet (see above). getenv returns a pointer to the value
    // inside the environment block, `strlen` bytes long and writable (it lives in this
    // process's memory, on the initial stack); it is overwritten in place and then the
    // variable is removed, so nothing reads it afterwards.
    unsafe {
        let value = libc::getenv(c"RUNSTREAM_TOKEN".as_ptr());
        if !value.is_null() {
            std::ptr::write_bytes(value, b'x', libc::strlen(value));
        }
    }
    std::env::remove_var(ENV_VAR);
}

/// The token in `path`: its first line, without the line end and surrounding blanks.
pub fn read_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: the file's first line is empty",
            path.display()
        ));
    }
    Ok(token.to_string())
}
