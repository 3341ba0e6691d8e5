//! The run log: every entry of a run as one JSON line in `{run_id}.jsonl`, and reading
//! entries back from it by seq.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Entry, RunStatus};

/// An index point is made at the first entry, then at the first entry after
/// `INDEX_EVERY` entries or `BLOCK_BYTES` of file since the last point, whichever comes
/// first. The entries between two points are a *block*: what readers decode and cache at
/// once, so a block is bounded by bytes (at most `BLOCK_BYTES` plus one entry) as well as
/// by count, however long the lines are. The index stays tiny (2 M short lines: 2 000
/// points; 1 GiB of long lines: 4 096).
pub(crate) const INDEX_EVERY: u64 = 1024;
/// See [`INDEX_EVERY`].
pub(crate) const BLOCK_BYTES: u64 = 256 * 1024;

/// Where one entry's line starts in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexPoint {
    pub seq: u64,
    pub offset: u64,
}

/// Whether the entry `seq` starting at `offset` gets an index point (see [`INDEX_EVERY`]).
/// The writer and [`scan_index`] apply the same rule, so a log loaded again after a
/// restart has the same blocks.
fn starts_block(last: Option<&IndexPoint>, seq: u64, offset: u64) -> bool {
    last.is_none_or(|p| seq - p.seq >= INDEX_EVERY || offset - p.offset >= BLOCK_BYTES)
}

/// Appends entries to a run's JSONL log and keeps a sparse seq → offset index.
#[derive(Debug)]
pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    /// Lines not written to the file yet (at most about `WRITE_BUFFER`).
    buf: Vec<u8>,
    /// Bytes appended so far, buffered ones included.
    written: u64,
    index: Vec<IndexPoint>,
}

/// Lines are written to the file in pieces of about this size.
const WRITE_BUFFER: usize = 256 * 1024;

impl LogWriter {
    /// Creates (truncates) the log file.
    pub fn create(path: PathBuf) -> io::Result<LogWriter> {
        let file = create_private(&path)?;
        Ok(LogWriter {
            path,
            file,
            buf: Vec::with_capacity(WRITE_BUFFER),
            written: 0,
            index: Vec::new(),
        })
    }

    /// Appends one entry. Entries must come in seq order (a jump is a hole: entries that
    /// could not be written).
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        if starts_block(self.index.last(), entry.seq, self.written) {
            self.index.push(IndexPoint {
                seq: entry.seq,
                offset: self.written,
            });
        }
        self.buf.extend_from_slice(entry.json().as_bytes());
        self.buf.push(b'\n');
        self.written += entry.json().len() as u64 + 1;
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Pushes buffered lines to the file, so readers see them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Appends `entries` and flushes them, all or none: when a write fails (a full disk),
    /// the file is cut back to where it was, so it never ends in a torn line and the same
    /// entries can be written again later. An error that says "cannot cut" means the log
    /// cannot be used any more.
    pub fn append_all<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> io::Result<()> {
        let (len, points) = (self.written - self.buf.len() as u64, self.index.len());
        let result = entries
            .into_iter()
            .try_for_each(|e| self.append(e))
            .and_then(|()| self.flush());
        let Err(e) = result else { return Ok(()) };
        self.buf.clear();
        self.written = len;
        self.index.truncate(points);
        // Shrinking frees blocks, so it works on a full disk too.
        let cut = self
            .file
            .set_len(len)
            .and_then(|()| self.file.seek(SeekFrom::Start(len)).map(drop));
        match cut {
            Ok(()) => Err(e),
            Err(cut) => Err(io::Error::new(
                e.kind(),
                format!("{e}, and cannot cut the log back to {len} bytes: {cut}"),
            )),
        }
    }

    /// A cheap description of where to find entries, for readers on other threads.
    pub fn locator(&self) -> LogLocator {
        LogLocator {
            path: self.path.clone(),
            index: self.index.clone(),
        }
    }

