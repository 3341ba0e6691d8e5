//! One number read from one line of output.

use std::sync::Arc;

/// A metric value found in a captured line (see [`Entry::metrics`](crate::Entry::metrics)).
#[derive(Clone, Debug)]
pub struct Metric {
    /// The metric's name as printed (`loss`, `val/accuracy`).
    pub name: Arc<str>,
    /// Where the point goes on the x axis: the step the same line names (`step`,
    /// `global_step`, `iter` or `epoch`, in that preference), or else the line's seq.
    pub x: f64,
    /// Which x that is: `seq`, or the name of the step key.
    pub x_name: &'static str,
    /// The value.
    pub y: f64,
}

impl PartialEq for Metric {
    fn eq(&self, other: &Metric) -> bool {
        // Bit equality, so that `Eq` holds (values are never NaN: those are not metrics).
        self.name == other.name
            && self.x_name == other.x_name
            && self.x.to_bits() == other.x.to_bits()
            && self.y.to_bits() == other.y.to_bits()
    }
}

impl Eq for Metric {}

impl Metric {
    /// The SSE `metric` event's data: `{"name":"loss","x":3,"y":0.2031,"seq":41}`, where
    /// `seq` is the seq of the line the value was read from.
    pub fn event_json(&self, seq: u64) -> String {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            name: &'a str,
            x: f64,
            y: f64,
            seq: u64,
        }
        let wire = Wire {
            name: &self.name,
            x: self.x,
            y: self.y,
            seq,
        };
        // A struct of a string and numbers always serialises.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Bytes this metric holds in memory.
    pub(crate) fn size_in_memory(&self) -> usize {
        std::mem::size_of::<Metric>() + self.name.len()
    }
}
