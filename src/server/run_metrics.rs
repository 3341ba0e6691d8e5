//! `GET /api/runs/{id}/metrics`: a run's metric series as JSON, or as CSV (one row per
//! point), optionally only some of them (`?names=loss,accuracy`).

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::metrics::MetricSeries;
use crate::RunHandle;

/// `?names=a,b` (or repeated): the series to keep; none given keeps all.
pub fn select(series: Vec<MetricSeries>, names: &[&str]) -> Vec<MetricSeries> {
    if names.is_empty() {
        return series;
    }
    series
        .into_iter()
        .filter(|s| names.contains(&s.name.as_str()))
        .collect()
}

/// `{"run_id", "through_seq", "series": [{"name", "x", "points": [[x, y], …], "last",
/// "min", "max", "count", "last_seq"}]}`. `through_seq`: every line before it is in the
/// series (a client that follows the stream from here skips `metric` events of older
/// lines).
pub fn json(run: &RunHandle, through_seq: u64, series: &[MetricSeries]) -> Value {
    let series: Vec<Value> = series
        .iter()
        .map(|s| {
            let points: Vec<[f64; 2]> = s.points.iter().map(|p| [p.x, p.y]).collect();
            json!({
                "name": s.name, "x": s.x, "points": points, "last": s.last, "min": s.min,
                "max": s.max, "count": s.count, "last_seq": s.last_seq,
            })
        })
        .collect();
    json!({"run_id": run.id(), "through_seq": through_seq, "series": series})
}

/// `name,x,y,seq,timestamp`, then one row per point, series after series.
pub fn csv(series: &[MetricSeries]) -> String {
    let mut out = String::from("name,x,y,seq,timestamp\n");
    for s in series {
        for p in &s.points {
            // Names are words (letters, digits, `_ . / -`): nothing to quote.
            let _ = writeln!(out, "{},{},{},{},{}", s.name, p.x, p.y, p.seq, p.timestamp);
        }
    }
    out
}
