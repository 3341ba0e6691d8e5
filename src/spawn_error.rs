//! Why a run's program could not be started, as data: the kind is kept in the run's status
//! (`RunStatus::spawn_error`) so that callers decide from it, not from the message's words
//! (`runstream run` exits 127 or 126 as a shell would).

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::RunSpec;

/// What kept a run's program from starting (or its run from being set up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpawnErrorKind {
    /// No such program (not in `PATH`, or no file at the path given).
    NotFound,
    /// The program exists but may not be executed (no `x` bit, a directory, `noexec`).
    PermissionDenied,
    /// The working directory does not exist or is not a directory.
    BadCwd,
    /// The program exists, but the interpreter its `#!` line names (or, for a binary, its
    /// dynamic loader) does not.
    InterpreterNotFound,
    /// The system ran out of something the run needs: processes or threads (the user's
    /// process limit, `RLIMIT_NPROC`), open files, memory.
    Resources,
    /// Anything else; the message says what.
    Other,
}

impl SpawnErrorKind {
    /// The exit status a shell gives for it: 127 when the program is not found, 126 when it
    /// was found but could not be started.
    pub fn exit_status(self) -> i32 {
        match self {
            SpawnErrorKind::NotFound => 127,
            _ => 126,
        }
    }
}

/// A spawn failure: its kind and the words for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpawnError {
    pub kind: SpawnErrorKind,
    pub message: String,
}

impl SpawnError {
    pub fn new(kind: SpawnErrorKind, message: impl Into<String>) -> SpawnError {
        SpawnError {
            kind,
            message: message.into(),
        }
    }

    /// A failure of the system, not of the spec: out of processes, threads, files, memory.
    pub fn resources(what: &str, e: &io::Error) -> SpawnError {
        let kind = if is_resource_error(e) {
            SpawnErrorKind::Resources
        } else {
            SpawnErrorKind::Other
        };
        SpawnError::new(kind, format!("{what}: {e}"))
    }

    /// Why `spec`'s program did not start, from the error of `exec` (or `CreateProcess`).
    pub fn from_spawn(spec: &RunSpec, e: io::Error) -> SpawnError {
        let name = Path::new(&spec.program).display();
        match e.kind() {
            io::ErrorKind::NotFound => match missing_interpreter(spec) {
                Some(message) => SpawnError::new(SpawnErrorKind::InterpreterNotFound, message),
                None => SpawnError::new(
                    SpawnErrorKind::NotFound,
                    format!("program not found: {name}"),
                ),
            },
            io::ErrorKind::PermissionDenied => SpawnError::new(
                SpawnErrorKind::PermissionDenied,
                unrunnable_interpreter(spec)
                    .unwrap_or_else(|| format!("permission denied executing {name}")),
            ),
            _ if is_resource_error(&e) => SpawnError::new(
                SpawnErrorKind::Resources,
                format!("could not start {name}: {e}"),
            ),
            _ => SpawnError::new(
                SpawnErrorKind::Other,
                format!("could not start {name}: {e}"),
            ),
        }
    }
}

/// Platform code words its own failures as text (a job object, a pipe): kind `Other`.
impl From<String> for SpawnError {
    fn from(message: String) -> SpawnError {
        SpawnError::new(SpawnErrorKind::Other, message)
    }
}

/// EAGAIN (no process or thread can be made: `RLIMIT_NPROC`, `pids.max`), EMFILE/ENFILE
/// (out of file descriptors), ENOMEM.
fn is_resource_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return matches!(
            code,
            libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM
        );
    }
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
    )
}

/// When `exec` said ENOENT but the program exists, what is missing is the program's
/// interpreter: the one its `#!` line names, or a binary's dynamic loader. Says which.
fn missing_interpreter(spec: &RunSpec) -> Option<String> {
    let path = find_program(spec)?;
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(&path).ok()?;
    let n = file.read(&mut head).ok()?;
    let head = &head[..n];
    let shown = path.display();
    if let Some(name) = shebang_interpreter(head) {
        // Debug formatting shows a `\r` (and any other control character) visibly.
        let mut message = format!(
            "interpreter not found: {shown} names {:?} in its #! line, and there is no such \
             program",
            name.as_str()
        );
        if name.ends_with('\r') {
            message.push_str(
                " (the \\r comes from Windows line endings, CRLF: convert the file to LF, \
                 e.g. with dos2unix)",
            );
        }
        return Some(message);
    }
    if head.starts_with(b"\x7fELF") {
        return Some(format!(
            "interpreter not found: {shown} exists, but its dynamic loader (ELF interpreter) \
             does not: it was built for another system or C library"
        ));
    }
    None
}

