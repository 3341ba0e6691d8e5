//! What a run's lines are searched for: the built-in formats plus the run's own patterns
//! (regular expressions whose named groups are metrics), and how a line cut into pieces is
//! joined before it is searched.

use std::sync::Arc;

use regex_lite::Regex;

use super::formats::{self, MAX_NAME};
use super::Metric;
use crate::{Entry, LineEnd, Stream};

/// Keys whose value becomes the x of the other metrics on the same line, most precise
/// first.
const STEP_KEYS: [&str; 4] = ["global_step", "step", "iter", "epoch"];
/// Most metrics read from one line.
const MAX_PER_LINE: usize = 32;
/// Most bytes of a line held while it arrives in pieces; a longer line is not searched.
const MAX_JOINED: usize = 64 * 1024;

/// How metrics are found in a run's output: the built-in formats (`key=value`,
/// `key: value`, a JSON object or Python dict line) and the run's own patterns.
#[derive(Clone, Debug, Default)]
pub struct MetricRules {
    patterns: Vec<Regex>,
}

impl MetricRules {
    /// Rules with these extra patterns: regular expressions (regex-lite syntax, like
    /// Python's `re` for the common cases) whose named groups (`(?P<loss>…)`) are metrics,
    /// e.g. `epoch (?P<epoch>\d+)/\d+ loss (?P<loss>[-+.\deE]+)`. The error names the bad
    /// pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<MetricRules, String> {
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref();
                let re = Regex::new(p)
                    .map_err(|e| format!("metric pattern {p:?} is not a valid regex: {e}"))?;
                if re.capture_names().flatten().next().is_none() {
                    return Err(format!(
                        "metric pattern {p:?} has no named group (?P<name>...)"
                    ));
                }
                Ok(re)
            })
            .collect::<Result<_, String>>()?;
        Ok(MetricRules { patterns })
    }

    /// The metrics (name, value) in one whole line, in order, at most 32, each name once.
    pub fn extract(&self, text: &str) -> Vec<(String, f64)> {
        let mut found = Vec::new();
        self.find(text, &mut found);
        found.into_iter().map(|(n, v)| (n.to_string(), v)).collect()
    }

    /// [`MetricRules::extract`] without copying the names: they point into `text` or into
    /// the patterns.
    fn find<'a>(&'a self, text: &'a str, found: &mut Vec<(&'a str, f64)>) {
        let mut add = |name: &'a str, value: f64| {
            if found.len() < MAX_PER_LINE && !found.iter().any(|(n, _)| *n == name) {
                found.push((name, value));
            }
        };
        for re in &self.patterns {
            if let Some(caps) = re.captures(text) {
                for name in re.capture_names().flatten() {
                    let value = caps
                        .name(name)
                        .and_then(|m| formats::number_at(m.as_str().as_bytes(), 0));
                    if let (Some(value), true) = (value, name.len() <= MAX_NAME) {
                        add(name, value);
                    }
                }
            }
        }
        formats::scan(text, &mut add);
    }

    /// [`MetricRules::extract`] with each value's x decided: the step the line names, or
    /// the seq.
    pub(crate) fn metrics(&self, text: &str, seq: u64, names: &mut Names) -> Box<[Metric]> {
        let mut found = Vec::new();
        self.find(text, &mut found);
        if found.is_empty() {
            return Box::default();
        }
        let step = STEP_KEYS.iter().find_map(|key| {
            found
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(key))
                .map(|(n, v)| (*n, *key, *v))
        });
        found
            .iter()
            .map(|(name, y)| {
                let (x_name, x) = match step {
                    Some((step_name, key, v)) if step_name != *name => (key, v),
                    _ => ("seq", seq as f64),
                };
                Metric {
                    name: names.get(name),
                    x,
                    x_name,
                    y: *y,
                }
            })
            .collect()
    }
}

/// Metric names shared between points (one allocation per name, not per value); bounded.
#[derive(Debug, Default)]
pub(crate) struct Names(Vec<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.iter().find(|n| &***n == name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = name.into();
        if self.0.len() < 256 {
            self.0.push(Arc::clone(&n));
        }
        n
    }
}

/// Joins a line that arrives in pieces (`end: none` entries: a slow progress bar, a
/// partial line flushed while the child was quiet) so that it is searched once, whole, when
/// its end (`cr` or `lf`) comes: one printed value is never counted twice. The last line of
/// a stream that ends without a newline is never ended, so it is not searched.
#[derive(Debug, Default)]
pub(crate) struct Joiner {
    /// Per stream (stdout, stderr): the pieces so far, or `None` once over `MAX_JOINED`.
    pending: [Option<String>; 2],
    names: Names,
}

