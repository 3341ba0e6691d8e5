//! The run log: every entry of a run as one JSON line in `{run_id}.jsonl`, and reading
//! entries back from it by seq.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Entry, RunStatus};

/// One offset is remembered for every this many entries; reading back seeks to the nearest
/// one and skips at most this many lines. Keeps the index tiny (2 M lines → 16 KB).
pub(crate) const INDEX_EVERY: u64 = 1024;

/// Appends entries to a run's JSONL log and keeps a sparse seq → offset index.
#[derive(Debug)]
pub(crate) struct LogWriter {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    index: Vec<u64>,
}

impl LogWriter {
    /// Creates (truncates) the log file.
    pub fn create(path: PathBuf) -> io::Result<LogWriter> {
        let file = create_private(&path)?;
        Ok(LogWriter {
            path,
            out: BufWriter::with_capacity(256 * 1024, file),
            written: 0,
            index: Vec::new(),
        })
    }

    /// Appends one entry. Entries must come in seq order, starting at 0.
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        if entry.seq % INDEX_EVERY == 0 {
            self.index.push(self.written);
        }
        self.out.write_all(entry.json().as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written += entry.json().len() as u64 + 1;
        Ok(())
    }

    /// Pushes buffered lines to the file, so readers see them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// A cheap description of where to find entries, for readers on other threads.
    pub fn locator(&self) -> LogLocator {
        LogLocator {
            path: self.path.clone(),
            index: self.index.clone(),
        }
    }

    /// The index's newest offset, for keeping a reader's copy current.
    pub fn index(&self) -> &[u64] {
        &self.index
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.written
    }
}

/// Where a run's log lives and its sparse index: enough to read entries back.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogLocator {
    pub path: PathBuf,
    pub index: Vec<u64>,
}

impl LogLocator {
    /// Reads entries with `from_seq <= seq < to_seq`, at most `max` of them.
    pub fn read(&self, from_seq: u64, to_seq: u64, max: usize) -> io::Result<Vec<Entry>> {
        read_range(&self.path, &self.index, from_seq, to_seq, max)
    }
}

/// Reads entries `from_seq..to_seq` (at most `max`) from a JSONL log, seeking with `index`
/// (offset of every `INDEX_EVERY`-th seq; may be empty, then it scans from the start).
pub(crate) fn read_range(
    path: &Path,
    index: &[u64],
    from_seq: u64,
    to_seq: u64,
    max: usize,
) -> io::Result<Vec<Entry>> {
    let mut file = File::open(path)?;
    let slot = ((from_seq / INDEX_EVERY) as usize).min(index.len().saturating_sub(1));
    let mut seq = 0;
    if let Some(&offset) = index.get(slot) {
        file.seek(SeekFrom::Start(offset))?;
        seq = slot as u64 * INDEX_EVERY;
    }
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut out = Vec::new();
    let mut line = String::new();
    while seq < to_seq && out.len() < max {
        line.clear();
        if reader.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            break; // end of what is written so far
        }
        if seq >= from_seq {
            let entry = Entry::from_json(&line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: entry {seq} is not valid JSON", path.display()),
                )
            })?;
            out.push(entry);
        }
        seq += 1;
    }
    Ok(out)
}

/// Creates (or truncates) a file that only its owner may read or write (0600 on unix): a
/// run's files hold its output and its parameters, environment values included.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Creates `dir` and its missing parents; those it creates only their owner may enter
/// (0700 on unix). An existing directory keeps its mode: it may be shared on purpose.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Saves a run's status as `{run_id}.json`: written to a temporary file and renamed, so
/// a crash never leaves half a file. Failures are logged, not fatal: the run goes on.
pub(crate) fn save_status(path: &Path, status: &RunStatus) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec_pretty(status)
        .map_err(io::Error::from)
        .and_then(|bytes| create_private(&tmp)?.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        log::error!("cannot save run status {}: {e}", path.display());
    }
}

/// Builds the sparse index of an existing log (used when a finished run is loaded again),
/// and counts its entries.
pub(crate) fn scan_index(path: &Path) -> io::Result<(Vec<u64>, u64)> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut index = Vec::new();
    let (mut offset, mut count) = (0u64, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        if count % INDEX_EVERY == 0 {
            index.push(offset);
        }
        offset += n as u64;
        count += 1;
    }
    Ok((index, count))
}

/// Ends the log of a run that was live when the server died: drops a torn last line (a
/// write the crash cut short) and appends a `system` entry with `message`. Returns when
/// the last entry before the crash was made, if there was one: the latest time the run was
/// known to be alive.
#[cfg(feature = "server")]
pub(crate) fn close_after_crash(
    path: &Path,
    message: String,
) -> io::Result<Option<crate::Timestamp>> {
    // Created if missing: a run that was still queued has no log yet.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut reader = BufReader::new(&file);
    let (mut complete_len, mut count) = (0u64, 0u64);
    let (mut line, mut last) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete_len += n as u64;
        count += 1;
        std::mem::swap(&mut line, &mut last);
    }
    let last_time = std::str::from_utf8(&last)
        .ok()
        .and_then(|l| Entry::from_json(l.trim_end()))
        .map(|e| e.timestamp);
    drop(reader);
    file.set_len(complete_len)?;
    file.seek(SeekFrom::End(0))?;
    let entry = Entry::new(
        count,
        crate::Timestamp::now(),
        crate::Stream::System,
        crate::Level::Error,
        message,
        crate::LineEnd::Lf,
    );
    file.write_all(entry.json().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(last_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Level, LineEnd, Stream, Timestamp};

    fn entry(seq: u64) -> Entry {
        Entry::new(
            seq,
            Timestamp::from_micros(seq as i64),
            Stream::Stdout,
            Level::Info,
            format!("line {seq}"),
            LineEnd::Lf,
        )
    }

    #[test]
    #[cfg(feature = "server")]
    fn a_log_closed_after_a_crash_loses_its_torn_line_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let mut w = LogWriter::create(path.clone()).unwrap();
        for seq in 0..3 {
            w.append(&entry(seq)).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(br#"{"seq":3,"timest"#).unwrap(); // the crash cut this write
        let last = close_after_crash(&path, "lost".into()).unwrap();
        assert_eq!(last, Some(Timestamp::from_micros(2)));
        let loc = LogLocator {
            index: scan_index(&path).unwrap().0,
            path: path.clone(),
        };
        let entries = loc.read(0, 10, 10).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3].seq, 3);
        assert_eq!(
            (entries[3].stream, entries[3].message.as_str()),
            (Stream::System, "lost")
        );
        // A run that never started has no log: it gets one with just that entry.
        let fresh = dir.path().join("q.jsonl");
        assert_eq!(close_after_crash(&fresh, "lost".into()).unwrap(), None);
        assert_eq!(scan_index(&fresh).unwrap().1, 1);
    }

    #[test]
    fn reads_back_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::create(dir.path().join("r.jsonl")).unwrap();
        for seq in 0..5000 {
            w.append(&entry(seq)).unwrap();
        }
        w.flush().unwrap();
        let loc = w.locator();
        for (from, to) in [(0, 3), (1023, 1026), (2047, 2049), (4990, 6000)] {
            let got = loc.read(from, to, 10_000).unwrap();
            let want: Vec<Entry> = (from..to.min(5000)).map(entry).collect();
            assert_eq!(got, want, "{from}..{to}");
        }
        assert_eq!(loc.read(100, 5000, 7).unwrap().len(), 7);
        let (index, count) = scan_index(w.path()).unwrap();
        assert_eq!((index, count), (w.index().to_vec(), 5000));
    }
}
