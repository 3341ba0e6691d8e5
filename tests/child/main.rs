//! `runstream-test-child`: a small program the integration tests spawn, so they behave the
//! same on every platform and need neither `sh` nor coreutils (duct tests its process
//! handling the same way). Not part of the product.
//!
//! Its arguments are steps, done in order:
//!
//! - `out TEXT`, `err TEXT`: write TEXT to stdout / stderr and flush. TEXT may hold `\n`,
//!   `\r`, `\t`, `\\` and `\xHH` (any byte: invalid UTF-8 too); nothing is added.
//! - `sleep MS`: sleep MS milliseconds.
//! - `exit CODE`: exit with CODE now.
//! - `touch PATH`: create an empty file.
//! - `ignore-stop`: ignore the engine's graceful stop (SIGTERM; on Windows CTRL_BREAK).
//! - `on-stop CODE`: on that stop, write `stop requested\n` to stdout and exit with CODE.
//! - `spawn N ARGS…`: start this program again with the next N arguments (stdout and
//!   stderr shared, so it holds the pipes), write `spawned PID\n`, and go on without
//!   waiting for it. `spawn-new-group N ARGS…` does the same with the grandchild leading a
//!   process group of its own (unix: `setpgid`; Windows: `CREATE_NEW_PROCESS_GROUP`).
//! - `spawn-breakaway N ARGS…` (Windows): try to start it outside the job
//!   (`CREATE_BREAKAWAY_FROM_JOB`); write `spawned PID\n` or `breakaway refused\n`.
//!
//! With no `exit`, it exits 0 after the last step.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    while let Some(step) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{step} needs a value")))
        };
        match step.as_str() {
            "out" => write(&mut std::io::stdout(), &unescape(&value())),
            "err" => write(&mut std::io::stderr(), &unescape(&value())),
            "sleep" => std::thread::sleep(Duration::from_millis(number(&value()).max(0) as u64)),
            "exit" => std::process::exit(number(&value()) as i32),
            "touch" => {
                std::fs::File::create(value()).unwrap_or_else(|e| fail(&e.to_string()));
            }
            "ignore-stop" => stop::ignore(),
            "on-stop" => stop::exit_on_stop(number(&value()) as i32),
            "spawn" | "spawn-new-group" | "spawn-breakaway" => {
                let count = number(&value()) as usize;
                let child_args: Vec<String> = args.by_ref().take(count).collect();
                spawn(&step, &child_args);
            }
            _ => fail(&format!("unknown step {step:?}")),
        }
    }
}

fn write(to: &mut dyn Write, bytes: &[u8]) {
    // A closed pipe is not this program's problem; the test sees what arrived.
    let _ = to.write_all(bytes).and_then(|()| to.flush());
}

fn number(text: &str) -> i64 {
    text.parse()
        .unwrap_or_else(|_| fail(&format!("not a number: {text:?}")))
}

fn fail(message: &str) -> ! {
    eprintln!("runstream-test-child: {message}");
    std::process::exit(101)
}

/// `\n`, `\r`, `\t`, `\\` and `\xHH` to bytes; everything else as it is.
fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hex = bytes
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                    None => out.extend_from_slice(b"\\x"),
                }
            }
            other => out.push(other),
        }
        i += 2;
    }
    out
}

fn spawn(how: &str, args: &[String]) {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&e.to_string()));
    let mut command = Command::new(exe);
    command.args(args).stdin(Stdio::null());
    match how {
        "spawn-new-group" => stop::new_group(&mut command),
        "spawn-breakaway" => stop::breakaway(&mut command),
        _ => {}
    }
    match command.spawn() {
        Ok(child) => write(
            &mut std::io::stdout(),
            format!("spawned {}\n", child.id()).as_bytes(),
        ),
        Err(e) if how == "spawn-breakaway" => write(
            &mut std::io::stdout(),
            format!("breakaway refused ({e})\n").as_bytes(),
        ),
        Err(e) => fail(&format!("cannot spawn: {e}")),
    }
}

#[cfg(unix)]
mod stop {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::sync::atomic::{AtomicI32, Ordering};

    static EXIT_CODE: AtomicI32 = AtomicI32::new(0);

    pub fn ignore() {
        // SAFETY: SIG_IGN is a valid disposition for SIGTERM.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }

    extern "C" fn on_term(_: libc::c_int) {
        let message = b"stop requested\n";
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(1, message.as_ptr().cast(), message.len());
            libc::_exit(EXIT_CODE.load(Ordering::SeqCst));
        }
    }

    pub fn exit_on_stop(code: i32) {
        EXIT_CODE.store(code, Ordering::SeqCst);
        let handler: extern "C" fn(libc::c_int) = on_term;
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
    }

    pub fn new_group(command: &mut Command) {
        command.process_group(0);
    }

    pub fn breakaway(_command: &mut Command) {
        super::fail("spawn-breakaway is Windows-only");
    }
}

#[cfg(windows)]
mod stop {
    use std::os::windows::process::CommandExt;
    use std::process::Command;
    use std::sync::atomic::{AtomicI32, Ordering};

    use windows_sys::core::BOOL;
    use windows_sys::Win32::System::Console::{
        SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_C_EVENT,
    };
    use windows_sys::Win32::System::Threading::{
        CREATE_BREAKAWAY_FROM_JOB, CREATE_NEW_PROCESS_GROUP,
    };

    /// `i32::MIN`: ignore; anything else: exit with it.
    static EXIT_CODE: AtomicI32 = AtomicI32::new(i32::MIN);

    // Windows calls this on a thread of its own.
    unsafe extern "system" fn handler(event: u32) -> BOOL {
        if event != CTRL_BREAK_EVENT && event != CTRL_C_EVENT {
            return 0;
        }
        let code = EXIT_CODE.load(Ordering::SeqCst);
        if code != i32::MIN {
            super::write(&mut std::io::stdout(), b"stop requested\n");
            std::process::exit(code);
        }
        1
    }

    fn install() {
        // SAFETY: `handler` is valid for the life of the process.
        if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
            super::fail(&std::io::Error::last_os_error().to_string());
        }
    }

    pub fn ignore() {
        EXIT_CODE.store(i32::MIN, Ordering::SeqCst);
        install();
    }

    pub fn exit_on_stop(code: i32) {
        EXIT_CODE.store(code, Ordering::SeqCst);
        install();
    }

    pub fn new_group(command: &mut Command) {
        command.creation_flags(CREATE_NEW_PROCESS_GROUP);
    }

    pub fn breakaway(command: &mut Command) {
        command.creation_flags(CREATE_BREAKAWAY_FROM_JOB);
    }
}
