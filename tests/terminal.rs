//! `runstream run` on a real terminal: the binary runs in a pseudo-terminal opened here,
//! its output goes through the emulation in `screen.rs`, and the final screen is checked
//! character for character.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::screen::Screen;
use crate::util::PATIENCE;

const WIDTH: u16 = 100;

/// A pseudo-terminal: the master side (read by a thread, chunks on a channel) and the
/// slave side, handed to the child as stdout and/or stderr.
struct Pty {
    output: mpsc::Receiver<Vec<u8>>,
    slave: OwnedFd,
}

impl Pty {
    fn open() -> Pty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 50,
            ws_col: WIDTH,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the ints passed; name and termios may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // Not inherited by processes other tests spawn meanwhile: one holding the slave
        // side would keep the master from seeing the end of the output.
        for fd in [master, slave] {
            // SAFETY: F_SETFD on fds openpty just returned.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: openpty returned these fds, and nothing else owns them.
        let (mut master, slave) =
            unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every slave fd is closed (the process exited).
            while let Ok(n @ 1..) = master.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Pty { output: rx, slave }
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }
}

/// Feeds the pty's output into a screen; `until` waits for text to show.
struct Terminal {
    pty: Pty,
    screen: Screen,
    raw: Vec<u8>,
}

impl Terminal {
    fn new(pty: Pty) -> Terminal {
        Terminal {
            pty,
            screen: Screen::new(WIDTH as usize),
            raw: Vec::new(),
        }
    }

    /// Reads output until the screen shows `text` (bounded by PATIENCE).
    fn until(&mut self, text: &str) {
        while !self.screen.text().contains(text) {
            let chunk = self.pty.output.recv_timeout(PATIENCE).unwrap_or_else(|e| {
                panic!(
                    "waiting for {text:?} ({e}); screen:\n{}",
                    self.screen.text()
                )
            });
            self.feed(&chunk);
        }
    }

    /// Reads output until the process side of the pty is closed, then waits for `child`.
    fn finish(&mut self, mut child: Child) -> i32 {
        drop(std::mem::replace(
            &mut self.pty.slave,
            File::open("/dev/null").unwrap().into(),
        ));
        while let Ok(chunk) = self.pty.output.recv_timeout(PATIENCE) {
            self.feed(&chunk);
        }
        child.wait().unwrap().code().unwrap_or(-1)
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.raw.extend_from_slice(chunk);
        self.screen.feed(chunk);
    }
}

fn runstream_run(pty: &Pty, cwd: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runstream"))
        .arg("run")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(pty.stdio())
        .stderr(pty.stdio())
        .spawn()
        .unwrap()
}

fn has_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The one run log (`{run_id}.jsonl`) in `dir`.
fn run_log(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap()
}

/// The screen a terminal shows for these entries (the run's log, in its order): every
/// line that ended, none of the `\r` frames drawn over.
fn expected_screen(log_dir: &Path) -> String {
    let log = run_log(log_dir);
    let mut rows = Vec::new();
    let mut line = String::new();
    for text in std::fs::read_to_string(log).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(text).unwrap();
        if e["stream"] == "system" {
            continue;
        }
        line.push_str(e["message"].as_str().unwrap());
        match e["end"].as_str().unwrap() {
            "lf" => rows.push(std::mem::take(&mut line)),
            "cr" => line.clear(),
            _ => {}
        }
    }
    rows.join("\n")
}

