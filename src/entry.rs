//! One captured line of output (an entry) and its JSON encoding, made once per entry.

use std::cell::RefCell;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The child's standard output.
    Stdout,
    /// The child's standard error.
    Stderr,
    /// The engine's own words about the run ("sent SIGTERM to process group 1234").
    System,
}

impl Stream {
    /// The name used in JSON: `stdout`, `stderr` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

/// How an entry's line ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnd {
    /// Ended by `\n` (a `\r\n` ending counts as this).
    Lf,
    /// Ended by a bare `\r`: a progress update that a terminal would draw over.
    Cr,
    /// Not ended: a partial line flushed after the child went quiet, a piece of a line
    /// longer than the maximum line size, or the last bytes before end of file.
    None,
}

impl LineEnd {
    /// The name used in JSON: `lf`, `cr` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnd::Lf => "lf",
            LineEnd::Cr => "cr",
            LineEnd::None => "none",
        }
    }

    /// The bytes a terminal would need to reproduce this ending.
    pub fn terminator(self) -> &'static str {
        match self {
            LineEnd::Lf => "\n",
            LineEnd::Cr => "\r",
            LineEnd::None => "",
        }
    }
}

/// The severity of an entry, guessed from its text (see [`Level::classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `WARNING`.
    Warning,
    /// `ERROR`.
    Error,
    /// `CRITICAL`.
    Critical,
}

impl Level {
    /// The name used in JSON: `DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// The old backend's rule, kept so its UIs keep working: the first of these that the
    /// upper-cased text contains wins — ERROR or EXCEPTION → `Error`, WARNING or WARN →
    /// `Warning`, DEBUG → `Debug`, CRITICAL or FATAL → `Critical`, INFO → `Info`;
    /// otherwise `Error` on stderr and `Info` on stdout. Progress bars with no keyword are
    /// `Info` even on stderr, where tqdm draws them: `\r` updates (`end: cr`) and a bar's
    /// last frame, which ends with `\n` (text like `100%|#####|`).
    ///
    /// ```
    /// use runstream::{Level, LineEnd, Stream};
    /// assert_eq!(Level::classify("epoch 1 warn: lr high", Stream::Stdout, LineEnd::Lf), Level::Warning);
    /// assert_eq!(Level::classify("50%|#####", Stream::Stderr, LineEnd::Cr), Level::Info);
    /// assert_eq!(Level::classify("Traceback (most recent call last):", Stream::Stderr, LineEnd::Lf), Level::Error);
    /// ```
    pub fn classify(message: &str, stream: Stream, end: LineEnd) -> Level {
        if let Some(level) = keyword_level(message.as_bytes()) {
            return level;
        }
        match (stream, end) {
            (Stream::Stderr, LineEnd::Cr) => Level::Info,
            (Stream::Stderr, _) if is_progress_bar(message) => Level::Info,
            (Stream::Stderr, _) => Level::Error,
            _ => Level::Info,
        }
    }
}

/// tqdm's bar: a percentage followed by `|`, as in ` 45%|####      | 45/100`.
fn is_progress_bar(text: &str) -> bool {
    text.match_indices("%|")
        .any(|(i, _)| i > 0 && text.as_bytes()[i - 1].is_ascii_digit())
}

/// Keywords in order of precedence. One pass over the text finds the best match.
const KEYWORDS: [(&[u8], Level, u8); 8] = [
    (b"ERROR", Level::Error, 0),
    (b"EXCEPTION", Level::Error, 0),
    (b"WARNING", Level::Warning, 1),
    (b"WARN", Level::Warning, 1),
    (b"DEBUG", Level::Debug, 2),
    (b"CRITICAL", Level::Critical, 3),
    (b"FATAL", Level::Critical, 3),
    (b"INFO", Level::Info, 4),
];

