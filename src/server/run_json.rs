//! A run as the API shows it: the engine's `RunStatus` plus the module's name and the
//! parameters, in the old backend's field names.

use serde_json::{json, Value};

use crate::RunStatus;

/// Label holding the module's display name.
pub const MODULE_NAME_LABEL: &str = "runstream.module_name";
/// Label holding the run's parameters as JSON text.
pub const PARAMETERS_LABEL: &str = "runstream.parameters";

/// The Run object: `run_id, module_id, module_name, status, cancelling, created_at,
/// started_at, completed_at, duration_seconds, exit_code, signal, pid, error_message,
/// parameters, progress_percent` (plus `spawn_error`, `waiting_for` and `labels`).
pub fn run_json(status: &RunStatus) -> Value {
    let mut labels = status.labels.clone();
    let module_name = labels
        .remove(MODULE_NAME_LABEL)
        .unwrap_or_else(|| status.module_id.clone());
    let parameters = labels
        .remove(PARAMETERS_LABEL)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| json!({}));
    json!({
        "run_id": status.run_id,
        "module_id": status.module_id,
        "module_name": module_name,
        "status": status.status,
        "cancelling": status.cancelling,
        "created_at": status.created_at,
        "started_at": status.started_at,
        "completed_at": status.completed_at,
        "duration_seconds": status.duration_seconds,
        "exit_code": status.exit_code,
        "signal": status.signal,
        "pid": status.pid,
        "error_message": status.error_message,
        "spawn_error": status.spawn_error,
        "parameters": parameters,
        "progress_percent": status.progress_percent,
        "gpu_memory_mb": status.gpu_memory_mb,
        "gpu_memory_bytes": status.gpu_memory_bytes,
        "gpu_memory_peak_bytes": status.gpu_memory_peak_bytes,
        "gpu_utilization_percent": status.gpu_utilization_percent,
        "waiting_for": status.waiting_for,
        "containment": status.containment,
        "cgroup": status.cgroup,
        "cpu_seconds": status.cpu_seconds,
        "memory_peak_bytes": status.memory_peak_bytes,
        "labels": labels,
    })
}

/// The data of the SSE `complete` event.
pub fn complete_json(status: &RunStatus) -> Value {
    json!({
        "status": status.status,
        "exit_code": status.exit_code,
        "signal": status.signal,
        "duration_seconds": status.duration_seconds,
    })
}
