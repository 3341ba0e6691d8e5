//! Bytes from one pipe → lines: `\n` (and `\r\n`) end `lf` lines, a bare `\r` ends a `cr`
//! progress line, long or unterminated text is cut into `none` pieces.

use crate::LineEnd;

/// A line cut out of a stream of bytes, decoded as UTF-8 (invalid bytes → U+FFFD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The text without its terminator.
    pub message: String,
    /// How it ended.
    pub end: LineEnd,
}

/// Splits one stream's bytes into [`Line`]s, keeping the unfinished tail between calls.
///
/// Reads arrive in arbitrary pieces, so a `\r` at the end of a piece is held back until the
/// next byte says whether it starts a `\r\n`. An empty segment ended by a bare `\r` is not a
/// line (tqdm writes `\r` before each update) — unless the line's text already went out as
/// `none` pieces (a slow progress bar, flushed while the child was quiet): then an empty
/// `cr` line ends it, so a reader knows the next text draws over it. Text longer than
/// `max_line` bytes is cut into `none` pieces at a character boundary, so memory per stream
/// stays bounded and nothing is lost.
///
/// ```
/// use runstream::{LineEnd, LineSplitter};
/// let mut split = LineSplitter::new(1024);
/// let mut lines = Vec::new();
/// split.push(b"a\rb\rc\nhalf", &mut lines);
/// let got: Vec<_> = lines.iter().map(|l| (l.message.as_str(), l.end)).collect();
/// assert_eq!(got, [("a", LineEnd::Cr), ("b", LineEnd::Cr), ("c", LineEnd::Lf)]);
/// lines.clear();
/// split.flush(&mut lines); // the child went quiet: hand out what is pending
/// assert_eq!(lines[0].message, "half");
/// assert_eq!(lines[0].end, LineEnd::None);
/// lines.clear();
/// split.push(b"\r 10%", &mut lines); // a slow bar redraws: "half" was `\r`-ended
/// assert_eq!((lines[0].message.as_str(), lines[0].end), ("", LineEnd::Cr));
/// ```
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    pending_cr: bool,
    max_line: usize,
    /// The current line's text so far went out as `none` pieces.
    continues: bool,
}

