//! A run's metric series: bounded in number and in points, downsampled so that the shape
//! survives, with `last`, `min` and `max` over every value.

use serde::Serialize;

use super::Metric;
use crate::{Entry, Timestamp};

/// Most series one run keeps; metrics with other names are left out of the series (their
/// values still reach subscribers on their entries).
pub const MAX_SERIES: usize = 64;
/// Most points one series keeps. Beyond, it is halved: of every 4 neighbouring points the
/// lowest and the highest stay, and so do the first and the last point.
pub const MAX_POINTS: usize = 10_000;

/// One point: where, what, and the line it came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The x value (a step, or the line's seq).
    pub x: f64,
    /// The value.
    pub y: f64,
    /// The seq of the line it was read from.
    pub seq: u64,
    /// When that line was captured.
    pub timestamp: Timestamp,
}

/// One metric's series, as read with [`RunHandle::metrics`](crate::RunHandle::metrics).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricSeries {
    /// The metric's name.
    pub name: String,
    /// What x is: `seq`, or the step key the lines name (`step`, `epoch`, …). Decided by
    /// the series' first point.
    pub x: String,
    /// Points in x order (never decreasing), at most [`MAX_POINTS`]; downsampled beyond.
    pub points: Vec<Point>,
    /// The last value.
    pub last: f64,
    /// The lowest value of all (not only of the points kept).
    pub min: f64,
    /// The highest value of all.
    pub max: f64,
    /// How many values the metric had (points left out included).
    pub count: u64,
    /// The seq of the line its last value came from.
    pub last_seq: u64,
}

/// The series of one run, fed with its entries in seq order.
#[derive(Clone, Debug, Default)]
pub struct SeriesSet {
    series: Vec<MetricSeries>,
    /// The series' names as the metrics carry them: a run's metrics share one `Arc` per
    /// name, so the lookup is usually a pointer compare.
    names: Vec<std::sync::Arc<str>>,
}

impl SeriesSet {
    /// Adds the metrics of one entry.
    pub fn record(&mut self, entry: &Entry) {
        for m in entry.metrics() {
            self.add(m, entry.seq, entry.timestamp);
        }
    }

    fn add(&mut self, m: &Metric, seq: u64, timestamp: Timestamp) {
        let known = (self
            .names
            .iter()
            .position(|n| std::sync::Arc::ptr_eq(n, &m.name)))
        .or_else(|| self.names.iter().position(|n| **n == *m.name));
        let pos = match known {
            Some(pos) => pos,
            None if self.series.len() < MAX_SERIES => {
                self.names.push(std::sync::Arc::clone(&m.name));
                self.series.push(MetricSeries {
                    name: m.name.to_string(),
                    x: m.x_name.to_string(),
                    points: Vec::new(),
                    last: m.y,
                    min: m.y,
                    max: m.y,
                    count: 0,
                    last_seq: seq,
                });
                self.series.len() - 1
            }
            None => return,
        };
        let s = &mut self.series[pos];
        s.last = m.y;
        s.min = s.min.min(m.y);
        s.max = s.max.max(m.y);
        s.count += 1;
        s.last_seq = seq;
        // x never goes back: a point on another x (the line named no step, or another one)
        // or behind the last one is left out of the points; its value counts above.
        let behind = s.points.last().is_some_and(|p| m.x < p.x);
        if m.x_name != s.x || behind {
            return;
        }
        s.points.push(Point {
            x: m.x,
            y: m.y,
            seq,
            timestamp,
        });
        if s.points.len() > MAX_POINTS {
            halve(&mut s.points);
        }
    }

    /// Every series, in the order their metrics first appeared.
    pub fn series(&self) -> &[MetricSeries] {
        &self.series
    }

    /// Bytes held in memory (a bound: at most [`MAX_SERIES`] × [`MAX_POINTS`] points).
    pub fn size_in_memory(&self) -> usize {
        self.series
            .iter()
            .map(|s| {
                std::mem::size_of::<MetricSeries>()
                    + s.name.len()
                    + s.points.capacity() * std::mem::size_of::<Point>()
            })
            .sum()
    }
}

