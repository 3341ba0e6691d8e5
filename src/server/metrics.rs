//! `/metrics` (Prometheus text format) and `/api/system/stats`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::AppState;
use crate::RunState;

struct Totals {
    by_state: BTreeMap<&'static str, u64>,
    entries: u64,
    bytes: u64,
    dropped: u64,
    retained_bytes: u64,
}

fn totals(state: &AppState) -> Totals {
    let mut t = Totals {
        by_state: RunState::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
        entries: 0,
        bytes: 0,
        dropped: 0,
        retained_bytes: 0,
    };
    for run in state.engine.list() {
        *t.by_state.entry(run.status().status.as_str()).or_default() += 1;
        let stats = run.capture().stats();
        t.entries += stats.entries;
        t.bytes += stats.bytes;
        t.dropped += stats.dropped;
        t.retained_bytes += stats.retained_bytes as u64;
    }
    t
}

/// The Prometheus exposition text.
pub fn prometheus(state: &AppState) -> String {
    let t = totals(state);
    let (live, queued) = state.engine.counts();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let by_state: Vec<(String, u64)> = t
        .by_state
        .iter()
        .map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n))
        .collect();
    metric(
        "runstream_runs",
        "gauge",
        "Runs known to the server, by state.",
        &by_state,
    );
    metric(
        "runstream_live_runs",
        "gauge",
        "Runs whose process is running.",
        &[(String::new(), live as u64)],
    );
    metric(
        "runstream_queued_runs",
        "gauge",
        "Runs waiting for a slot.",
        &[(String::new(), queued as u64)],
    );
    let clients = state.sse_clients.load(Ordering::SeqCst) as u64;
    metric(
        "runstream_sse_clients",
        "gauge",
        "Open SSE streams.",
        &[(String::new(), clients)],
    );
    metric(
        "runstream_entries_captured_total",
        "counter",
        "Output entries captured.",
        &[(String::new(), t.entries)],
    );
    metric(
        "runstream_bytes_captured_total",
        "counter",
        "Output message bytes captured.",
        &[(String::new(), t.bytes)],
    );
    metric(
        "runstream_lines_dropped_total",
        "counter",
        "Entries a reader could not get (evicted with no log file).",
        &[(String::new(), t.dropped)],
    );
    metric(
        "runstream_ring_bytes",
        "gauge",
        "Bytes of output held in memory.",
        &[(String::new(), t.retained_bytes)],
    );
    out.push_str(&state.engine.gpu().prometheus());
    out
}

/// `/api/system/stats`: runs, modules, CPU, memory, GPU summary.
pub fn system_stats(state: &AppState) -> Value {
    let t = totals(state);
    let (live, queued) = state.engine.counts();
    let loadavg: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let self_status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    json!({
        "runs": {"total": t.by_state.values().sum::<u64>(), "by_status": t.by_state, "active": live, "queued": queued},
        "modules": state.catalogue.get().modules.len(),
        "sse_clients": state.sse_clients.load(Ordering::SeqCst),
        "output": {"entries_captured": t.entries, "bytes_captured": t.bytes, "lines_dropped": t.dropped, "ring_bytes": t.retained_bytes},
        "cpu": {"count": std::thread::available_parallelism().map_or(1, |n| n.get()), "load_average": loadavg},
        "memory": {
            "total_bytes": kib(&meminfo, "MemTotal:"),
            "available_bytes": kib(&meminfo, "MemAvailable:"),
            "process_rss_bytes": kib(&self_status, "VmRSS:"),
        },
        "gpu": state.engine.gpu().summary(),
    })
}