fn keyword_level(text: &[u8]) -> Option<Level> {
    // Every keyword starts with one of these letters (c, d, e, f, i, w in either case);
    // skip the rest cheaply. Written as compares, not `matches!`, so that the block test
    // below becomes a few vector compares rather than a per-byte bit-table lookup.
    let may_start = |b: u8| {
        let lower = b | 0x20;
        (lower.wrapping_sub(b'c') < 4) | (lower == b'i') | (lower == b'w')
    };
    const BLOCK: usize = 16;
    let mut best: Option<(u8, Level)> = None;
    let mut from = 0;
    while from < text.len() {
        let to = (from + BLOCK).min(text.len());
        // A whole block with no possible first letter is skipped by one branch-free test
        // that the compiler vectorises (long lines are mostly such blocks).
        if let Ok(block) = <&[u8; BLOCK]>::try_from(&text[from..to]) {
            if !block.iter().fold(false, |hit, &b| hit | may_start(b)) {
                from = to;
                continue;
            }
        }
        for i in from..to {
            if !may_start(text[i]) {
                continue;
            }
            let rest = &text[i..];
            for &(word, level, rank) in &KEYWORDS {
                if rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word) {
                    if rank == 0 {
                        return Some(level);
                    }
                    if best.is_none_or(|(r, _)| rank < r) {
                        best = Some((rank, level));
                    }
                }
            }
        }
        from = to;
    }
    best.map(|(_, level)| level)
}

/// One captured line: what subscribers, the log file and the API all see.
///
/// Its JSON form (see [`Entry::json`]) is made once, when the entry is captured, and shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the run's output: 0, 1, 2, … with no holes.
    pub seq: u64,
    /// When the engine read the bytes.
    pub timestamp: Timestamp,
    /// Where the line came from.
    pub stream: Stream,
    /// Severity guessed from the text.
    pub level: Level,
    /// The line without its terminator, decoded as UTF-8 (invalid bytes become U+FFFD).
    pub message: String,
    /// How the line ended.
    pub end: LineEnd,
    json: Box<str>,
    /// Numbers read from the line (empty for most lines); see [`Entry::metrics`].
    metrics: Box<[crate::metrics::Metric]>,
}

impl Entry {
    /// Makes an entry and its JSON encoding.
    pub fn new(
        seq: u64,
        timestamp: Timestamp,
        stream: Stream,
        level: Level,
        message: String,
        end: LineEnd,
    ) -> Entry {
        let json = encode(seq, timestamp, stream, level, &message, end);
        Entry {
            seq,
            timestamp,
            stream,
            level,
            message,
            end,
            json,
            metrics: Box::default(),
        }
    }

    /// The entry as one line of JSON (no newline):
    /// `{"seq":41,"timestamp":"…","stream":"stdout","level":"INFO","message":"epoch 1/3","end":"lf"}`.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Reads an entry back from its JSON line (as the run log stores it).
    pub fn from_json(line: &str) -> Option<Entry> {
        let line = line.trim_end();
        // Replays read whole logs back: parse our own encoding directly, and fall back to
        // serde_json for anything else (other field order, extra spaces).
        if let Some(entry) = parse_own_encoding(line) {
            return Some(entry);
        }
        #[derive(Deserialize)]
        struct Wire {
            seq: u64,
            timestamp: Timestamp,
            stream: Stream,
            level: Level,
            message: String,
            end: LineEnd,
        }
        let w: Wire = serde_json::from_str(line).ok()?;
        Some(Entry {
            seq: w.seq,
            timestamp: w.timestamp,
            stream: w.stream,
            level: w.level,
            message: w.message,
            end: w.end,
            json: line.trim_end().into(),
            metrics: Box::default(),
        })
    }

    /// The metrics read from this line (`loss=0.12`, `loss: 0.12`, `{'loss': 0.12}`, or
    /// the run's own patterns): empty for most lines, and for the pieces of a line that
    /// arrives in parts (its metrics come on the entry that ends it). Not part of the
    /// entry's JSON; SSE sends them as `metric` events.
    pub fn metrics(&self) -> &[crate::metrics::Metric] {
        &self.metrics
    }

    pub(crate) fn set_metrics(&mut self, metrics: Box<[crate::metrics::Metric]>) {
        self.metrics = metrics;
    }

    /// Bytes this entry holds in memory, for the ring's byte cap.
    pub fn size_in_memory(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self.message.len()
            + self.json.len()
            + self
                .metrics
                .iter()
                .map(|m| m.size_in_memory())
                .sum::<usize>()
    }
}