/// Keeps, of every 4 neighbouring points, the lowest and the highest (in their order), plus
/// the first and the last point: half the points, same extremes, same shape.
fn halve(points: &mut Vec<Point>) {
    let last = *points.last().expect("halved only when full");
    let mut kept = Vec::with_capacity(points.len() / 2 + 2);
    kept.push(points[0]);
    for (i, group) in points.chunks(4).enumerate() {
        let group = if i == 0 { &group[1..] } else { group };
        if group.is_empty() {
            continue;
        }
        let lo = (0..group.len()).min_by(|&a, &b| group[a].y.total_cmp(&group[b].y));
        let hi = (0..group.len()).max_by(|&a, &b| group[a].y.total_cmp(&group[b].y));
        let (lo, hi) = (lo.unwrap_or(0), hi.unwrap_or(0));
        let (a, b) = (lo.min(hi), lo.max(hi));
        kept.push(group[a]);
        if b != a {
            kept.push(group[b]);
        }
    }
    if kept.last().map(|p| p.seq) != Some(last.seq) {
        kept.push(last);
    }
    *points = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Level, LineEnd, Stream};

    fn entry(seq: u64, metrics: Vec<Metric>) -> Entry {
        let mut e = Entry::new(
            seq,
            Timestamp::from_micros(seq as i64),
            Stream::Stdout,
            Level::Info,
            String::new(),
            LineEnd::Lf,
        );
        e.set_metrics(metrics.into());
        e
    }

    fn metric(name: &str, x: f64, y: f64) -> Metric {
        Metric {
            name: name.into(),
            x,
            x_name: "seq",
            y,
        }
    }

    #[test]
    fn series_are_bounded_and_keep_first_extremes_and_last() {
        let mut set = SeriesSet::default();
        let n = 100_000u64;
        for seq in 0..n {
            // A wave with one spike up and one down in the middle.
            let y = match seq {
                50_001 => 1000.0,
                70_003 => -1000.0,
                _ => (seq as f64 / 500.0).sin(),
            };
            set.record(&entry(seq, vec![metric("loss", seq as f64, y)]));
        }
        let s = &set.series()[0];
        assert!(s.points.len() <= MAX_POINTS, "{}", s.points.len());
        assert!(s.points.len() > MAX_POINTS / 4, "{}", s.points.len());
        assert_eq!(s.count, n);
        assert_eq!(
            (s.min, s.max, s.last),
            (-1000.0, 1000.0, set.series()[0].last)
        );
        assert_eq!(s.points[0].seq, 0);
        assert_eq!(s.points.last().unwrap().seq, n - 1);
        let ys: Vec<f64> = s.points.iter().map(|p| p.y).collect();
        assert!(ys.contains(&1000.0) && ys.contains(&-1000.0));
        assert!(s.points.windows(2).all(|w| w[0].x <= w[1].x));
        assert!(set.size_in_memory() < 2 * MAX_POINTS * std::mem::size_of::<Point>() + 1024);
    }

    #[test]
    fn at_most_64_series_and_x_never_decreases() {
        let mut set = SeriesSet::default();
        for i in 0..100 {
            set.record(&entry(i, vec![metric(&format!("m{i}"), i as f64, 1.0)]));
        }
        assert_eq!(set.series().len(), MAX_SERIES);
        let mut set = SeriesSet::default();
        for (seq, x) in [(0, 5.0), (1, 3.0), (2, 6.0)] {
            set.record(&entry(seq, vec![metric("loss", x, x)]));
        }
        let s = &set.series()[0];
        let xs: Vec<f64> = s.points.iter().map(|p| p.x).collect();
        assert_eq!(xs, vec![5.0, 6.0]);
        assert_eq!((s.min, s.last, s.count), (3.0, 6.0, 3));
    }
}
