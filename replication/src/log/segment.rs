//! The log's files: segments of checksummed records.
//!
//! A segment is `segment-{seq:010}.log` in the log's directory. Records
//! follow each other from offset 0, each `[body length: u32 LE][CRC-32 of
//! the body: u32 LE][body]`, and the first is a `Record::Header` with the
//! log's state when the segment began, so that older segments can be
//! deleted once nothing in them is needed.
//!
//! A segment is sized up front ([`SEGMENT_BYTES`] by default) and written
//! with zeros before records go in (`spare.rs`): a flush writes into
//! blocks the file already has, so `fdatasync` has neither a new file size
//! nor new blocks to record. Measured here, three processes syncing a few
//! hundred bytes at once: 180–195 µs per sync appending, 121–132 µs into a
//! sized file (`docs/benchmarks.md`, "A log of our own"); with 22 KB
//! batches, a sparse file's syncs take half as long again as a zeroed
//! one's. The space after the records reads as zeros, and a zero length
//! ends a segment's records.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::election::Position;
use crate::record::SharedChange;

/// Bytes a new segment is sized to; a record that does not fit starts the
/// next one (a record larger than a segment makes its segment longer).
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Length and checksum before every record body.
pub(super) const FRAME: usize = 8;

/// The header's mark and format version: the first bytes of a segment.
const MAGIC: u64 = u64::from_le_bytes(*b"pikalog1");

const HEADER: u8 = 0;
const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const COMMIT: u8 = 3;
const PROMISE: u8 = 4;
const PURGE: u8 = 5;

/// The log's state besides its entries, as a segment's header records it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    pub start: Position,
    pub committed: Position,
    pub promised: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// The first record of segment `seq`.
    Header {
        seq: u64,
        state: State,
    },
    Entry(SharedChange),
    /// Drops every entry after this revision.
    Truncate(u64),
    Commit(Position),
    Promise(u64),
    /// Drops every entry through this position, which becomes the start.
    Purge(Position),
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_position(out: &mut Vec<u8>, p: Position) {
    put_u64(out, p.epoch);
    put_u64(out, p.revision);
}

/// Appends `record`, framed, to `out`; returns the framed length.
pub(super) fn encode(record: &Record, out: &mut Vec<u8>) -> io::Result<usize> {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME]);
    match record {
        Record::Header { seq, state } => {
            out.push(HEADER);
            put_u64(out, MAGIC);
            put_u64(out, *seq);
            put_position(out, state.start);
            put_position(out, state.committed);
            put_u64(out, state.promised);
        }
        Record::Entry(change) => {
            out.push(ENTRY);
            postcard::to_io(change.as_ref(), &mut *out).map_err(io::Error::other)?;
        }
        Record::Truncate(after) => {
            out.push(TRUNCATE);
            put_u64(out, *after);
        }
        Record::Commit(p) => {
            out.push(COMMIT);
            put_position(out, *p);
        }
        Record::Promise(epoch) => {
            out.push(PROMISE);
            put_u64(out, *epoch);
        }
        Record::Purge(p) => {
            out.push(PURGE);
            put_position(out, *p);
        }
    }
    let body = &out[at + FRAME..];
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::other(format!("a log record of {} bytes", body.len())))?;
    let crc = crc32fast::hash(body);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + FRAME].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - at)
}

/// Why a body did not decode.
fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn u64(&mut self) -> io::Result<u64> {
        let (head, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or_else(|| invalid("a log record ends early"))?;
        self.0 = rest;
        Ok(u64::from_le_bytes(*head))
    }

    fn position(&mut self) -> io::Result<Position> {
        Ok(Position {
            epoch: self.u64()?,
            revision: self.u64()?,
        })
    }
}

/// Decodes a record body (checksum already checked).
pub(super) fn decode(body: &[u8]) -> io::Result<Record> {
    let (&kind, rest) = body
        .split_first()
        .ok_or_else(|| invalid("an empty log record"))?;
    let mut b = Body(rest);
    Ok(match kind {
        HEADER => {
            if b.u64()? != MAGIC {
                return Err(invalid("not a pika log segment (or a newer format)"));
            }
            Record::Header {
                seq: b.u64()?,
                state: State {
                    start: b.position()?,
                    committed: b.position()?,
                    promised: b.u64()?,
                },
            }
        }
        ENTRY => {
            let change =
                postcard::from_bytes(rest).map_err(|e| invalid(format!("log entry: {e}")))?;
            Record::Entry(Arc::new(change))
        }
        TRUNCATE => Record::Truncate(b.u64()?),
        COMMIT => Record::Commit(b.position()?),
        PROMISE => Record::Promise(b.u64()?),
        PURGE => Record::Purge(b.position()?),
        other => return Err(invalid(format!("unknown log record kind {other}"))),
    })
}

/// Reads the record framed at `offset`, `len` bytes with its frame.
pub(super) fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Record> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    let body = check_frame(&buf).ok_or_else(|| invalid("a log record changed on disk"))?;
    decode(body)
}