/// The interpreter a `#!` line names. The kernel takes it up to the first blank or
/// newline: a `\r` of a CRLF line is part of its name.
fn shebang_interpreter(head: &[u8]) -> Option<String> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let name: Vec<u8> = line
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == b'\t')
        .take_while(|b| *b != b' ' && *b != b'\t')
        .collect();
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// When `exec` said EACCES for a program that may be executed (it has an x bit), what
/// cannot be executed is the interpreter its `#!` line names (a directory, a file without
/// the x bit). Says which, so that nobody runs chmod on the script in vain.
fn unrunnable_interpreter(spec: &RunSpec) -> Option<String> {
    let path = find_program(spec)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(&path).ok()?.permissions().mode() & 0o111 == 0 {
            return None;
        }
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(&path).ok()?.read(&mut head).ok()?;
    let name = shebang_interpreter(&head[..n]).filter(|n| !n.is_empty())?;
    Some(format!(
        "permission denied: {} names {name:?} in its #! line, which cannot be executed \
         (a directory, a file without the x bit, or a noexec mount)",
        path.display()
    ))
}

/// Where `exec` found (or would find) `spec`'s program: a path with a `/` is taken as it
/// is (relative to the run's cwd), a bare name is looked up in the `PATH` the child gets.
fn find_program(spec: &RunSpec) -> Option<PathBuf> {
    let program = Path::new(&spec.program);
    if spec.program.as_encoded_bytes().contains(&b'/') {
        let path = match &spec.cwd {
            Some(dir) if program.is_relative() => dir.join(program),
            _ => program.to_path_buf(),
        };
        return path.is_file().then_some(path);
    }
    let path_var = child_path_var(spec)?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The `PATH` the child gets: the spec's own, else (unless the environment is cleared)
/// the engine's.
fn child_path_var(spec: &RunSpec) -> Option<std::ffi::OsString> {
    let set = spec
        .env
        .changes
        .iter()
        .rev()
        .find(|(key, _)| key.as_os_str() == OsStr::new("PATH"));
    match set {
        Some((_, value)) => value.clone(),
        None if spec.env.clear => None,
        None => std::env::var_os("PATH"),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn enoent_on_an_existing_script_names_its_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let crlf = script(dir.path(), "crlf.sh", b"#!/bin/sh\r\necho hi\r\n");
        let missing = script(dir.path(), "m.sh", b"#! /no/such/python3 -u\nprint(1)\n");
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        let e = SpawnError::from_spawn(&RunSpec::new(&crlf), enoent());
        assert_eq!(e.kind, SpawnErrorKind::InterpreterNotFound);
        assert!(e.message.contains(r#""/bin/sh\r""#), "{}", e.message);
        assert!(e.message.contains("CRLF"), "{}", e.message);
        let e = SpawnError::from_spawn(&RunSpec::new(&missing), enoent());
        assert_eq!(e.kind, SpawnErrorKind::InterpreterNotFound);
        assert!(e.message.contains(r#""/no/such/python3""#), "{}", e.message);
        // Found through PATH, and relative to the run's cwd.
        let spec = RunSpec::new("m.sh").env("PATH", dir.path());
        assert_eq!(
            SpawnError::from_spawn(&spec, enoent()).kind,
            SpawnErrorKind::InterpreterNotFound
        );
        let spec = RunSpec::new("./m.sh").cwd(dir.path());
        assert_eq!(
            SpawnError::from_spawn(&spec, enoent()).kind,
            SpawnErrorKind::InterpreterNotFound
        );
        let e = SpawnError::from_spawn(&RunSpec::new("no-such-program-xyz"), enoent());
        assert_eq!(e.kind, SpawnErrorKind::NotFound);
        assert_eq!(e.message, "program not found: no-such-program-xyz");
        let eagain = io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(
            SpawnError::from_spawn(&RunSpec::new("x"), eagain).kind,
            SpawnErrorKind::Resources
        );
    }
}