impl LineSplitter {
    /// A splitter that cuts lines longer than `max_line` bytes (at least 4).
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            pending_cr: false,
            max_line: max_line.max(4),
            continues: false,
        }
    }

    /// Whether bytes are held back waiting for their line's end.
    pub fn has_pending(&self) -> bool {
        self.pending_cr || !self.pending.is_empty()
    }

    /// Splits `data`, appending finished lines to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Line>) {
        let mut start = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if data.first() == Some(&b'\n') {
                self.emit_pending(LineEnd::Lf, out);
                start = 1;
            } else {
                self.emit_pending(LineEnd::Cr, out);
            }
        }
        let mut i = start;
        while let Some(offset) = find_break(&data[i..]) {
            i += offset;
            let b = data[i];
            let segment = &data[start..i];
            if b == b'\n' {
                self.emit(segment, LineEnd::Lf, out);
                i += 1;
            } else if i + 1 == data.len() {
                // A `\r` at the very end: the next read decides between `\r\n` and `\r`.
                self.pending.extend_from_slice(segment);
                self.pending_cr = true;
                self.cut_long_pending(out);
                return;
            } else if data[i + 1] == b'\n' {
                self.emit(segment, LineEnd::Lf, out);
                i += 2;
            } else {
                self.emit(segment, LineEnd::Cr, out);
                i += 1;
            }
            start = i;
        }
        self.pending.extend_from_slice(&data[start..]);
        self.cut_long_pending(out);
    }

    /// Hands out what is pending as a line, because the child went quiet: a held-back `\r`
    /// ends a `cr` line, other text becomes a `none` piece. The first bytes of a character
    /// whose other bytes have not come yet (a child may pause in the middle of one) stay
    /// pending, at most 3 of them: decoded now, they would become U+FFFD, and the rest
    /// would too when it came. The next read or [`LineSplitter::finish`] takes them.
    pub fn flush(&mut self, out: &mut Vec<Line>) {
        if std::mem::take(&mut self.pending_cr) {
            self.emit_pending(LineEnd::Cr, out);
            return;
        }
        let keep = incomplete_char_len(&self.pending);
        if keep == 0 {
            self.emit_pending(LineEnd::None, out);
            return;
        }
        let mut tail = [0u8; 3];
        let cut = self.pending.len() - keep;
        tail[..keep].copy_from_slice(&self.pending[cut..]);
        self.pending.truncate(cut);
        self.emit_pending(LineEnd::None, out);
        self.pending.extend_from_slice(&tail[..keep]);
    }

    /// Hands out everything pending, at end of file: like [`LineSplitter::flush`], but an
    /// unfinished character is decoded as it is (U+FFFD): no more bytes will come.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        let end = if std::mem::take(&mut self.pending_cr) {
            LineEnd::Cr
        } else {
            LineEnd::None
        };
        self.emit_pending(end, out);
    }

    fn emit_pending(&mut self, end: LineEnd, out: &mut Vec<Line>) {
        let pending = std::mem::take(&mut self.pending);
        self.emit(&pending, end, out);
        // Keep the allocation for the next partial line.
        self.pending = pending;
        self.pending.clear();
    }

    /// Emits `segment` (prefixed by the pending bytes) as one line, or several when long.
    fn emit(&mut self, segment: &[u8], end: LineEnd, out: &mut Vec<Line>) {
        if !self.pending.is_empty() {
            let mut whole = std::mem::take(&mut self.pending);
            whole.extend_from_slice(segment);
            self.emit_owned(&whole, end, out);
            whole.clear();
            self.pending = whole;
            return;
        }
        self.emit_owned(segment, end, out);
    }

    fn emit_owned(&mut self, mut text: &[u8], end: LineEnd, out: &mut Vec<Line>) {
        if text.is_empty() && (end == LineEnd::None || end == LineEnd::Cr && !self.continues) {
            return;
        }
        while text.len() > self.max_line {
            let cut = char_boundary(text, self.max_line);
            out.push(decode(&text[..cut], LineEnd::None));
            text = &text[cut..];
        }
        out.push(decode(text, end));
        self.continues = end == LineEnd::None;
    }

    fn cut_long_pending(&mut self, out: &mut Vec<Line>) {
        if self.pending.len() <= self.max_line {
            return;
        }
        let mut offset = 0;
        while self.pending.len() - offset > self.max_line {
            let cut = offset + char_boundary(&self.pending[offset..], self.max_line);
            out.push(decode(&self.pending[offset..cut], LineEnd::None));
            offset = cut;
        }
        self.pending.drain(..offset);
        self.continues = true;
    }
}

/// Where the first `\n` or `\r` in `data` is. Most bytes of most lines are neither, so it
/// first skips whole 16-byte blocks with a branch-free test the compiler vectorises, then
/// finds the byte itself.
fn find_break(data: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let is_break = |b: u8| b == b'\n' || b == b'\r';
    let mut from = 0;
    for block in data.chunks_exact(BLOCK) {
        let block: &[u8; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
        if block.iter().fold(false, |hit, &b| hit | is_break(b)) {
            break;
        }
        from += BLOCK;
    }
    data[from..]
        .iter()
        .position(|&b| is_break(b))
        .map(|p| from + p)
}

/// How many bytes at the end of `text` (0 to 3) are the start of a UTF-8 character whose
/// other bytes are still to come.
fn incomplete_char_len(text: &[u8]) -> usize {
    // A character is at most 4 bytes: its start is among the last 3 (else it is complete).
    let from = text.len().saturating_sub(3);
    let Some(start) = (from..text.len()).rev().find(|&i| (text[i] & 0xC0) != 0x80) else {
        return 0;
    };
    match std::str::from_utf8(&text[start..]) {
        // `error_len() == None`: valid so far, cut short by the end of the input.
        Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => text.len() - start,
        _ => 0,
    }
}

/// The largest cut point ≤ `max` that does not split a UTF-8 character (falls back to
/// `max` for text that is not UTF-8 there).
fn char_boundary(text: &[u8], max: usize) -> usize {
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| i > 0 && (text[i] & 0xC0) != 0x80)
        .unwrap_or(max)
}