    /// The index's points so far, for keeping a reader's copy current.
    pub fn index(&self) -> &[IndexPoint] {
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
    pub index: Vec<IndexPoint>,
}

impl LogLocator {
    /// Reads entries with `from_seq <= seq < to_seq`: at most `max` of them, and no more
    /// once they take `max_bytes` of file (at least one is read).
    pub fn read(
        &self,
        from_seq: u64,
        to_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> io::Result<Vec<Entry>> {
        read_range(&self.path, &self.index, from_seq, to_seq, max, max_bytes)
    }

    /// The block holding `seq`: its first seq and the first seq of the next block, if
    /// the index knows one yet.
    pub fn block_of(&self, seq: u64) -> (u64, Option<u64>) {
        let next = self.index.partition_point(|p| p.seq <= seq);
        let start = next
            .checked_sub(1)
            .map_or(0, |i| self.index[i].seq.min(seq));
        (start, self.index.get(next).map(|p| p.seq))
    }
}

/// The seq a log line starts with: every line is `{"seq":N,...` (see `Entry::new`).
/// Parsed from the prefix alone, so skipping lines costs no JSON decoding.
fn line_seq(line: &[u8]) -> Option<u64> {
    let digits = line.strip_prefix(b"{\"seq\":")?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Reads entries `from_seq..to_seq` from a JSONL log, at most `max` and no more once
/// `max_bytes` of file were read (at least one), seeking with `index` (may be empty:
/// then it reads from the start).
pub(crate) fn read_range(
    path: &Path,
    index: &[IndexPoint],
    from_seq: u64,
    to_seq: u64,
    max: usize,
    max_bytes: u64,
) -> io::Result<Vec<Entry>> {
    let mut file = File::open(path)?;
    let at = index.partition_point(|p| p.seq <= from_seq);
    if let Some(point) = at.checked_sub(1).map(|i| index[i]) {
        file.seek(SeekFrom::Start(point.offset))?;
    }
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut line = Vec::new();
    while out.len() < max && (out.is_empty() || bytes < max_bytes) {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            break; // end of what is written so far
        }
        let seq = line_seq(&line).unwrap_or(u64::MAX);
        if seq < from_seq {
            continue;
        }
        if seq >= to_seq {
            break;
        }
        let entry = std::str::from_utf8(&line)
            .ok()
            .and_then(|text| Entry::from_json(text.trim_end()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: entry {seq} is not valid JSON", path.display()),
                )
            })?;
        bytes += line.len() as u64;
        out.push(entry);
    }
    Ok(out)
}

/// Status files are padded with spaces to a multiple of this, so that a later status
/// usually fits in the space the file already has (see [`save_status`]). A file system
/// gives a small file a whole block anyway.
const STATUS_FILE_BLOCK: usize = 4096;

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
/// a crash never leaves half a file. When that fails (a full disk), the existing file is
/// overwritten in place, in the blocks it already has (it was padded for that): the final
/// status of a run that ends while the disk is full still gets to disk.
///
/// Returns the error of the normal save when the status was saved in place.
pub(crate) fn save_status(path: &Path, status: &RunStatus) -> io::Result<Option<io::Error>> {
    let mut bytes = serde_json::to_vec_pretty(status).map_err(io::Error::from)?;
    let padded = (bytes.len() + 1).div_ceil(STATUS_FILE_BLOCK) * STATUS_FILE_BLOCK;
    bytes.resize(padded - 1, b' ');
    bytes.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    let renamed = create_private(&tmp)
        .and_then(|mut file| file.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    let Err(e) = renamed else { return Ok(None) };
    let _ = std::fs::remove_file(&tmp);
    match overwrite_in_place(path, &bytes) {
        Ok(()) => Ok(Some(e)),
        Err(in_place) => Err(io::Error::new(
            e.kind(),
            format!("{e} (and in place: {in_place})"),
        )),
    }
}

/// Writes `bytes` over the start of the existing file `path` if they fit in its length,
/// padding the rest with spaces (JSON allows trailing whitespace).
fn overwrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len() as usize;
    if bytes.len() > len {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{} bytes do not fit in the file's {len}", bytes.len()),
        ));
    }
    let mut padded = bytes.to_vec();
    padded.resize(len, b' ');
    padded[len - 1] = b'\n';
    file.write_all(&padded)
}

