//! A minimal SSE client over a raw TCP stream: reads the chunked body incrementally, so
//! tests see exactly what arrives and when, and can drop the connection at any point.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One SSE event (comments come as `event == ":"`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad data {:?}: {e}", self.data))
    }
}

pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunk_left: usize,
    body: Vec<u8>,
    pub ended: bool,
}

impl SseClient {
    /// Connects and reads the response head. `extra` are extra request header lines.
    pub fn connect(addr: SocketAddr, path: &str, extra: &[&str]) -> SseClient {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        SseClient {
            reader,
            status,
            headers,
            chunk_left: 0,
            body: Vec::new(),
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more of the chunked body; false at the end of the body.
    fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if self.chunk_left == 0 {
            let mut size = String::new();
            if self.reader.read_line(&mut size).unwrap_or(0) == 0 {
                self.ended = true;
                return false;
            }
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                let mut crlf = String::new();
                let _ = self.reader.read_line(&mut crlf);
                self.ended = true;
                return false;
            }
            self.chunk_left = n;
        }
        let mut buf = vec![0; self.chunk_left];
        self.reader.read_exact(&mut buf).unwrap();
        self.body.extend_from_slice(&buf);
        self.chunk_left = 0;
        let mut crlf = [0; 2];
        self.reader.read_exact(&mut crlf).unwrap();
        true
    }

    /// The next event (or comment), or None at the end of the stream.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(pos) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.body.drain(..pos + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut ev = SseEvent {
                    event: "message".into(),
                    ..Default::default()
                };
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.event = ":".into();
                        ev.data = c.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = v.to_string();
                    } else if line.starts_with("retry: ") {
                        ev.event = "retry".into();
                    }
                }
                return Some(ev);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Events until (and including) the first one matching `pred`.
    pub fn until(&mut self, pred: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        while let Some(ev) = self.next_event() {
            let stop = pred(&ev);
            seen.push(ev);
            if stop {
                return seen;
            }
        }
        panic!("stream ended before the expected event; saw {seen:?}");
    }

    /// Every event to the end of the stream.
    pub fn rest(&mut self) -> Vec<SseEvent> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}