/// Parses exactly what `encode` writes, without a JSON parser for the fixed parts: the
/// constant pieces are stripped, the variable ones end at the next `"` (a byte search).
fn parse_own_encoding(line: &str) -> Option<Entry> {
    fn until_quote(text: &str) -> Option<(&str, &str)> {
        text.split_once('"')
    }
    let rest = line.strip_prefix("{\"seq\":")?;
    let (seq, rest) = rest.split_once(',')?;
    let seq: u64 = seq.parse().ok()?;
    let (timestamp, rest) = until_quote(rest.strip_prefix("\"timestamp\":\"")?)?;
    let timestamp = Timestamp::parse(timestamp)?;
    let (stream, rest) = until_quote(rest.strip_prefix(",\"stream\":\"")?)?;
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        "system" => Stream::System,
        _ => return None,
    };
    let (level, rest) = until_quote(rest.strip_prefix(",\"level\":\"")?)?;
    let level = match level {
        "DEBUG" => Level::Debug,
        "INFO" => Level::Info,
        "WARNING" => Level::Warning,
        "ERROR" => Level::Error,
        "CRITICAL" => Level::Critical,
        _ => return None,
    };
    let rest = rest.strip_prefix(",\"message\":")?;
    // The line ends with `,"end":"xx"}`; the message (a JSON string) is what comes before.
    let (message, end) = if let Some(m) = rest.strip_suffix(",\"end\":\"lf\"}") {
        (m, LineEnd::Lf)
    } else if let Some(m) = rest.strip_suffix(",\"end\":\"cr\"}") {
        (m, LineEnd::Cr)
    } else {
        (rest.strip_suffix(",\"end\":\"none\"}")?, LineEnd::None)
    };
    let message = match message.strip_prefix('"').and_then(|m| m.strip_suffix('"')) {
        Some(plain) if !plain.contains(['\\', '"']) => plain.to_string(),
        _ => serde_json::from_str::<String>(message).ok()?,
    };
    Some(Entry {
        seq,
        timestamp,
        stream,
        level,
        message,
        end,
        json: line.into(),
        metrics: Box::default(),
    })
}

thread_local! {
    /// The last timestamp this thread formatted, and its text. Entries captured in one batch
    /// share their timestamp, so the run thread formats each distinct one once.
    static TIMESTAMP_TEXT: RefCell<(Option<Timestamp>, String)> =
        const { RefCell::new((None, String::new())) };
}

/// An entry's JSON line (see [`Entry::json`]), assembled piece by piece into a buffer of the
/// exact size: this runs once per captured line, and `write!` formatting (above all of the
/// timestamp) was most of its cost. Byte for byte what
/// `format!("{{\"seq\":{seq},\"timestamp\":\"{timestamp}\",…")` plus `serde_json` for the
/// message would give.
fn encode(
    seq: u64,
    timestamp: Timestamp,
    stream: Stream,
    level: Level,
    message: &str,
    end: LineEnd,
) -> Box<str> {
    const SEQ: &str = "{\"seq\":";
    const TIMESTAMP: &str = ",\"timestamp\":\"";
    const STREAM: &str = "\",\"stream\":\"";
    const LEVEL: &str = "\",\"level\":\"";
    const MESSAGE: &str = "\",\"message\":";
    const END: &str = ",\"end\":\"";
    const CLOSE: &str = "\"}";
    // serde_json escapes exactly `"`, `\\` and control characters below 0x20; text without
    // them is copied as is between quotes. The rest (rare) goes through serde_json itself.
    let plain = !needs_escape(message.as_bytes());
    let escaped = if plain {
        None
    } else {
        // serde_json writes a valid JSON string for any &str; it cannot fail into a String.
        Some(serde_json::to_string(message).unwrap_or_default())
    };
    let mut digits = [0u8; 20];
    let seq_text = u64_text(seq, &mut digits);
    TIMESTAMP_TEXT.with(|cache| {
        let mut cache = cache.borrow_mut();
        let (cached_at, text) = &mut *cache;
        if *cached_at != Some(timestamp) {
            text.clear();
            let _ = write!(text, "{timestamp}");
            *cached_at = Some(timestamp);
        }
        let message_len = escaped.as_ref().map_or(message.len() + 2, String::len);
        let len = SEQ.len()
            + seq_text.len()
            + TIMESTAMP.len()
            + text.len()
            + STREAM.len()
            + stream.as_str().len()
            + LEVEL.len()
            + level.as_str().len()
            + MESSAGE.len()
            + message_len
            + END.len()
            + end.as_str().len()
            + CLOSE.len();
        let mut json = String::with_capacity(len);
        json.push_str(SEQ);
        json.push_str(seq_text);
        json.push_str(TIMESTAMP);
        json.push_str(text);
        json.push_str(STREAM);
        json.push_str(stream.as_str());
        json.push_str(LEVEL);
        json.push_str(level.as_str());
        json.push_str(MESSAGE);
        match &escaped {
            Some(quoted) => json.push_str(quoted),
            None => {
                json.push('"');
                json.push_str(message);
                json.push('"');
            }
        }
        json.push_str(END);
        json.push_str(end.as_str());
        json.push_str(CLOSE);
        debug_assert_eq!(json.len(), len);
        // Capacity is exactly the length: no reallocation here.
        json.into_boxed_str()
    })
}

