//! Opening a log: its segments read back into the index and the state,
//! a torn tail dropped, and a gap or a record that does not continue the
//! log refused as damage.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::super::segment::{self, End, Record, Scanned};
use super::{ReplicatedLog, Segment};
use crate::election::Position;

impl ReplicatedLog {
    /// Reads the segments on disk into the index and the state.
    pub(super) fn replay(&mut self) -> io::Result<()> {
        let files = segment::list(&self.dir)?;
        // Set while the entries replayed continue entries of deleted
        // segments (the first segment's entries begin after its header's
        // start): `state.start` is then only the revision before them, and
        // this holds the log's real start as far as the records seen tell
        // (the header's, or a purge's). The records that released the
        // deleted segments must follow: a purge through the entries
        // before, or a truncation below that start.
        let mut floating: Option<Position> = None;
        let mut cut_from: Option<usize> = None;
        for (i, (seq, path)) in files.iter().enumerate() {
            if i > 0 && *seq != files[i - 1].0 + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: segment {} is missing before it: the log is damaged",
                        path.display(),
                        files[i - 1].0 + 1
                    ),
                ));
            }
            let file = segment::open(path)?;
            // What the previous process wrote and did not sync (killed
            // between a flush's write and its sync) is made durable here:
            // the core takes the log's end as durable at start and acks it
            // so. And what a failed write-back left in the page cache is
            // not on the disk: the records are read from the disk
            // (`writeback::read_from_disk`).
            crate::writeback::read_from_disk(&file)?;
            let mut header_seen = false;
            let (end_at, end) = segment::scan(path, &file, |s| {
                self.replay_record(i, *seq, path, &mut header_seen, &mut floating, s)
            })?;
            // What follows a torn record or a segment without its header
            // was written after the last completed flush: the rest of this
            // segment, and every segment after it, never became durable.
            if !header_seen {
                nothing_after(&files, i)?;
                cut_from = Some(i);
                break;
            }
            let torn = end == End::Torn;
            if torn {
                nothing_after(&files, i)?;
                tracing::warn!(segment = %path.display(), offset = end_at, "dropping a torn record at the log's tail");
                segment::cut(&file, end_at, self.segment_bytes)?;
            }
            self.segments.push_back(Segment {
                seq: *seq,
                path: path.clone(),
                file: Arc::new(file),
            });
            self.write_at = end_at;
            // Replayed entries are on disk: the cache keeps its bounds
            // segment by segment, not only once the whole log is read.
            self.evict();
            if torn {
                cut_from = Some(i + 1);
                break;
            }
        }
        if let Some(from) = cut_from {
            let dropped = &files[from..];
            for (_, path) in dropped.iter().rev() {
                tracing::warn!(segment = %path.display(), "dropping a log segment written after the last flush");
                std::fs::remove_file(path)?;
            }
            if !dropped.is_empty() {
                segment::sync_dir(&self.dir)?;
            }
        }
        // The segments were synced as they were read; their names too.
        if !self.segments.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        if floating.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: entries through revision {} are missing from the log: it is damaged",
                    self.dir.display(),
                    self.state.start.revision
                ),
            ));
        }
        Ok(())
    }

    fn replay_record(
        &mut self,
        i: usize,
        seq: u64,
        path: &Path,
        header_seen: &mut bool,
        floating: &mut Option<Position>,
        s: Scanned,
    ) -> io::Result<()> {
        let damaged = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} at offset {}: {what}", path.display(), s.offset),
            )
        };
        if !*header_seen {
            let Record::Header { seq: got, state } = s.record else {
                return Err(damaged("a segment must begin with its header".into()));
            };
            if got != seq {
                return Err(damaged(format!("the header names segment {got}")));
            }
            if i == 0 {
                self.state = state;
            }
            *header_seen = true;
            return Ok(());
        }
        match s.record {
            Record::Header { .. } => return Err(damaged("a second header".into())),
            Record::Entry(change) => {
                let last = self.last();
                if change.revision <= self.state.start.revision {
                    return Ok(());
                }
                if change.revision != last.revision + 1 {
                    if i == 0 && self.index.is_empty() && floating.is_none() {
                        *floating = Some(self.state.start);
                        // The epoch is not known here; the real start's
                        // replaces it.
                        self.state.start = Position {
                            epoch: 0,
                            revision: change.revision - 1,
                        };
                    } else {
                        return Err(damaged(format!(
                            "entry ({}, {}) does not continue the log at ({}, {})",
                            change.epoch, change.revision, last.epoch, last.revision
                        )));
                    }
                } else if change.epoch < last.epoch {
                    return Err(damaged(format!(
                        "entry ({}, {}) goes back from epoch {}",
                        change.epoch, change.revision, last.epoch
                    )));
                }
                self.push(seq, s.offset, s.len, 0, change);
            }
            Record::Truncate(after) => {
                self.drop_after(after);
                if floating.is_some() && after < self.state.start.revision {
                    // What follows continues the entries through `after`,
                    // in deleted segments.
                    self.state.start.revision = after;
                }
            }
            Record::Commit(p) => self.state.committed = self.state.committed.max(p),
            Record::Promise(epoch) => self.state.promised = self.state.promised.max(epoch),
            Record::Purge(p) => match floating {
                Some(real) if p.revision > real.revision => *real = p,
                Some(_) => {}
                None => self.drop_through(p),
            },
        }
        if let Some(real) = *floating
            && real.revision >= self.state.start.revision
        {
            // The entries of deleted segments are all purged or truncated.
            *floating = None;
            self.drop_through(real);
        }
        Ok(())
    }
}

/// Checks that the segments after `files[ended]`, whose records end in a
/// torn record or without a header, hold nothing but zeros. Only the last
/// segment written to can end torn (`syncer.rs`: a segment is synced before
/// anything reaches the next), so anything in a later one means a record
/// that was synced went bad: dropping what follows it would drop entries
/// this node acknowledged as durable.
fn nothing_after(files: &[(u64, std::path::PathBuf)], ended: usize) -> io::Result<()> {
    for (_, path) in files.iter().skip(ended + 1) {
        let file = segment::open(path)?;
        let size = file.metadata()?.len();
        if !segment::only_zeros_from(&file, 0, size)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: records follow a bad record at the end of {}: the log is damaged \
                     (restore the node from a backup, or remove its data directory and let it \
                     rejoin)",
                    path.display(),
                    files[ended].1.display()
                ),
            ));
        }
    }
    Ok(())
}
