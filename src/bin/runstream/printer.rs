//! Prints entries on the terminal, for `run`, `start --follow` and `logs`: stdout entries
//! to stdout and stderr entries to stderr, each with its own terminator (so `\r` progress
//! bars redraw in place), or through the [`TerminalView`] when both are one terminal; the
//! engine's warnings to stderr; with `json`, every entry as one JSON line on stdout.

use std::borrow::Borrow;
use std::io::{self, BufWriter, Write};

use runstream::{Entry, Level, LineEnd, Stream};

use crate::terminal_view::{self, TerminalView};

/// How entries are shown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Every entry as one JSON line on stdout.
    pub json: bool,
    /// Each line starts with its entry's timestamp.
    pub timestamps: bool,
}

/// Prints batches of entries; keeps what the screen shows between batches.
pub struct Printer {
    style: Style,
    /// `Some` when stdout and stderr are one terminal.
    view: Option<TerminalView>,
    /// Per stream (stdout, stderr): the last entry printed ended its line, so the next
    /// one starts a row (and gets its timestamp).
    at_line_start: [bool; 2],
}

impl Printer {
    /// A printer for this process's stdout and stderr.
    pub fn new(style: Style) -> Printer {
        let view = (!style.json && terminal_view::same_terminal()).then(TerminalView::default);
        Printer {
            style,
            view,
            at_line_start: [true; 2],
        }
    }

    /// Prints a batch, buffered, and flushes it. Writes are in entry order: output is
    /// flushed whenever it switches between stdout and stderr. A failed write to stdout is
    /// returned (the caller stops what it prints); stderr's are ignored.
    pub fn print<E: Borrow<Entry>>(&mut self, entries: &[E]) -> io::Result<()> {
        let stdout = io::stdout();
        let stderr = io::stderr();
        let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
        let mut err = BufWriter::with_capacity(16 * 1024, stderr.lock());
        let mut last = Stream::Stdout;
        let mut written = Ok(());
        for e in entries {
            let e = e.borrow();
            let target = match (&self.view, self.style.json, e.stream) {
                (Some(_), _, _) | (_, true, _) | (_, _, Stream::Stdout) => Stream::Stdout,
                _ => Stream::Stderr,
            };
            if target != last {
                // Keep stdout and stderr in the order they were written.
                let _ = if last == Stream::Stdout {
                    out.flush()
                } else {
                    err.flush()
                };
                last = target;
            }
            written = self.entry(e, &mut out, &mut err);
            if written.is_err() {
                break;
            }
        }
        let flushed = written.and_then(|()| out.flush());
        let _ = err.flush();
        flushed
    }

    /// Ends an open line on the terminal (at the end of the output).
    pub fn finish(&mut self) {
        if let Some(view) = &mut self.view {
            let mut out = io::stdout().lock();
            let _ = view.finish(&mut out).and_then(|()| out.flush());
        }
    }

    fn entry(&mut self, e: &Entry, out: &mut impl Write, err: &mut impl Write) -> io::Result<()> {
        if self.style.json {
            out.write_all(e.json().as_bytes())?;
            return out.write_all(b"\n");
        }
        let system;
        let (stream, text, end) = match e.stream {
            Stream::System if e.level >= Level::Warning => {
                system = format!("runstream: {}", e.message);
                (Stream::Stderr, system.as_str(), LineEnd::Lf)
            }
            Stream::System => return Ok(()),
            s => (s, e.message.as_str(), e.end),
        };
        let i = usize::from(stream == Stream::Stderr);
        let prefix = match (self.style.timestamps, self.at_line_start[i]) {
            (true, true) => format!("{} ", e.timestamp),
            _ => String::new(),
        };
        self.at_line_start[i] = end != LineEnd::None;
        match &mut self.view {
            Some(view) => view.entry(out, stream, &prefix, text, end, terminal_view::width()),
            None => {
                let target: &mut dyn Write = if stream == Stream::Stdout { out } else { err };
                let written = target
                    .write_all(prefix.as_bytes())
                    .and_then(|()| target.write_all(text.as_bytes()))
                    .and_then(|()| target.write_all(end.terminator().as_bytes()));
                // Only stdout's failures stop the run (stderr's are not ours to report).
                if stream == Stream::Stdout {
                    written
                } else {
                    Ok(())
                }
            }
        }
    }
}
