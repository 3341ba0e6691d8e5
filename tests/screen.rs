//! A small terminal emulation for the terminal tests: applies printable text (wrapping at
//! the width), `\r`, `\n`, `\t`, erase-in-line (`ESC[K`, `ESC[2K`) and cursor-up (`ESC[A`)
//! to a grid, and ignores colours (`ESC[…m`). Any other escape sequence fails the test: the
//! view must emit only what this models. The grid grows downwards instead of scrolling, so
//! the "screen" is everything printed.

pub struct Screen {
    width: usize,
    rows: Vec<Vec<char>>,
    row: usize,
    col: usize,
    /// A character was written in the last column: the next one goes to a new row (what
    /// xterm and the Linux console do).
    wrap_pending: bool,
    escape: Option<String>,
}

impl Screen {
    pub fn new(width: usize) -> Screen {
        Screen {
            width,
            rows: vec![Vec::new()],
            row: 0,
            col: 0,
            wrap_pending: false,
            escape: None,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for c in String::from_utf8_lossy(bytes).chars() {
            self.put(c);
        }
    }

    fn put(&mut self, c: char) {
        if let Some(seq) = &mut self.escape {
            seq.push(c);
            if seq.len() == 1 && c != '[' {
                panic!("unexpected escape sequence ESC {c:?}");
            }
            if seq.len() > 1 && ('@'..='~').contains(&c) {
                let seq = self.escape.take().unwrap();
                self.csi(&seq[1..seq.len() - 1], c);
            }
            return;
        }
        match c {
            '\x1b' => self.escape = Some(String::new()),
            '\r' => {
                self.col = 0;
                self.wrap_pending = false;
            }
            '\n' => {
                self.down();
                self.wrap_pending = false;
            }
            '\t' => self.col = ((self.col / 8 + 1) * 8).min(self.width - 1),
            c if c.is_control() => {}
            c => {
                if self.wrap_pending {
                    self.down();
                    self.col = 0;
                    self.wrap_pending = false;
                }
                let line = &mut self.rows[self.row];
                if line.len() <= self.col {
                    line.resize(self.col + 1, ' ');
                }
                line[self.col] = c;
                if self.col + 1 == self.width {
                    self.wrap_pending = true;
                } else {
                    self.col += 1;
                }
            }
        }
    }

    fn down(&mut self) {
        self.row += 1;
        if self.rows.len() == self.row {
            self.rows.push(Vec::new());
        }
    }

    fn csi(&mut self, params: &str, command: char) {
        let n = |default: usize| params.parse().unwrap_or(default);
        match command {
            'm' => {}
            'K' => {
                let line = &mut self.rows[self.row];
                match n(0) {
                    0 => line.truncate(self.col),
                    2 => line.clear(),
                    other => panic!("unexpected ESC[{other}K"),
                }
            }
            'A' => {
                self.row = self.row.saturating_sub(n(1));
                self.wrap_pending = false;
            }
            other => panic!("unexpected escape sequence ESC[{params}{other}"),
        }
    }

    /// Every row, right-trimmed, without trailing empty rows.
    pub fn text(&self) -> String {
        let mut rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| r.iter().collect::<String>().trim_end().to_string())
            .collect();
        while rows.last().is_some_and(|r| r.is_empty()) {
            rows.pop();
        }
        rows.join("\n")
    }
}

#[test]
fn the_emulation_applies_carriage_returns_erases_and_wraps() {
    let mut s = Screen::new(5);
    // A terminal's `\n` keeps the column; the pty turns the program's `\n` into `\r\n`.
    s.feed(b"abc\rX\r\nlong line\r\n\x1b[31mred\x1b[0m\r\x1b[2Kok\r\n1\r\n2\x1b[1A\r\x1b[2Ky");
    assert_eq!(s.text(), "Xbc\nlong\nline\nok\ny\n2");
}
