//! Plain-text tables (columns padded to their widest cell) and the cell formats they use.

use std::io::{self, Write};

/// Prints `header` and `rows` as left-aligned columns two spaces apart.
pub fn print(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    out.flush()
}

/// `2026-11-29T16:22:01.123456Z` as `2026-11-29 16:22:01` (UTC); `-` when absent.
pub fn time(value: &serde_json::Value) -> String {
    match value.as_str() {
        Some(t) if t.len() >= 19 => t[..19].replace('T', " "),
        _ => "-".into(),
    }
}

/// Seconds as `4.2s`, `3m05s`, `2h01m`; `-` when absent.
pub fn duration(value: &serde_json::Value) -> String {
    let Some(s) = value.as_f64() else {
        return "-".into();
    };
    let whole = s as u64;
    match whole {
        0..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}

/// Bytes in binary units: `512 MiB`, `1.5 GiB`; `-` when absent.
pub fn bytes(value: &serde_json::Value) -> String {
    let Some(n) = value.as_u64() else {
        return "-".into();
    };
    let mib = n as f64 / (1 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_are_short_and_absent_values_are_dashes() {
        assert_eq!(
            time(&json!("2026-11-29T16:22:01.123456Z")),
            "2026-11-29 16:22:01"
        );
        assert_eq!(time(&json!(null)), "-");
        assert_eq!(duration(&json!(4.25)), "4.2s");
        assert_eq!(duration(&json!(185.0)), "3m05s");
        assert_eq!(duration(&json!(7260.0)), "2h01m");
        assert_eq!(bytes(&json!(512u64 << 20)), "512 MiB");
        assert_eq!(bytes(&json!(3u64 << 29)), "1.5 GiB");
        assert_eq!(bytes(&json!(null)), "-");
    }
}