/// Whether serde_json would escape any byte of `text` (`"`, `\\`, below 0x20).
fn needs_escape(text: &[u8]) -> bool {
    any_byte(text, |b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Whether any byte of `text` is `special`. Tests 16-byte blocks without branching, which
/// the compiler vectorises (this runs on every captured line).
#[inline]
pub(crate) fn any_byte(text: &[u8], special: impl Fn(u8) -> bool) -> bool {
    let blocks = text.chunks_exact(16);
    let tail = blocks.remainder();
    for block in blocks {
        let block: &[u8; 16] = block.try_into().expect("chunks_exact gives whole blocks");
        if block.iter().fold(false, |hit, &b| hit | special(b)) {
            return true;
        }
    }
    tail.iter().any(|&b| special(b))
}

/// `n` in decimal, written into the end of `buf`.
pub(crate) fn u64_text(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Re-use the one encoding instead of serialising the fields again.
        let raw = serde_json::value::RawValue::from_string(self.json.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_round_trip() {
        let e = Entry::new(
            41,
            Timestamp::from_micros(0),
            Stream::Stderr,
            Level::Error,
            "bad \"quote\" \u{fffd}\n".into(),
            LineEnd::Lf,
        );
        assert_eq!(
            e.json(),
            r#"{"seq":41,"timestamp":"1970-01-01T00:00:00.000000Z","stream":"stderr","level":"ERROR","message":"bad \"quote\" �\n","end":"lf"}"#
        );
        assert_eq!(Entry::from_json(e.json()), Some(e.clone()));
        assert_eq!(parse_own_encoding(e.json()), Some(e.clone()));
        // The fast path and serde_json agree on every kind of message.
        for message in [
            "",
            "plain",
            "quote \" and \\ back",
            "tab\tnew\nline",
            "\u{1}\u{1f}",
            "é ✓ \u{fffd}",
            ",\"end\":\"lf\"}",
        ] {
            for end in [LineEnd::Lf, LineEnd::Cr, LineEnd::None] {
                let e = Entry::new(
                    7,
                    Timestamp::from_micros(1_764_144_000_123_456),
                    Stream::System,
                    Level::Critical,
                    message.into(),
                    end,
                );
                assert_eq!(
                    parse_own_encoding(e.json()).as_ref(),
                    Some(&e),
                    "{message:?}"
                );
            }
        }
        // Other shapes still parse through serde_json.
        let spaced = r#"{"seq": 3, "end": "cr", "timestamp": "2026-11-26T08:00:00Z", "stream": "stdout", "level": "INFO", "message": "x"}"#;
        assert_eq!(
            Entry::from_json(spaced).map(|e| (e.seq, e.end)),
            Some((3, LineEnd::Cr))
        );
        assert_eq!(serde_json::to_string(&e).unwrap(), e.json());
    }

    #[test]
    fn encoding_matches_format_and_serde_json_byte_for_byte() {
        // The straightforward encoding `encode` must reproduce exactly.
        fn reference(e: &Entry) -> String {
            format!(
                "{{\"seq\":{},\"timestamp\":\"{}\",\"stream\":\"{}\",\"level\":\"{}\",\"message\":{},\"end\":\"{}\"}}",
                e.seq,
                e.timestamp,
                e.stream.as_str(),
                e.level.as_str(),
                serde_json::to_string(&e.message).unwrap(),
                e.end.as_str()
            )
        }
        let messages = [
            "",
            "plain",
            "tab\there",
            "quote \" and backslash \\",
            "\u{0}\u{1}\u{8}\u{c}\r\n\u{1b}[31mred\u{1f}",
            "del \u{7f} é ✓ 😀 \u{fffd}",
            "/slash and 'single'",
        ];
        let times = [
            0,
            1,
            -1,
            1_764_144_000_123_456,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
        ];
        let mut n = 0u64;
        for (i, message) in messages.iter().enumerate() {
            for &t in &times {
                // Alternate timestamps so the per-thread cache both hits and misses.
                for &seq in &[0, 9, 10, 12_345, u64::MAX] {
                    let stream = [Stream::Stdout, Stream::Stderr, Stream::System][i % 3];
                    let level = [
                        Level::Debug,
                        Level::Info,
                        Level::Warning,
                        Level::Error,
                        Level::Critical,
                    ][(n % 5) as usize];
                    let end = [LineEnd::Lf, LineEnd::Cr, LineEnd::None][(n % 3) as usize];
                    n += 1;
                    let e = Entry::new(
                        seq,
                        Timestamp::from_micros(t),
                        stream,
                        level,
                        message.to_string(),
                        end,
                    );
                    assert_eq!(e.json(), reference(&e));
                    assert_eq!(Entry::from_json(e.json()), Some(e.clone()));
                }
            }
        }
    }

    #[test]
    fn keywords_and_escapes_are_found_at_every_offset() {
        // The plain byte-by-byte scan keyword_level must agree with.
        fn reference(text: &[u8]) -> Option<Level> {
            let mut best: Option<(u8, Level)> = None;
            for i in 0..text.len() {
                for &(word, level, rank) in &KEYWORDS {
                    let rest = &text[i..];
                    if rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word) {
                        if rank == 0 {
                            return Some(level);
                        }
                        if best.is_none_or(|(r, _)| rank < r) {
                            best = Some((rank, level));
                        }
                    }
                }
            }
            best.map(|(_, level)| level)
        }
        let words = [
            "",
            "warn",
            "WARNING",
            "debug",
            "Error",
            "exception",
            "fatal",
            "info",
            "crit",
            "d",
        ];
        for pad in 0..40 {
            for (a, b) in [(0, 1), (2, 4), (7, 3), (5, 9), (1, 1), (3, 8)] {
                for filler in ["x", "cde"] {
                    let text = format!(
                        "{}{}{}{}",
                        filler.repeat(pad),
                        words[a],
                        "y".repeat(pad % 17),
                        words[b]
                    );
                    assert_eq!(
                        keyword_level(text.as_bytes()),
                        reference(text.as_bytes()),
                        "{text:?}"
                    );
                }
            }
        }
        for len in 0..40 {
            for special in ["\"", "\\", "\n", "\u{1f}", "\u{0}", "\u{7f}", "é"] {
                for at in 0..=len {
                    let text = format!("{}{special}{}", "m".repeat(at), "m".repeat(len - at));
                    let want = serde_json::to_string(&text).unwrap() != format!("\"{text}\"");
                    assert_eq!(needs_escape(text.as_bytes()), want, "{text:?}");
                }
            }
            assert!(!needs_escape("m".repeat(len).as_bytes()));
        }
    }

    #[test]
    fn levels_follow_the_old_backend_rule() {
        let c = |m: &str, s| Level::classify(m, s, LineEnd::Lf);
        assert_eq!(c("all good", Stream::Stdout), Level::Info);
        assert_eq!(c("all good", Stream::Stderr), Level::Error);
        assert_eq!(c("RuntimeError: boom", Stream::Stdout), Level::Error);
        assert_eq!(c("ValueException", Stream::Stdout), Level::Error);
        assert_eq!(c("UserWarning: x", Stream::Stderr), Level::Warning);
        assert_eq!(c("[debug] x", Stream::Stderr), Level::Debug);
        assert_eq!(c("fatal: no", Stream::Stdout), Level::Critical);
        assert_eq!(c("Critical", Stream::Stdout), Level::Critical);
        assert_eq!(c("INFO step", Stream::Stderr), Level::Info);
        // Precedence: error beats warning wherever they stand.
        assert_eq!(c("warn then error", Stream::Stdout), Level::Error);
        assert_eq!(c("info then debug", Stream::Stdout), Level::Debug);
        assert_eq!(
            Level::classify("10%", Stream::Stderr, LineEnd::Cr),
            Level::Info
        );
        assert_eq!(
            Level::classify("10% error", Stream::Stderr, LineEnd::Cr),
            Level::Error
        );
    }
}
