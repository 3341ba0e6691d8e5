//! `GET /api/runs/{id}/logs/download`: the whole log as plain text, one line per line of
//! output, streamed as it is read.

use tiny_http::Request;

use super::http::StreamingResponse;
use crate::{Entry, LineEnd, RunHandle, Stream};

/// Streams the run's log as text: `{timestamp} [{stream}] {line}`. Pieces of one line
/// (`end: none`: a partial flush or a cut long line) are joined, as the streaming guide
/// tells clients to; where entries were lost, a line says which.
pub fn send(run: RunHandle, request: Request, cors: &[(&'static str, String)]) {
    let disposition = format!("attachment; filename=\"{}.log\"", run.id());
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Disposition", &disposition),
    ];
    headers.extend(cors.iter().map(|(k, v)| (*k, v.as_str())));
    let result = (|| -> std::io::Result<()> {
        let mut out = StreamingResponse::start(request, "200 OK", &headers)?;
        let capture = run.capture();
        let mut text = LogText::default();
        loop {
            let (batch, next_seq) = capture.read(text.next_seq, 4096);
            if batch.is_empty() {
                text.end(next_seq);
                out.chunk(text.out.as_bytes())?;
                break;
            }
            for e in &batch {
                text.push(e);
            }
            out.chunk(text.out.as_bytes())?;
            text.out.clear();
        }
        out.finish()
    })();
    if let Err(e) = result {
        log::debug!("download of {} ended early: {e}", run.id());
    }
}

/// A line's pieces are joined while it stays under this many bytes; a longer line is
/// written out as its pieces come instead of being held (30 MB without a newline must not
/// be 30 MB per download).
const JOIN_MAX: usize = 256 * 1024;

/// Turns entries into text lines.
#[derive(Default)]
struct LogText {
    /// Text ready to send.
    out: String,
    /// The seq after the last entry seen.
    next_seq: u64,
    /// Per stream (stdout, stderr): the line so far, while its pieces come, with the
    /// timestamp of its first piece.
    open: [Option<(String, String)>; 2],
    /// The stream whose long line is being written to `out` piece by piece: its head is
    /// out, its end is not. A line of another stream cuts it (the rest of it then
    /// continues on a line of its own).
    streaming: Option<usize>,
}

impl LogText {
    fn push(&mut self, e: &Entry) {
        if e.seq > self.next_seq {
            self.lost(e.seq);
        }
        self.next_seq = e.seq + 1;
        let slot = match e.stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => {
                self.line(&e.timestamp.to_string(), "system", &e.message);
                return;
            }
        };
        if self.streaming == Some(slot) {
            self.out.push_str(&e.message);
            if e.end != LineEnd::None {
                self.out.push('\n');
                self.streaming = None;
            }
            return;
        }
        let (timestamp, mut line) = self.open[slot]
            .take()
            .unwrap_or_else(|| (e.timestamp.to_string(), String::new()));
        line.push_str(&e.message);
        if e.end != LineEnd::None {
            self.line(&timestamp, e.stream.as_str(), &line);
        } else if line.len() > JOIN_MAX {
            self.end_streaming();
            self.out
                .push_str(&format!("{timestamp} [{}] {line}", e.stream.as_str()));
            self.streaming = Some(slot);
        } else {
            self.open[slot] = Some((timestamp, line));
        }
    }

    /// After the last entry: what is still open ends here, and entries after it were lost.
    fn end(&mut self, next_seq: u64) {
        self.end_streaming();
        for (slot, stream) in [(0, "stdout"), (1, "stderr")] {
            if let Some((timestamp, line)) = self.open[slot].take() {
                self.line(&timestamp, stream, &line);
            }
        }
        if next_seq > self.next_seq {
            self.lost(next_seq);
        }
    }

    /// Entries from `next_seq` up to (not including) `upto` are gone: say so.
    fn lost(&mut self, upto: u64) {
        self.end_streaming();
        self.out.push_str(&format!(
            "[runstream] entries {} to {} were not kept (evicted from memory, not in the log)\n",
            self.next_seq,
            upto - 1
        ));
    }

    fn line(&mut self, timestamp: &str, stream: &str, text: &str) {
        self.end_streaming();
        self.out
            .push_str(&format!("{timestamp} [{stream}] {text}\n"));
    }

    /// Ends the long line being written, if one is.
    fn end_streaming(&mut self) {
        if self.streaming.take().is_some() {
            self.out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Level, Timestamp};

    fn piece(seq: u64, stream: Stream, message: &str, end: LineEnd) -> Entry {
        let t = Timestamp::from_micros(seq as i64);
        Entry::new(seq, t, stream, Level::Info, message.into(), end)
    }

    #[test]
    fn short_lines_are_joined_and_long_ones_streamed_without_being_held() {
        let mut text = LogText::default();
        text.push(&piece(0, Stream::Stdout, "ab", LineEnd::None));
        text.push(&piece(1, Stream::Stderr, "err", LineEnd::Lf));
        text.push(&piece(2, Stream::Stdout, "cd", LineEnd::Lf));
        let t = |seq: i64| Timestamp::from_micros(seq).to_string();
        assert_eq!(
            text.out,
            format!("{} [stderr] err\n{} [stdout] abcd\n", t(1), t(0))
        );
        text.out.clear();
        let big = "x".repeat(JOIN_MAX + 1);
        for seq in 3..6 {
            text.push(&piece(seq, Stream::Stdout, &big, LineEnd::None));
            assert!(text.open[0].is_none(), "a long line is not held");
        }
        text.push(&piece(6, Stream::Stderr, "err", LineEnd::Lf));
        text.push(&piece(7, Stream::Stdout, "end", LineEnd::Lf));
        text.end(8);
        let want = format!(
            "{} [stdout] {}\n{} [stderr] err\n{} [stdout] end\n",
            t(3),
            big.repeat(3),
            t(6),
            t(7)
        );
        assert!(text.out == want, "{} bytes", text.out.len());
    }
}
