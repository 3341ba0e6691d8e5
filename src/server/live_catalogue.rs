//! The catalogue the server answers with now, and reloading it from its file (SIGHUP,
//! `POST /api/modules/reload`) without stopping anything.
//!
//! A reload swaps the whole catalogue at once. Runs never look at the catalogue after they
//! are submitted — the engine holds the `RunSpec` built when they were started — so live
//! and queued runs keep their spec, and a removed module's live runs go on. A file that
//! cannot be read or checked changes nothing: the old catalogue stays, and the reason is
//! logged, returned and shown in `/api/health` until a later reload succeeds.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use super::modules::Catalogue;
use crate::Timestamp;

/// What a successful reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Modules in the catalogue now.
    pub total_modules: usize,
    /// Ids new in this file.
    pub added: Vec<String>,
    /// Ids whose definition changed (runs started from now on use the new one).
    pub changed: Vec<String>,
    /// Ids no longer in the file (their live runs go on; new runs get 404).
    pub removed: Vec<String>,
}

/// Why a reload kept the old catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadError {
    /// The server was not given a modules file (`ServerConfig::modules_file`).
    NoFile,
    /// The file could not be read, parsed or checked; the text names the file and the
    /// bad field.
    Invalid(String),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::NoFile => {
                f.write_str("the server was started without a modules file: nothing to reload")
            }
            ReloadError::Invalid(why) => write!(f, "{why}; the old catalogue stays in use"),
        }
    }
}

impl std::error::Error for ReloadError {}

/// The catalogue in use, where it came from, and how the last reload went.
pub(crate) struct LiveCatalogue {
    file: Option<PathBuf>,
    current: Mutex<Current>,
    /// Held for a whole reload, so two at once (SIGHUP and a POST) cannot interleave
    /// their read and swap; readers of the catalogue never wait for it.
    reloading: Mutex<()>,
}

struct Current {
    catalogue: Arc<Catalogue>,
    loaded_at: Timestamp,
    reloads: u64,
    last_error: Option<(Timestamp, String)>,
}

impl LiveCatalogue {
    /// Starts with `catalogue`; reloads read `file`, if any.
    pub fn new(catalogue: Catalogue, file: Option<PathBuf>) -> LiveCatalogue {
        LiveCatalogue {
            file,
            current: Mutex::new(Current {
                catalogue: Arc::new(catalogue),
                loaded_at: Timestamp::now(),
                reloads: 0,
                last_error: None,
            }),
            reloading: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The catalogue now. A request keeps the one it got for its whole life, so a reload
    /// in the middle of a request cannot mix two catalogues.
    pub fn get(&self) -> Arc<Catalogue> {
        Arc::clone(&self.lock().catalogue)
    }

    /// Reads the file again and swaps the catalogue in, or keeps the old one and says why.
    /// Logs the outcome either way.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = &self.file else {
            log::warn!("modules not reloaded: {}", ReloadError::NoFile);
            return Err(ReloadError::NoFile);
        };
        let loaded = Catalogue::load(file);
        let mut current = self.lock();
        current.reloads += 1;
        match loaded {
            Ok(new) => {
                let report = compare(&current.catalogue, &new);
                current.catalogue = Arc::new(new);
                current.loaded_at = Timestamp::now();
                current.last_error = None;
                log::info!(
                    "reloaded modules file {}: {} modules (added: {}; changed: {}; removed: {})",
                    file.display(),
                    report.total_modules,
                    list(&report.added),
                    list(&report.changed),
                    list(&report.removed),
                );
                Ok(report)
            }
            Err(why) => {
                let error = ReloadError::Invalid(why);
                log::error!("modules file not reloaded: {error}");
                current.last_error = Some((Timestamp::now(), error.to_string()));
                Err(error)
            }
        }
    }

