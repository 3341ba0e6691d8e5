//! The scripted NVML (`scripted_nvml.c`, NVML's real ABI): compiled once per test binary
//! with the system `cc`, loaded by `runstream` through `RUNSTREAM_NVML_LIBRARY`, and told
//! what to answer by a state file that the tests rewrite while runstream runs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub const GIB: u64 = 1 << 30;

/// Which build of the library: the full one, or one lacking a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Full,
    /// Without `nvmlInit_v2`.
    NoInit,
    /// Without `nvmlDeviceGetMemoryInfo_v2` (a driver older than R510).
    NoMemoryV2,
}

impl Variant {
    fn defines(self) -> &'static [&'static str] {
        match self {
            Variant::Full => &[],
            Variant::NoInit => &["-DOMIT_INIT"],
            Variant::NoMemoryV2 => &["-DOMIT_MEMORY_V2"],
        }
    }
}

/// The library built as `variant`, or why it cannot be (no C compiler here).
pub fn library(variant: Variant) -> Result<PathBuf, String> {
    static BUILT: Mutex<Option<HashMap<Variant, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    built
        .entry(variant)
        .or_insert_with(|| build(variant))
        .clone()
}

fn build(variant: Variant) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gpu_nvml/scripted_nvml.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scripted-nvml");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(format!("libnvidia-ml-{variant:?}.so"));
    // Built beside it and renamed into place: a server of another test run may have the
    // old file loaded, and overwriting a loaded library in place crashes it.
    let building = dir.join(format!(
        "libnvidia-ml-{variant:?}.so.{}",
        std::process::id()
    ));
    let output = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&building)
        .args(variant.defines())
        .arg(&source)
        .output()
        .map_err(|e| format!("no C compiler (`cc`): {e}"))?;
    if !output.status.success() {
        // A compiler that runs but fails on our source is a bug, not a missing tool.
        panic!(
            "cc failed on {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&building, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// One scripted card.
#[derive(Clone, Debug)]
pub struct Device {
    pub total: u64,
    pub free: u64,
    pub util_gpu: u32,
    pub temp: u32,
    pub power_mw: u32,
    pub uuid: String,
    pub name: String,
}

impl Device {
    /// A 32 GiB card with `free` bytes free.
    pub fn card(index: u32, free: u64) -> Device {
        Device {
            total: 32 * GIB,
            free,
            util_gpu: 40 + index,
            temp: 60,
            power_mw: 250_500,
            uuid: format!("GPU-scripted-{index}"),
            name: "Scripted GeForce RTX 5090".into(),
        }
    }
}

/// What the library answers.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// What `nvmlInit_v2` returns (an NVML code name); `None`: SUCCESS.
    pub init: Option<&'static str>,
    pub devices: Vec<Device>,
    /// (device, pid, bytes; `None` = NVML_VALUE_NOT_AVAILABLE).
    pub processes: Vec<(u32, u32, Option<u64>)>,
    /// (device, pid, SM %): process utilisation samples.
    pub sm: Vec<(u32, u32, u32)>,
    /// (function, NVML code name): that function fails.
    pub fail: Vec<(&'static str, &'static str)>,
}

impl State {
    /// One 32 GiB card with `free` bytes free and nothing on it.
    pub fn one_card(free: u64) -> State {
        State {
            devices: vec![Device::card(0, free)],
            ..State::default()
        }
    }

    fn text(&self) -> String {
        let mut t = String::new();
        if let Some(code) = self.init {
            writeln!(t, "init {code}").unwrap();
        }
        for d in &self.devices {
            writeln!(
                t,
                "device {} {} {} {} 10 {} {} {} {}",
                d.total,
                d.free,
                d.total - d.free,
                d.util_gpu,
                d.temp,
                d.power_mw,
                d.uuid,
                d.name
            )
            .unwrap();
        }
        for (device, pid, bytes) in &self.processes {
            let bytes = bytes.map_or("na".to_string(), |b| b.to_string());
            writeln!(t, "process {device} {pid} {bytes}").unwrap();
        }
        for (device, pid, sm) in &self.sm {
            writeln!(t, "sm {device} {pid} {sm}").unwrap();
        }
        for (function, code) in &self.fail {
            writeln!(t, "fail {function} {code}").unwrap();
        }
        t
    }
}

/// A library, its state file and its call log, in a temporary folder.
pub struct ScriptedNvml {
    pub library: PathBuf,
    dir: tempfile::TempDir,
}

impl ScriptedNvml {
    /// The `variant` library answering `state`; `None` (after a `SKIPPED` line) where no
    /// C compiler can build it.
    pub fn new(variant: Variant, state: &State) -> Option<ScriptedNvml> {
        let library = match library(variant) {
            Ok(library) => library,
            Err(why) => {
                println!("SKIPPED scripted NVML tests: {why}");
                return None;
            }
        };
        let nvml = ScriptedNvml {
            library,
            dir: tempfile::tempdir().unwrap(),
        };
        nvml.set(state);
        Some(nvml)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces what the library answers from its next sweep on. Written whole and renamed
    /// into place, so the library never reads half a state.
    pub fn set(&self, state: &State) {
        let tmp = self.dir().join("state.tmp");
        fs::write(&tmp, state.text()).unwrap();
        fs::rename(&tmp, self.dir().join("state")).unwrap();
    }

    /// How many times runstream called `function` so far.
    pub fn calls(&self, function: &str) -> usize {
        fs::read_to_string(self.dir().join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == function)
            .count()
    }

    /// Points `command` (a `runstream` to start) at this library.
    pub fn configure(&self, command: &mut Command) {
        command
            .env("RUNSTREAM_NVML_LIBRARY", &self.library)
            .env("SCRIPTED_NVML_STATE", self.dir().join("state"))
            .env("SCRIPTED_NVML_CALLS", self.dir().join("calls"));
    }
}
