//! Reads Server-Sent Events from a response body, each line bounded in bytes.

use std::io::{self, BufRead, BufReader, Read};

/// Longest line accepted: an entry is at most 64 KiB of text, which JSON escaping can
/// make six times longer.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// One event: `id`, `event` (`message` when not named), `data`.
#[derive(Debug, Default)]
pub struct Event {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

/// Events from a stream, one at a time.
pub struct EventReader {
    reader: BufReader<Box<dyn Read + Send + Sync>>,
}

impl EventReader {
    pub fn new(body: Box<dyn Read + Send + Sync>) -> EventReader {
        EventReader {
            reader: BufReader::new(body),
        }
    }

    /// The next event; `None` when the stream ended cleanly; an error when it broke.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let mut event = Event::default();
        let mut has_data = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(None);
            }
            if line.last() != Some(&b'\n') {
                let why = if n as u64 == MAX_LINE_BYTES {
                    "an event line is too long"
                } else {
                    "the stream ended inside an event"
                };
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                if has_data || !event.event.is_empty() {
                    if event.event.is_empty() {
                        event.event = "message".into();
                    }
                    return Ok(Some(event));
                }
                continue;
            }
            let (field, value) = text.split_once(':').unwrap_or((text, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => {} // a comment: keep-alive
                "id" => event.id = value.parse().ok(),
                "event" => event.event = value.to_string(),
                "data" => {
                    if event.data.len() as u64 + value.len() as u64 > MAX_LINE_BYTES {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "an event is too long",
                        ));
                    }
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {} // retry: and unknown fields
            }
        }
    }
}