/// What [`scan_index`] finds in an existing log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LogScan {
    /// The sparse index, as the writer made it.
    pub index: Vec<IndexPoint>,
    /// The seq after the last complete line (0 for an empty log).
    pub next_seq: u64,
}

/// Builds the sparse index of an existing log (used when a finished run is loaded again).
pub(crate) fn scan_index(path: &Path) -> io::Result<LogScan> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut scan = LogScan::default();
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let seq = line_seq(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a line at byte {offset} is not an entry",
                    path.display()
                ),
            )
        })?;
        if starts_block(scan.index.last(), seq, offset) {
            scan.index.push(IndexPoint { seq, offset });
        }
        offset += n as u64;
        scan.next_seq = seq + 1;
    }
    Ok(scan)
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
    let mut complete_len = 0u64;
    let (mut line, mut last) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete_len += n as u64;
        std::mem::swap(&mut line, &mut last);
    }
    let next_seq = line_seq(&last).map_or(0, |seq| seq + 1);
    let last_time = std::str::from_utf8(&last)
        .ok()
        .and_then(|l| Entry::from_json(l.trim_end()))
        .map(|e| e.timestamp);
    drop(reader);
    file.set_len(complete_len)?;
    file.seek(SeekFrom::End(0))?;
    let entry = Entry::new(
        next_seq,
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
            index: scan_index(&path).unwrap().index,
            path: path.clone(),
        };
        let entries = loc.read(0, 10, 10, u64::MAX).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3].seq, 3);
        assert_eq!(
            (entries[3].stream, entries[3].message.as_str()),
            (Stream::System, "lost")
        );
        // A run that never started has no log: it gets one with just that entry.
        let fresh = dir.path().join("q.jsonl");
        assert_eq!(close_after_crash(&fresh, "lost".into()).unwrap(), None);
        assert_eq!(scan_index(&fresh).unwrap().next_seq, 1);
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
            let got = loc.read(from, to, 10_000, u64::MAX).unwrap();
            let want: Vec<Entry> = (from..to.min(5000)).map(entry).collect();
            assert_eq!(got, want, "{from}..{to}");
        }
        assert_eq!(loc.read(100, 5000, 7, u64::MAX).unwrap().len(), 7);
        // Bounded by bytes too, but never empty.
        assert_eq!(loc.read(100, 5000, 1000, 1).unwrap().len(), 1);
        let scan = scan_index(w.path()).unwrap();
        assert_eq!((scan.index, scan.next_seq), (w.index().to_vec(), 5000));
    }

    #[test]
    fn blocks_are_bounded_by_bytes_as_well_as_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::create(dir.path().join("b.jsonl")).unwrap();
        let long = "x".repeat(100_000);
        for seq in 0..40 {
            let message = if seq % 10 == 0 {
                long.clone()
            } else {
                format!("{seq}")
            };
            let e = Entry::new(
                seq,
                Timestamp::from_micros(0),
                Stream::Stdout,
                Level::Info,
                message,
                LineEnd::None,
            );
            w.append(&e).unwrap();
        }
        w.flush().unwrap();
        let index = w.index().to_vec();
        // A point after every ~256 KiB: the third long line starts a new block.
        assert_eq!(index.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 21]);
        let loc = w.locator();
        assert_eq!(loc.block_of(5), (0, Some(21)));
        assert_eq!(loc.block_of(21), (21, None));
        assert_eq!(loc.block_of(39), (21, None));
        assert_eq!(scan_index(w.path()).unwrap().index, index);
    }
}