fn decode(bytes: &[u8], end: LineEnd) -> Line {
    // Valid UTF-8 (nearly always) goes through std's validator, which skips ASCII a word
    // at a time; `from_utf8_lossy` walks byte by byte even when nothing needs replacing.
    let message = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    Line { message, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&[u8]], max: usize) -> Vec<(String, LineEnd)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        out.into_iter().map(|l| (l.message, l.end)).collect()
    }

    fn lines(v: &[(&str, LineEnd)]) -> Vec<(String, LineEnd)> {
        v.iter().map(|(m, e)| (m.to_string(), *e)).collect()
    }

    use LineEnd::{Cr, Lf, None as Cut};

    #[test]
    fn carriage_returns_and_newlines() {
        assert_eq!(
            split_all(&[b"a\rb\rc\n"], 100),
            lines(&[("a", Cr), ("b", Cr), ("c", Lf)])
        );
        assert_eq!(
            split_all(&[b"x\r\ny\n\n"], 100),
            lines(&[("x", Lf), ("y", Lf), ("", Lf)])
        );
        // tqdm: `\r` before each update; empty cr segments are dropped.
        assert_eq!(
            split_all(&[b"\r 10%\r 20%\r100%\n"], 100),
            lines(&[(" 10%", Cr), (" 20%", Cr), ("100%", Lf)])
        );
    }

    #[test]
    fn a_cr_lf_split_across_reads_is_one_lf() {
        assert_eq!(
            split_all(&[b"abc\r", b"\ndef\r", b"g\n"], 100),
            lines(&[("abc", Lf), ("def", Cr), ("g", Lf)])
        );
        // Every split point of the same input gives the same lines.
        let input = b"ab\r\ncd\re\r\r\nf\n\rg";
        let whole = split_all(&[input], 100);
        for cut in 0..input.len() {
            assert_eq!(
                split_all(&[&input[..cut], &input[cut..]], 100),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn long_lines_are_cut_at_char_boundaries_and_lose_nothing() {
        let text = "é".repeat(10) + "\n"; // 20 bytes of two-byte characters
        let got = split_all(&[text.as_bytes()], 7);
        assert!(got.iter().all(|(m, _)| !m.contains('\u{fffd}')), "{got:?}");
        assert_eq!(
            got.iter().map(|(m, _)| m.as_str()).collect::<String>(),
            "é".repeat(10)
        );
        assert_eq!(got.last().unwrap().1, Lf);
        assert!(got[..got.len() - 1].iter().all(|(_, e)| *e == Cut));

        // Unterminated, arriving in small reads: pending never grows past the cap.
        let mut s = LineSplitter::new(10);
        let mut out = Vec::new();
        for _ in 0..100 {
            s.push(b"xyz", &mut out);
            assert!(s.pending.len() <= 10);
        }
        s.flush(&mut out);
        assert_eq!(out.iter().map(|l| l.message.len()).sum::<usize>(), 300);
    }

    #[test]
    fn line_breaks_are_found_at_every_offset_and_read_size() {
        // Lines of every length from 0 to 40 (so breaks fall everywhere relative to the
        // 16-byte blocks find_break skips), ended in turn by \n, \r\n and a bare \r.
        let mut input = Vec::new();
        let mut want = Vec::new();
        for len in 0..41usize {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            input.extend_from_slice(text.as_bytes());
            match len % 3 {
                0 => {
                    input.push(b'\n');
                    want.push((text, Lf));
                }
                1 => {
                    input.extend_from_slice(b"\r\n");
                    want.push((text, Lf));
                }
                _ => {
                    input.push(b'\r');
                    want.push((text, Cr)); // len % 3 == 2: never empty
                }
            }
        }
        input.extend_from_slice(b"tail without end");
        want.push(("tail without end".to_string(), Cut));
        for size in [1, 2, 7, 15, 16, 17, 31, 33, 64, input.len()] {
            let pieces: Vec<&[u8]> = input.chunks(size).collect();
            assert_eq!(split_all(&pieces, 1000), want, "reads of {size} bytes");
        }
        for at in 0..input.len() {
            assert_eq!(
                find_break(&input[at..]),
                input[at..].iter().position(|&b| b == b'\n' || b == b'\r')
            );
        }
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(
            split_all(&[b"ok\xff\xfe\n"], 100),
            lines(&[("ok\u{fffd}\u{fffd}", Lf)])
        );
    }

    #[test]
    fn flush_hands_out_partial_and_held_cr() {
        assert_eq!(split_all(&[b"partial"], 100), lines(&[("partial", Cut)]));
        assert_eq!(split_all(&[b"bar\r"], 100), lines(&[("bar", Cr)]));
        assert_eq!(split_all(&[b""], 100), lines(&[]));
    }

    /// A slow progress bar: each update went out as a `none` piece while the child was
    /// quiet, so the `\r` before the next one must still say "this line was redrawn".
    #[test]
    fn a_cr_after_a_flushed_piece_ends_that_line() {
        let mut s = LineSplitter::new(100);
        let mut out = Vec::new();
        for piece in [&b"\r 10%"[..], b"\r 20%", b"\n", b"\rdone", b"\n"] {
            s.push(piece, &mut out);
            s.flush(&mut out); // quiet after every write
        }
        let got: Vec<_> = out.into_iter().map(|l| (l.message, l.end)).collect();
        assert_eq!(
            got,
            lines(&[
                (" 10%", Cut),
                ("", Cr),
                (" 20%", Cut),
                ("", Lf),
                ("done", Cut),
                ("", Lf)
            ])
        );
        // A cut keeps the line's last piece pending, so its `\r` ends that piece.
        assert_eq!(
            split_all(&[b"abcdefgh\r", b"x\n"], 4),
            lines(&[("abcd", Cut), ("efgh", Cr), ("x", Lf)])
        );
    }

    /// Issue 16.1: a child that pauses in the middle of a character (`ab` and the first
    /// two bytes of 😀, then the rest and `cd\n`) gets `ab` and `😀cd`, not U+FFFDs.
    #[test]
    fn a_quiet_flush_keeps_an_unfinished_character_for_the_next_read() {
        let emoji = "😀".as_bytes();
        for split in 1..emoji.len() {
            let mut s = LineSplitter::new(100);
            let mut out = Vec::new();
            let mut first = b"ab".to_vec();
            first.extend_from_slice(&emoji[..split]);
            s.push(&first, &mut out);
            s.flush(&mut out); // the child went quiet
            assert!(s.has_pending());
            let mut rest = emoji[split..].to_vec();
            rest.extend_from_slice(b"cd\n");
            s.push(&rest, &mut out);
            let got: Vec<_> = out.into_iter().map(|l| (l.message, l.end)).collect();
            assert_eq!(got, lines(&[("ab", Cut), ("😀cd", Lf)]), "split at {split}");
        }
        // Only an unfinished character: nothing goes out yet, and nothing is lost.
        let mut s = LineSplitter::new(100);
        let mut out = Vec::new();
        s.push("é".as_bytes().split_at(1).0, &mut out);
        s.flush(&mut out);
        assert!(out.is_empty());
        s.push(b"\xa9!\n", &mut out);
        assert_eq!(out[0].message, "é!");
        // At EOF what is left is decoded as it is; invalid bytes are not held back.
        assert_eq!(
            split_all(&[b"ab\xf0\x9f"], 100),
            lines(&[("ab\u{fffd}", Cut)])
        );
        let mut s = LineSplitter::new(100);
        let mut out = Vec::new();
        s.push(b"x\xff", &mut out);
        s.flush(&mut out);
        assert_eq!(out[0].message, "x\u{fffd}");
        assert!(!s.has_pending());
        assert_eq!(incomplete_char_len(b"\xe2\x82"), 2);
        assert_eq!(incomplete_char_len("€".as_bytes()), 0);
        assert_eq!(incomplete_char_len(b"\x82\x82\x82"), 0);
        assert_eq!(incomplete_char_len(b""), 0);
    }
}
