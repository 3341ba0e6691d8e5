//! What to run: the `RunSpec` builder.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// How the child's environment is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EnvSpec {
    /// Start from an empty environment instead of the engine's own.
    pub clear: bool,
    /// Variables to set (`Some`) or remove (`None`), applied in order.
    pub changes: Vec<(OsString, Option<OsString>)>,
}

/// A program to run, built step by step. No shell is involved: `program` is executed with
/// exactly `args`.
///
/// ```
/// use std::time::Duration;
/// use runstream::RunSpec;
/// let spec = RunSpec::new("python3")
///     .args(["-u", "train.py", "--epochs", "3"])
///     .cwd("examples/modules")
///     .env("PYTHONUNBUFFERED", "1")
///     .timeout(Duration::from_secs(3600))
///     .grace(Duration::from_secs(10))
///     .label("owner", "ana");
/// assert_eq!(spec.program(), "python3");
/// ```
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) env: EnvSpec,
    pub(crate) timeout: Option<Duration>,
    pub(crate) grace: Option<Duration>,
    pub(crate) module_id: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) gpu_memory_mb: u64,
    pub(crate) memory_max_mb: Option<u64>,
    pub(crate) metric_patterns: Vec<String>,
}

impl RunSpec {
    /// Runs `program` (looked up in `PATH` when it has no `/`).
    pub fn new(program: impl Into<OsString>) -> RunSpec {
        RunSpec {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: EnvSpec::default(),
            timeout: None,
            grace: None,
            module_id: "cmd".into(),
            labels: BTreeMap::new(),
            gpu_memory_mb: 0,
            memory_max_mb: None,
            metric_patterns: Vec::new(),
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> RunSpec {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> RunSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The working directory. Defaults to the engine's own.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> RunSpec {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets an environment variable (the child inherits the engine's environment plus this).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> RunSpec {
        self.env.changes.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> RunSpec {
        self.env.changes.push((key.into(), None));
        self
    }

    /// Starts from an empty environment: only variables set with [`RunSpec::env`] after
    /// this call are passed.
    pub fn env_clear(mut self) -> RunSpec {
        self.env.clear = true;
        self.env.changes.clear();
        self
    }

    /// Stops the run (SIGTERM, grace, SIGKILL) when it has been running this long; its
    /// final state is then `timed_out`. Zero means no timeout, as `timeout_seconds: 0` in
    /// the API and `timeout 0` in coreutils. Defaults to no timeout.
    pub fn timeout(mut self, timeout: Duration) -> RunSpec {
        self.timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// Time between SIGTERM and SIGKILL when this run is stopped; zero kills at once.
    /// Defaults to `EngineConfig::default_grace` (5 s).
    pub fn grace(mut self, grace: Duration) -> RunSpec {
        self.grace = Some(grace);
        self
    }

    /// The catalogue module this run belongs to; part of the run id. Defaults to `cmd`.
    /// Characters other than ASCII letters, digits, `-` and `_` become `_` in the id.
    pub fn module_id(mut self, id: impl Into<String>) -> RunSpec {
        self.module_id = id.into();
        self
    }

    /// Attaches a label, shown in the run's status.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> RunSpec {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// GPU memory (MiB) that must be free on one device before this run starts; until
    /// then it waits `queued` with `waiting_for: "gpu_memory"`. Runs that need no GPU are
    /// not held behind it. Defaults to 0 (no GPU needed).
    pub fn gpu_memory_mb(mut self, mb: u64) -> RunSpec {
        self.gpu_memory_mb = mb;
        self
    }

    /// Most memory (MiB) the run's processes may use together: the kernel's OOM killer
    /// acts beyond it, and the run then ends `failed` saying so. Enforced through the run's
    /// cgroup, so only where the engine's containment has the `memory` controller
    /// ([`Engine::containment`](crate::Engine::containment)); elsewhere the run goes on
    /// with a warning entry that says the limit is not enforced. Zero means no limit.
    /// Defaults to no limit.
    pub fn memory_max_mb(mut self, mb: u64) -> RunSpec {
        self.memory_max_mb = (mb > 0).then_some(mb);
        self
    }

    /// Adds a pattern for metrics in this run's output: a regular expression whose named
    /// groups are metrics, e.g. `epoch (?P<epoch>\d+)/\d+ loss (?P<loss>[-+.\deE]+)` for
    /// lines like `epoch 3/20 loss 0.2031` (see [`MetricRules::new`](crate::metrics::MetricRules::new)).
    /// The built-in formats (`key=value`, `key: value`, JSON or dict lines) are always on.
    /// A bad pattern makes [`Engine::submit`](crate::Engine::submit) fail.
    pub fn metric_pattern(mut self, pattern: impl Into<String>) -> RunSpec {
        self.metric_patterns.push(pattern.into());
        self
    }

    /// The program, as given.
    pub fn program(&self) -> &str {
        self.program.to_str().unwrap_or("<non-UTF-8 program name>")
    }

    /// The arguments, as given.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// The timeout, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Checks what can be checked before spawning.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.program.is_empty() {
            return Err("program is empty".into());
        }
        let has_nul = |s: &OsString| s.as_encoded_bytes().contains(&0);
        if has_nul(&self.program) || self.args.iter().any(has_nul) {
            return Err("program and arguments must not contain NUL bytes".into());
        }
        crate::metrics::MetricRules::new(&self.metric_patterns)?;
        Ok(())
    }
}
