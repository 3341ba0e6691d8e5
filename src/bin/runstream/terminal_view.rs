//! The live view used when stdout and stderr are the same terminal: progress lines (`cr`
//! entries) and unfinished lines stay on the bottom row, and any other line is printed
//! above them, as `tqdm.write` and indicatif's `println` do. Without it, a stdout line
//! printed while a stderr progress bar is drawn lands on the bar's row and keeps the
//! bar's last characters (`loss 1.2922` shown as `loss 1.29220`).

use std::io::{self, Write};

use runstream::{LineEnd, Stream};

/// Longest unfinished line kept for redrawing; a longer one ends its row (its text goes on
/// on the next row) so the view's memory stays bounded.
const MAX_OPEN_BYTES: usize = 4096;

/// Erases the row the cursor is on and puts the cursor at its start.
pub const ERASE_ROW: &str = "\r\x1b[2K";
/// Moves the cursor one row up and erases that row.
const ERASE_ROW_ABOVE: &str = "\x1b[1A\x1b[2K";

/// A line drawn on the bottom row(s) that is not finished: a progress line (ended by a
/// bare `\r`, to be drawn over) or text still waiting for its end.
#[derive(Debug)]
struct Open {
    stream: Stream,
    text: String,
    /// Ended by `\r`: the next text of its stream replaces it.
    progress: bool,
}

/// What the terminal shows at its bottom, and how to print entries around it.
#[derive(Debug, Default)]
pub struct TerminalView {
    open: Option<Open>,
}

impl TerminalView {
    /// Prints one line's text (`prefix` goes before it when it starts a row: a timestamp),
    /// keeping an open progress line at the bottom. `width` is the terminal's width in
    /// columns, to know how many rows an open line covers.
    pub fn entry(
        &mut self,
        out: &mut impl Write,
        stream: Stream,
        prefix: &str,
        text: &str,
        end: LineEnd,
        width: usize,
    ) -> io::Result<()> {
        // More of this stream's unfinished line: it goes on where the cursor is.
        if let Some(open) = self
            .open
            .as_mut()
            .filter(|o| o.stream == stream && !o.progress)
        {
            out.write_all(text.as_bytes())?;
            open.text.push_str(text);
            match end {
                LineEnd::Lf => {
                    out.write_all(b"\n")?;
                    self.open = None;
                }
                LineEnd::Cr => open.progress = true,
                LineEnd::None => {}
            }
            if self
                .open
                .as_ref()
                .is_some_and(|o| o.text.len() > MAX_OPEN_BYTES)
            {
                out.write_all(b"\n")?;
                self.open = None;
            }
            return Ok(());
        }
        // A new line: take the open one off the screen first. This stream's own progress
        // line is replaced (what `\r` means); the other stream's comes back below.
        let parked = self.open.take();
        if let Some(open) = &parked {
            erase(out, &open.text, width)?;
        }
        let other = parked.filter(|o| o.stream != stream);
        let line = format!("{prefix}{text}");
        match end {
            LineEnd::Lf => {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                if let Some(open) = other {
                    out.write_all(open.text.as_bytes())?;
                    self.open = Some(open);
                }
            }
            LineEnd::Cr | LineEnd::None => {
                // One bottom row: the other stream's open line is finished where it is.
                if let Some(open) = other {
                    out.write_all(open.text.as_bytes())?;
                    out.write_all(b"\n")?;
                }
                out.write_all(line.as_bytes())?;
                if line.len() > MAX_OPEN_BYTES {
                    out.write_all(b"\n")?;
                } else {
                    self.open = Some(Open {
                        stream,
                        text: line,
                        progress: end == LineEnd::Cr,
                    });
                }
            }
        }
        Ok(())
    }

