//! What both platforms do before spawning: check the working directory, make the output
//! pipes, and build the `Command` (argv, cwd, environment, stdin null). No shell.

use std::process::{Command, Stdio};

use os_pipe::PipeReader;
use shared_child::SharedChild;

use super::ProcessGroup;
use crate::spawn_error::{SpawnError, SpawnErrorKind};
use crate::spec::RunSpec;

/// A freshly spawned child: its handle, its process group, and the parent's read ends of
/// its output pipes.
pub(crate) struct Spawned {
    pub child: SharedChild,
    pub pid: u32,
    pub group: ProcessGroup,
    pub stdout: PipeReader,
    pub stderr: PipeReader,
}

/// A `Command` ready for the platform's own flags, and the read ends of its pipes.
pub(crate) struct PreparedCommand {
    pub command: Command,
    pub stdout: PipeReader,
    pub stderr: PipeReader,
}

/// Builds the command for `spec`. Errors are worded for a person.
pub(crate) fn prepare(spec: &RunSpec) -> Result<PreparedCommand, SpawnError> {
    if let Some(dir) = &spec.cwd {
        // A bad cwd is reported by the OS like a missing program (ENOENT): check first so
        // the error says which.
        if !dir.is_dir() {
            return Err(SpawnError::new(
                SpawnErrorKind::BadCwd,
                format!(
                    "working directory {} does not exist or is not a directory",
                    dir.display()
                ),
            ));
        }
    }
    let pipe = || os_pipe::pipe().map_err(|e| SpawnError::resources("could not create a pipe", &e));
    let (stdout, stdout_w) = pipe()?;
    let (stderr, stderr_w) = pipe()?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(stdout_w)
        .stderr(stderr_w);
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    if spec.env.clear {
        command.env_clear();
    }
    for (key, value) in &spec.env.changes {
        match value {
            Some(v) => command.env(key, v),
            None => command.env_remove(key),
        };
    }
    // The caller must drop the Command right after spawning: it holds our copies of the
    // pipes' write ends, and while they live the readers never see EOF.
    Ok(PreparedCommand {
        command,
        stdout,
        stderr,
    })
}