impl Joiner {
    /// The metrics of the line `entry` ends (none while the line is still open).
    pub(crate) fn metrics(
        &mut self,
        rules: &MetricRules,
        stream: Stream,
        message: &str,
        end: LineEnd,
        seq: u64,
    ) -> Box<[Metric]> {
        let i = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => return Box::default(),
        };
        let slot = &mut self.pending[i];
        if end == LineEnd::None {
            let piece = slot.get_or_insert_with(String::new);
            if piece.len() + message.len() <= MAX_JOINED {
                piece.push_str(message);
            } else {
                piece.clear();
                piece.push('\0'); // marks a line too long to search
            }
            return Box::default();
        }
        match slot.take() {
            None => rules.metrics(message, seq, &mut self.names),
            Some(mut joined) => {
                if joined.starts_with('\0') || joined.len() + message.len() > MAX_JOINED {
                    return Box::default();
                }
                joined.push_str(message);
                rules.metrics(&joined, seq, &mut self.names)
            }
        }
    }

    /// Attaches metrics to entries read back from a run's log, in seq order. A line whose
    /// first pieces came before the first of them is searched without those pieces.
    pub(crate) fn attach(&mut self, rules: &MetricRules, entries: &mut [Entry]) {
        for e in entries {
            let metrics = self.metrics(rules, e.stream, &e.message, e.end, e.seq);
            e.set_metrics(metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(rules: &MetricRules, text: &str) -> Vec<(String, &'static str, f64, f64)> {
        rules
            .metrics(text, 7, &mut Names::default())
            .iter()
            .map(|m| (m.name.to_string(), m.x_name, m.x, m.y))
            .collect()
    }

    #[test]
    fn lines_that_are_not_metrics_give_none() {
        let rules = MetricRules::default();
        for text in [
            "2026-11-29 12:00:01 INFO starting",
            "12:30:01",
            "[12:30:01] done",
            "v2.1.0",
            "version v2.1.0 released",
            "python 3.11",
            "Python: 3.11.4",
            "listening on 10.0.0.1:8080",
            "host: 192.168.1.20",
            "ERROR: code 3",
            "3/10",
            "step 3/10",
            "see http://example.com/a?b=c",
            "time: 3s",
            "loss: nan",
            "loss=inf",
            "",
        ] {
            assert_eq!(line(&rules, text), vec![], "{text:?}");
        }
    }

    #[test]
    fn the_step_a_line_names_is_the_x_of_its_other_metrics() {
        let rules = MetricRules::default();
        assert_eq!(
            line(&rules, "step=40 loss=0.5"),
            vec![
                ("step".into(), "seq", 7.0, 40.0),
                ("loss".into(), "step", 40.0, 0.5)
            ]
        );
        assert_eq!(
            line(&rules, "{'loss': 1.2, 'epoch': 0.1, 'global_step': 9}")[0],
            ("loss".into(), "global_step", 9.0, 1.2)
        );
        assert_eq!(
            line(&rules, "loss: 0.25")[0],
            ("loss".into(), "seq", 7.0, 0.25)
        );
    }

    #[test]
    fn module_patterns_named_groups_become_metrics() {
        let rules =
            MetricRules::new(&[r"epoch (?P<epoch>\d+)/\d+ loss (?P<loss>[-+.\deE]+)"]).unwrap();
        assert_eq!(
            line(&rules, "epoch 3/20 loss 0.2031"),
            vec![
                ("epoch".into(), "seq", 7.0, 3.0),
                ("loss".into(), "epoch", 3.0, 0.2031)
            ]
        );
        let bad = MetricRules::new(&["(unclosed"]).unwrap_err();
        assert!(bad.contains("(unclosed"), "{bad}");
        assert!(MetricRules::new(&["no groups"]).is_err());
    }

    #[test]
    fn a_line_in_pieces_is_searched_once_when_it_ends() {
        let rules = MetricRules::default();
        let mut j = Joiner::default();
        let mut got = Vec::new();
        for (stream, text, end, seq) in [
            (
                Stream::Stderr,
                " 50%|#### | 5/10 [loss=0.",
                LineEnd::None,
                0,
            ),
            (Stream::Stdout, "acc=1", LineEnd::Lf, 1),
            (Stream::Stderr, "25]", LineEnd::None, 2),
            (Stream::Stderr, "", LineEnd::Cr, 3),
            (
                Stream::Stderr,
                "100%|#####| 10/10 [loss=0.2]",
                LineEnd::Lf,
                4,
            ),
        ] {
            for m in j.metrics(&rules, stream, text, end, seq).iter() {
                got.push((seq, m.name.to_string(), m.y));
            }
        }
        assert_eq!(
            got,
            vec![
                (1, "acc".into(), 1.0),
                (3, "loss".into(), 0.25),
                (4, "loss".into(), 0.2)
            ]
        );
    }
}