    /// Ends an open line, so that whatever the terminal prints next starts a new row.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.open.take().is_some() {
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Erases the rows `text` covers when drawn from the start of a row, leaving the cursor at
/// the start of the first of them.
fn erase(out: &mut impl Write, text: &str, width: usize) -> io::Result<()> {
    let columns = display_width(text);
    let rows = columns.div_ceil(width.max(1)).max(1);
    out.write_all(ERASE_ROW.as_bytes())?;
    for _ in 1..rows {
        out.write_all(ERASE_ROW_ABOVE.as_bytes())?;
    }
    Ok(())
}

/// Columns `text` takes on a terminal: escape sequences (colours) take none, a tab goes to
/// the next multiple of 8, any other character one column (wide characters are counted as
/// one: rare in progress lines).
fn display_width(text: &str) -> usize {
    let mut columns = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters… final byte in @..~; other escapes: one more char.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => columns = (columns / 8 + 1) * 8,
            c if c.is_control() => {}
            _ => columns += 1,
        }
    }
    columns
}

/// Whether stdout and stderr are one terminal: then the view is used; otherwise each
/// stream gets its own bytes exactly as written.
#[cfg(unix)]
pub fn same_terminal() -> bool {
    use std::io::IsTerminal;
    if !(io::stdout().is_terminal() && io::stderr().is_terminal()) {
        return false;
    }
    let device = |fd| {
        // SAFETY: fstat only writes the struct passed; fd 1 and 2 are open (checked above).
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_rdev)
    };
    device(1).is_some() && device(1) == device(2)
}

/// Without a way to compare the two, two terminals are taken to be one console.
#[cfg(not(unix))]
pub fn same_terminal() -> bool {
    use std::io::IsTerminal;
    io::stdout().is_terminal() && io::stderr().is_terminal()
}

/// The terminal's width in columns (80 when it cannot be read), read each time: the
/// window may be resized during a run.
#[cfg(unix)]
pub fn width() -> usize {
    // SAFETY: TIOCGWINSZ only writes the winsize struct passed.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        size.ws_col as usize
    } else {
        80
    }
}

/// The terminal's width in columns: 80 (the console's size is not read).
#[cfg(not(unix))]
pub fn width() -> usize {
    80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(entries: &[(Stream, &str, LineEnd)]) -> String {
        let mut view = TerminalView::default();
        let mut out = Vec::new();
        for &(stream, text, end) in entries {
            view.entry(&mut out, stream, "", text, end, 20).unwrap();
        }
        view.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    const OUT: Stream = Stream::Stdout;
    const ERR: Stream = Stream::Stderr;

    #[test]
    fn a_line_printed_under_a_progress_bar_goes_above_it() {
        let got = show(&[
            (ERR, " 97%|#########", LineEnd::Cr),
            (OUT, "epoch 3/3", LineEnd::Lf),
            (ERR, "100%|##########", LineEnd::Lf),
        ]);
        assert_eq!(
            got,
            " 97%|#########\r\x1b[2Kepoch 3/3\n 97%|#########\r\x1b[2K100%|##########\n"
        );
    }

    #[test]
    fn pieces_of_a_line_go_on_and_a_slow_bar_is_redrawn() {
        let got = show(&[
            (ERR, " 10%", LineEnd::None),
            (ERR, "", LineEnd::Cr),
            (ERR, " 20%", LineEnd::None),
            (OUT, "x", LineEnd::Lf),
        ]);
        assert_eq!(got, " 10%\r\x1b[2K 20%\r\x1b[2Kx\n 20%\n");
    }

    #[test]
    fn a_long_open_line_is_erased_row_by_row() {
        let long = "a".repeat(45); // three rows of 20
        let got = show(&[(ERR, &long, LineEnd::Cr), (OUT, "x", LineEnd::Lf)]);
        assert_eq!(
            got,
            format!("{long}\r\x1b[2K\x1b[1A\x1b[2K\x1b[1A\x1b[2Kx\n{long}\n")
        );
    }

    #[test]
    fn colours_take_no_columns() {
        assert_eq!(display_width("\x1b[32mok\x1b[0m"), 2);
        assert_eq!(display_width("a\tb"), 9);
    }
}
