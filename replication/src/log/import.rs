//! Logs written by earlier releases, which kept the log in `raft-log` 0.4's
//! chunk files (`r-*.wal`) in the same directory: imported into a first
//! segment at the first open, then removed.
//!
//! The import is written to a temporary file, synced, and renamed into
//! place before the chunks are removed: a crash at any point leaves either
//! the chunks alone (the import runs again) or the segment (the chunks left
//! over are removed).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_log::codeq::{Decode, Encode};
use raft_log::{Config, RaftLog, Types};

use super::segment::{self, Record, State};
use super::{LogError, change_size};
use crate::election::Position;
use crate::record::SharedChange;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct LogTypes;

impl Types for LogTypes {
    type LogId = (u64, u64);
    type LogPayload = Payload;
    type Vote = u64;
    /// Only the tests flush with raft-log, and wait for it.
    type Callback = std::sync::mpsc::SyncSender<io::Result<()>>;
    type UserData = ();

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.1
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        change_size(&payload.0) as u64
    }
}

/// One entry's payload as raft-log kept it: a change, postcard-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Payload(SharedChange);

impl Encode for Payload {
    fn encode<W: io::Write>(&self, w: W) -> Result<usize, io::Error> {
        let bytes = postcard::to_stdvec(self.0.as_ref()).map_err(io::Error::other)?;
        bytes.encode(w)
    }
}

impl Decode for Payload {
    fn decode<R: io::Read>(r: R) -> Result<Self, io::Error> {
        let bytes = Vec::<u8>::decode(r)?;
        let change = postcard::from_bytes(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("log entry: {e}")))?;
        Ok(Self(Arc::new(change)))
    }
}

fn position(id: &(u64, u64)) -> Position {
    Position {
        epoch: id.0,
        revision: id.1,
    }
}

/// raft-log's files in `dir`: its chunks and its lock file.
fn raft_log_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if (name.starts_with("r-") && name.ends_with(".wal")) || name == "LOCK" {
            out.push(item.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Imports a raft-log log in `dir`, if there is one, into segment 1.
pub(super) fn import_raft_log(dir: &Path, segment_bytes: u64) -> Result<(), LogError> {
    let open_err = |source: io::Error| LogError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let old = raft_log_files(dir).map_err(open_err)?;
    if !old
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "wal"))
    {
        return Ok(());
    }
    if segment::list(dir).map_err(open_err)?.is_empty() {
        let entries = write_import(dir, segment_bytes).map_err(open_err)?;
        tracing::warn!(dir = %dir.display(), entries, "imported the log written by an earlier release");
    }
    for path in &old {
        std::fs::remove_file(path).map_err(open_err)?;
    }
    segment::sync_dir(dir).map_err(open_err)
}

/// Writes raft-log's state and entries as segment 1; returns the entries.
fn write_import(dir: &Path, segment_bytes: u64) -> io::Result<u64> {
    let mut config = Config::new(dir.display());
    config.wal.read_buffer_size = Some(1 << 20);
    config.wal.truncate_incomplete_record = Some(true);
    let old = RaftLog::<LogTypes>::open(Arc::new(config))?;
    let st = old.log_state();
    let start = st.purged().map(position).unwrap_or_default();
    let last = st.last().map(position).unwrap_or(start);
    let state = State {
        start,
        committed: st.committed().map(position).unwrap_or_default(),
        promised: st.vote().copied().unwrap_or(0),
    };
    let tmp = dir.join(format!("{}.import", segment::file_name(1)));
    let file = std::fs::File::create(&tmp)?;
    let mut out = io::BufWriter::new(&file);
    let mut buf = Vec::new();
    segment::encode(&Record::Header { seq: 1, state }, &mut buf)?;
    out.write_all(&buf)?;
    let mut entries = 0;
    if last.revision > start.revision {
        for item in old.read(start.revision + 1, last.revision + 1) {
            let (_, payload) = item?;
            buf.clear();
            segment::encode(&Record::Entry(payload.0), &mut buf)?;
            out.write_all(&buf)?;
            entries += 1;
        }
    }
    out.flush()?;
    drop(out);
    let written = file.metadata()?.len();
    file.set_len(written.max(segment_bytes))?;
    file.sync_all()?;
    drop(old);
    std::fs::rename(&tmp, dir.join(segment::file_name(1)))?;
    segment::sync_dir(dir)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use raft_log::api::raft_log_writer::RaftLogWriter;

    use super::*;
    use crate::log::{LogOptions, ReplicatedLog};
    use crate::record::{Change, ChangeKind, Meta};

    fn change(epoch: u64, revision: u64) -> SharedChange {
        Arc::new(Change {
            revision,
            epoch,
            path: format!("app/{}.json", revision % 5),
            version: revision,
            created_at_ms: 1_700_000_000_000,
            created_revision: revision,
            kind: ChangeKind::Put {
                meta: Meta::default(),
                data: vec![b'v'; 64],
            },
            request_id: Some(format!("req-{revision}")),
            author: None,
        })
    }

    /// A log as the last release wrote it, with raft-log, as its own open
    /// and flush did.
    fn write_raft_log(dir: &Path) -> io::Result<()> {
        let mut config = Config::new(dir.display());
        config.wal.flush_batch_wait = Some(std::time::Duration::ZERO);
        let mut log = RaftLog::<LogTypes>::open(Arc::new(config))?;
        log.append((1..=30).map(|r| {
            let c = change(if r > 20 { 3 } else { 2 }, r);
            ((c.epoch, c.revision), Payload(c))
        }))?;
        log.commit((3, 25))?;
        log.save_vote(4)?;
        log.purge((2, 10))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        log.flush(true, Some(tx))?;
        rx.recv().map_err(io::Error::other)??;
        drop(log);
        Ok(())
    }

    #[test]
    fn a_log_written_by_raft_log_is_imported_with_its_state_and_entries() -> Result<(), LogError> {
        let dir = tempfile::tempdir()?;
        write_raft_log(dir.path())?;
        assert!(
            raft_log_files(dir.path())?.len() >= 2,
            "raft-log's chunks and lock"
        );
        let log = ReplicatedLog::open(dir.path(), &LogOptions::default())?;
        assert_eq!(
            log.start(),
            Position {
                epoch: 2,
                revision: 10
            }
        );
        assert_eq!(
            log.last(),
            Position {
                epoch: 3,
                revision: 30
            }
        );
        assert_eq!(
            log.committed(),
            Position {
                epoch: 3,
                revision: 25
            }
        );
        assert_eq!(log.promised_epoch(), 4);
        let expected: Vec<_> = (11..=30)
            .map(|r| change(if r > 20 { 3 } else { 2 }, r))
            .collect();
        assert_eq!(log.read(0, 100, usize::MAX)?, expected);
        drop(log);
        assert!(
            raft_log_files(dir.path())?.is_empty(),
            "raft-log's files are removed"
        );
        let log = ReplicatedLog::open(dir.path(), &LogOptions::default())?;
        assert_eq!(
            log.last(),
            Position {
                epoch: 3,
                revision: 30
            },
            "and the import stays"
        );
        Ok(())
    }
}