    /// For `/api/health`: the file, when it was last loaded, and the last reload's error
    /// (null once a reload succeeds).
    pub fn health(&self) -> Value {
        let current = self.lock();
        json!({
            "file": self.file.as_deref().map(Path::display).map(|p| p.to_string()),
            "loaded_at": current.loaded_at,
            "reloads": current.reloads,
            "reload_error": current.last_error.as_ref().map(|(at, why)| json!({"at": at, "detail": why})),
        })
    }
}

/// Which ids were added, changed or removed going from `old` to `new`.
fn compare(old: &Catalogue, new: &Catalogue) -> ReloadReport {
    let mut report = ReloadReport {
        total_modules: new.modules.len(),
        ..ReloadReport::default()
    };
    for (id, module) in &new.modules {
        match old.modules.get(id) {
            None => report.added.push(id.clone()),
            Some(before) if before != module => report.changed.push(id.clone()),
            Some(_) => {}
        }
    }
    report.removed = old
        .modules
        .keys()
        .filter(|id| !new.modules.contains_key(*id))
        .cloned()
        .collect();
    report
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

impl ReloadReport {
    /// The JSON answer of `POST /api/modules/reload`.
    pub(crate) fn json(&self) -> Value {
        json!({
            "reloaded": true,
            "total_modules": self.total_modules,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue(modules: Value) -> Catalogue {
        serde_json::from_value(json!({ "modules": modules })).unwrap()
    }

    fn write(path: &Path, modules: Value) {
        std::fs::write(path, json!({ "modules": modules }).to_string()).unwrap();
    }

    #[test]
    fn reload_reports_added_changed_removed_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("modules.json");
        let live = LiveCatalogue::new(
            catalogue(json!({
                "a": {"name": "A", "program": "true"},
                "b": {"name": "B", "program": "true"},
                "c": {"name": "C", "program": "true"},
            })),
            Some(file.clone()),
        );
        let before = live.get();
        write(
            &file,
            json!({
                "a": {"name": "A", "program": "true"},
                "b": {"name": "B", "program": "false"},
                "d": {"name": "D", "program": "true"},
            }),
        );
        let report = live.reload().unwrap();
        assert_eq!(
            report,
            ReloadReport {
                total_modules: 3,
                added: vec!["d".into()],
                changed: vec!["b".into()],
                removed: vec!["c".into()],
            }
        );
        assert!(live.get().modules.contains_key("d"));
        // Who held the old catalogue still has it, whole.
        assert!(before.modules.contains_key("c"));
        assert_eq!(live.health()["reloads"], 1);
        assert!(live.health()["reload_error"].is_null());
    }

    #[test]
    fn an_invalid_file_keeps_the_old_catalogue_and_says_why_until_a_good_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("modules.json");
        let live = LiveCatalogue::new(
            catalogue(json!({"a": {"name": "A", "program": "true"}})),
            Some(file.clone()),
        );
        write(
            &file,
            json!({"a": {"name": "A", "program": "true", "args": ["{nope}"]}}),
        );
        let Err(ReloadError::Invalid(why)) = live.reload() else {
            panic!("an invalid file was accepted");
        };
        assert!(why.contains("modules.a.args[0]"), "{why}");
        assert!(live.get().modules["a"].args.is_empty());
        let health = live.health();
        let detail = health["reload_error"]["detail"].as_str().unwrap();
        assert!(detail.contains("modules.a.args[0]"), "{health}");
        assert!(detail.contains("old catalogue stays"), "{health}");

        std::fs::remove_file(&file).unwrap();
        assert!(
            matches!(live.reload(), Err(ReloadError::Invalid(why)) if why.contains("cannot read"))
        );

        write(&file, json!({"a": {"name": "A", "program": "true"}}));
        assert_eq!(live.reload().unwrap().changed, Vec::<String>::new());
        assert!(live.health()["reload_error"].is_null());
        assert_eq!(live.health()["reloads"], 3);
    }

    #[test]
    fn without_a_file_there_is_nothing_to_reload() {
        let live = LiveCatalogue::new(Catalogue::default(), None);
        assert_eq!(live.reload(), Err(ReloadError::NoFile));
        assert!(live.health()["file"].is_null());
    }
}