#[test]
fn the_train_example_ends_with_intact_lines_and_no_stale_bar() {
    if !has_python() {
        println!("SKIPPED the train example on a terminal: python3 is not on PATH");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/modules");
    let logs = tempfile::tempdir().unwrap();
    let pty = Pty::open();
    let child = runstream_run(
        &pty,
        &root,
        &[
            "--log-dir",
            logs.path().to_str().unwrap(),
            "--",
            "python3",
            "-u",
            "train.py",
            "--epochs",
            "3",
            "--steps",
            "40",
        ],
    );
    let mut terminal = Terminal::new(pty);
    assert_eq!(terminal.finish(child), 0);
    let screen = terminal.screen.text();
    // Character for character what a terminal shows for the lines in the order runstream
    // read them: no line keeps characters of a bar drawn before it, no bar frame is left.
    assert_eq!(
        screen,
        expected_screen(logs.path()),
        "raw: {:?}",
        String::from_utf8_lossy(&terminal.raw)
    );
    // The same lines as the program run directly. (Their order across stdout and stderr
    // is the read order: a bar's last frame and the next print are written microseconds
    // apart, and two pipes cannot tell which came first; see the next test for writes
    // that are apart in time.)
    let mut rows: Vec<&str> = screen.lines().collect();
    rows.sort_unstable();
    let mut direct = vec![
        "training 3 epochs of 40 steps, lr 0.001, optimizer adam",
        "WARNING: no GPU found, training on CPU",
        "100%|##########| 40/40",
        "100%|##########| 40/40",
        "100%|##########| 40/40",
        "epoch 1/3 loss 2.0086",
        "epoch 2/3 loss 1.6068",
        "epoch 3/3 loss 1.2922",
        "training complete",
    ];
    direct.sort_unstable();
    assert_eq!(rows, direct, "{screen}");
}

#[test]
fn a_progress_bar_on_stderr_stays_below_prints_on_stdout_in_write_order() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // Each step waits for the test to see the previous one on the screen: the writes are
    // apart in time, so their order across the two pipes is known.
    let script = r#"
        exec 3< "$GO"
        go() { read _ <&3; }
        echo start; go
        printf '\r 25%%|#   | 1/4' >&2; go
        printf '\033[32mstep 1 ok\033[0m\n'; go
        printf '\r 50%%|##  | 2/4' >&2; go
        printf '\r 75%%|### | 3/4' >&2; go
        echo 'step 3 ok'; go
        printf '\r100%%|####| 4/4\n' >&2; go
        echo done
    "#;
    // Opened for reading and writing, so that neither side blocks in open(); one line
    // written lets the script take one step.
    let mut go_pipe = File::options().read(true).write(true).open(&fifo).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let pty = Pty::open();
    let mut command = Command::new(env!("CARGO_BIN_EXE_runstream"));
    command
        .args(["run", "--log-dir", logs.path().to_str().unwrap(), "--env"])
        .arg(format!("GO={}", fifo.display()))
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(pty.stdio())
        .stderr(pty.stdio());
    let child = command.spawn().unwrap();
    drop(command); // it holds copies of the pty's slave side
    let mut terminal = Terminal::new(pty);
    let mut go = || go_pipe.write_all(b"\n").unwrap();
    for shown in [
        "start",
        " 25%|#   | 1/4",
        "step 1 ok",
        " 50%",
        " 75%",
        "step 3 ok",
        "4/4",
    ] {
        terminal.until(shown);
        go();
    }
    assert_eq!(terminal.finish(child), 0);
    assert_eq!(
        terminal.screen.text(),
        "start\nstep 1 ok\nstep 3 ok\n100%|####| 4/4\ndone"
    );
    // Colours pass through to the terminal and are kept in the log.
    let raw = String::from_utf8_lossy(&terminal.raw);
    assert!(raw.contains("\x1b[32mstep 1 ok\x1b[0m"), "{raw:?}");
    let log = std::fs::read_to_string(run_log(logs.path())).unwrap();
    assert!(
        log.contains(r#""message":"\u001b[32mstep 1 ok\u001b[0m""#),
        "{log}"
    );
}

#[test]
fn when_stderr_is_another_file_each_stream_gets_its_bytes_as_written() {
    let pty = Pty::open();
    let err = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_runstream"))
        .args(["run", "--", "sh", "-c"])
        .arg(r"printf 'a\rb\n'; printf ' 50%%\r100%%\n' >&2; printf 'c\n'")
        .stdin(Stdio::null())
        .stdout(pty.stdio())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut terminal = Terminal::new(pty);
    assert_eq!(terminal.finish(child), 0);
    // The terminal turns `\n` into `\r\n`; nothing else is added.
    assert_eq!(String::from_utf8_lossy(&terminal.raw), "a\rb\r\nc\r\n");
    assert_eq!(std::fs::read_to_string(err.path()).unwrap(), " 50%\r100%\n");
}