/// The body of a framed record whose length and checksum hold.
fn check_frame(framed: &[u8]) -> Option<&[u8]> {
    let (head, body) = framed.split_first_chunk::<FRAME>()?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    (len == body.len() && len > 0 && crc32fast::hash(body) == crc).then_some(body)
}

/// A segment file's name.
pub(super) fn file_name(seq: u64) -> String {
    format!("segment-{seq:010}.log")
}

/// The segment files in `dir`, by sequence number.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("segment-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, item.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `seq`, sized to `bytes`, as a sparse file (when no
/// spare written with zeros is ready).
pub(super) fn create(dir: &Path, seq: u64, bytes: u64) -> io::Result<(PathBuf, File)> {
    let path = dir.join(file_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.set_len(bytes)?;
    Ok((path, file))
}

pub(super) fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// How a segment's records end.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Zeros (the space a segment was sized with) or the end of the file.
    Clean,
    /// A record whose length or checksum does not hold, with nothing but
    /// zeros after it: a write a crash tore, never flushed.
    Torn,
}

/// A record as a scan found it.
pub(super) struct Scanned {
    pub offset: u64,
    pub len: usize,
    pub record: Record,
}

/// Reads every record of a segment, in order, to `visit`; returns the
/// offset just after the last good record and how the records ended. A bad
/// record, or a zeroed frame, with anything but zeros after it is
/// corruption, not a torn write or the end: an error naming the file and
/// the offset.
pub(super) fn scan(
    path: &Path,
    file: &File,
    mut visit: impl FnMut(Scanned) -> io::Result<()>,
) -> io::Result<(u64, End)> {
    let size = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; FRAME];
        if offset + FRAME as u64 > size {
            return Ok((offset, End::Clean));
        }
        reader.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        if head == [0; FRAME] {
            // The segment's unwritten space, which is zeros to its end; a
            // zeroed frame with records after it is damage.
            return if only_zeros_from(file, offset, size)? {
                Ok((offset, End::Clean))
            } else {
                Err(damaged(path, offset))
            };
        }
        let framed = FRAME as u64 + len;
        let good = offset + framed <= size && {
            buf.clear();
            buf.extend_from_slice(&head);
            buf.resize(framed as usize, 0);
            reader.read_exact(&mut buf[FRAME..])?;
            check_frame(&buf).is_some()
        };
        if !good {
            // A torn write leaves nothing but zeros after it (the segment's
            // sized space): after the record's end, or after its frame
            // when its length runs past the file.
            let from = if offset + framed <= size {
                offset + framed
            } else {
                offset + FRAME as u64
            };
            return if only_zeros_from(file, from, size)? {
                Ok((offset, End::Torn))
            } else {
                Err(damaged(path, offset))
            };
        }
        let record = decode(&buf[FRAME..]).map_err(|e| {
            invalid(format!(
                "{}: the record at offset {offset}: {e}",
                path.display()
            ))
        })?;
        visit(Scanned {
            offset,
            len: framed as usize,
            record,
        })?;
        offset += framed;
    }
}

/// A bad record (or a zeroed frame) with records after it.
fn damaged(path: &Path, offset: u64) -> io::Error {
    invalid(format!(
        "{}: the record at offset {offset} fails its checksum and records follow it: the log is \
         damaged (restore the node from a backup, or remove its data directory and let it rejoin)",
        path.display()
    ))
}

/// Whether everything from `from` to `size` is zero.
pub(super) fn only_zeros_from(file: &File, from: u64, size: u64) -> io::Result<bool> {
    let mut at = from;
    let mut chunk = vec![0u8; 1 << 16];
    while at < size {
        let n = ((size - at) as usize).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], at)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Drops everything from `offset` on (a torn tail): writes zeros over it
/// to the segment's size, as a new segment holds.
pub(super) fn cut(file: &File, offset: u64, bytes: u64) -> io::Result<()> {
    let end = file.metadata()?.len().max(bytes);
    write_zeros(file, offset, end, || false)?;
    file.sync_all()
}

/// Writes zeros over `from..to`, a step at a time, each written back before
/// the next (`crate::writeback`: 16 MiB of zeros handed to the disk at once
/// would hold up every log flush behind them), asking `stop` between
/// steps (an early stop is an `Interrupted` error).
pub(super) fn write_zeros(
    file: &File,
    from: u64,
    to: u64,
    stop: impl Fn() -> bool,
) -> io::Result<()> {
    const CHUNK: u64 = crate::writeback::STEP;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        if stop() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the log is closing",
            ));
        }
        let n = (to - at).min(CHUNK) as usize;
        file.write_all_at(&zeros[..n], at)?;
        crate::writeback::write_back(file, at, at + n as u64)?;
        at += n as u64;
    }
    Ok(())
}

/// Makes a directory's entries (created or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
