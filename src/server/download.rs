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
        let (timestamp, mut line) = self.open[slot]
            .take()
            .unwrap_or_else(|| (e.timestamp.to_string(), String::new()));
        line.push_str(&e.message);
        if e.end == LineEnd::None {
            self.open[slot] = Some((timestamp, line));
        } else {
            self.line(&timestamp, e.stream.as_str(), &line);
        }
    }

    /// After the last entry: what is still open ends here, and entries after it were lost.
    fn end(&mut self, next_seq: u64) {
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
        self.out.push_str(&format!(
            "[runstream] entries {} to {} were not kept (evicted from memory, not in the log)\n",
            self.next_seq,
            upto - 1
        ));
    }

    fn line(&mut self, timestamp: &str, stream: &str, text: &str) {
        self.out
            .push_str(&format!("{timestamp} [{stream}] {text}\n"));
    }
}
