//! `runstream run --metrics`: the table of each metric's last, min and max, printed on
//! stderr when the command ends (stdout stays the command's, or `--json`'s).

use runstream::metrics::MetricSeries;

/// One line per metric, aligned: name, last, min, max and how many values it had.
pub fn render(series: &[MetricSeries]) -> String {
    if series.is_empty() {
        return "runstream: no metrics in the output\n".to_string();
    }
    let number = |v: f64| {
        let a = v.abs();
        if a != 0.0 && !(1e-4..1e9).contains(&a) {
            format!("{v:e}")
        } else {
            // Up to 6 significant decimals, without trailing zeros.
            let text = format!("{v:.6}");
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    };
    let rows: Vec<[String; 5]> = series
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                number(s.last),
                number(s.min),
                number(s.max),
                s.count.to_string(),
            ]
        })
        .collect();
    let header = ["metric", "last", "min", "max", "values"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (cell, w) in row.iter().zip(widths).skip(1) {
            line.push_str(&format!("  {cell:>w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_metric_aligned() {
        let s = |name: &str, last, min, max, count| MetricSeries {
            name: name.into(),
            x: "seq".into(),
            points: Vec::new(),
            last,
            min,
            max,
            count,
            last_seq: 0,
        };
        let table = render(&[
            s("loss", 0.2031, 0.2031, 2.5, 20),
            s("lr", 4.9e-5, 1e-5, 1e-3, 3),
        ]);
        assert_eq!(
            table,
            "metric    last     min    max  values\n\
             loss    0.2031  0.2031    2.5      20\n\
             lr      4.9e-5    1e-5  0.001       3\n"
        );
        assert!(render(&[]).contains("no metrics"));
    }
}
