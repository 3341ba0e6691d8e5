//! Metrics read from a run's output: the numbers training and data jobs print (`loss=0.12`,
//! `loss: 0.12`, `{'loss': 0.12}`, or a module's own patterns), found in every line as it
//! is captured, carried on its entry ([`Entry::metrics`](crate::Entry::metrics)) and
//! gathered into bounded per-run series ([`RunHandle::metrics`](crate::RunHandle::metrics)).
//!
//! ```
//! use runstream::metrics::MetricRules;
//! let rules = MetricRules::default();
//! assert_eq!(rules.extract("step=3 loss=0.25"), vec![("step".to_string(), 3.0), ("loss".to_string(), 0.25)]);
//! assert!(rules.extract("2026-11-29 12:00:01 INFO starting").is_empty());
//! ```

mod formats;
mod metric;
mod rules;
mod series;

pub use metric::Metric;
pub(crate) use rules::Joiner;
pub use rules::MetricRules;
pub use series::{MetricSeries, Point, SeriesSet, MAX_POINTS, MAX_SERIES};
