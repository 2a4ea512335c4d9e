//! The replicated log (DESIGN.md, "The replicated log"): durable,
//! checksummed, append-only, the source of truth that the redb state is
//! applied from.
//!
//! Built on `raft-log` 0.4 (a chunked write-ahead log with CRC-checked
//! records, a flush worker thread, and the vote, commit and purge records
//! Raft needs), with one entry per [`Change`]: the raft-log index *is* the
//! revision and the log id is (epoch, revision), so truncation, purge and
//! catch-up reads are all by revision with no index of our own. A leader's
//! batch is a run of consecutive entries of one epoch; nothing on the
//! protocol side needs its boundaries.
//!
//! Invariants, kept here or by raft-log underneath (which refuses the
//! record otherwise):
//! - entries are contiguous by revision, and (epoch, revision) only grows;
//! - a known-committed entry is never truncated, and the known commit
//!   never moves back;
//! - the promised epoch never moves back;
//! - nothing is durable until a [`ReplicatedLog::flush`] completes, and a
//!   flush makes everything appended before it durable, in order
//!   (truncations and promises included).
//!
//! Flushes are group commits: [`GroupFlush`] keeps at most one flush in
//! flight, and everything appended while it runs goes into the next one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use raft_log::{Config, RaftLog, Types};

use crate::election::Position;
use crate::record::{Change, SharedChange};

mod mem;
pub use mem::{MemDisk, MemLog};

/// What the protocol core needs of a log: [`ReplicatedLog`] on a real node
/// (through the driver, which routes flush completions back to the core),
/// [`MemLog`] in simulations, where flushes complete when the schedule says
/// and a crash keeps only what was flushed.
pub trait LogStore {
    /// The position just before the first entry held.
    fn start(&self) -> Position;
    /// The last entry, durable or not (or [`LogStore::start`]).
    fn last(&self) -> Position;
    /// The last entry recorded as committed.
    fn committed(&self) -> Position;
    /// The epoch of the entry at `revision`, the start position included.
    fn epoch_at(&self, revision: u64) -> Option<u64>;
    fn holds(&self, p: Position) -> bool {
        self.epoch_at(p.revision) == Some(p.epoch)
    }
    fn append(&mut self, changes: &[SharedChange]) -> Result<(), LogError>;
    fn truncate_after(&mut self, revision: u64) -> Result<(), LogError>;
    fn purge_through(&mut self, upto: Position) -> Result<(), LogError>;
    fn save_commit(&mut self, upto: Position) -> Result<(), LogError>;
    /// Starts flushing everything written so far. Its completion comes back
    /// to the core as `flushed(ticket, result)`; the core keeps one in
    /// flight at a time ([`GroupFlush`]).
    fn flush(&mut self, ticket: u64) -> Result<(), LogError>;
    fn read(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<SharedChange>, LogError>;
    /// Closes the log and opens what is on disk again, after a disk error:
    /// what was not flushed is gone, as after a crash.
    fn reopen(&mut self) -> Result<(), LogError>;
}

/// The log's directory under the data directory.
pub const LOG_DIR: &str = "log";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("opening the log in {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("log I/O: {0}")]
    Io(#[from] io::Error),
    /// The caller broke an invariant of the log: a bug above, refused here
    /// before it reaches the disk.
    #[error("refused by the log: {0}")]
    Refused(String),
}

/// Tuning for the log, with defaults fit for a config store.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Entries whose payloads stay cached in memory for catch-up reads.
    pub cache_entries: usize,
    /// Bytes of payload cache.
    pub cache_bytes: usize,
    /// A chunk file is closed and a new one started past this size.
    pub chunk_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            cache_entries: 16 * 1024,
            cache_bytes: 64 << 20,
            chunk_bytes: 64 << 20,
        }
    }
}

/// What a flush calls when it is done (on the flush worker's thread).
pub struct FlushDone(Box<dyn FnOnce(io::Result<()>) + Send>);

impl FlushDone {
    pub fn new(done: impl FnOnce(io::Result<()>) + Send + 'static) -> Self {
        Self(Box::new(done))
    }
}

impl raft_log::Callback for FlushDone {
    fn send(self, res: io::Result<()>) {
        (self.0)(res)
    }
}

/// One log entry's payload: a change, postcard-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub SharedChange);

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

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogTypes;

impl Types for LogTypes {
    /// (epoch, revision): ordered by epoch first, like [`Position`].
    type LogId = (u64, u64);
    type LogPayload = Payload;
    /// The promised epoch.
    type Vote = u64;
    type Callback = FlushDone;
    type UserData = ();

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.1
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        change_size(&payload.0) as u64
    }
}

/// Refuses `changes` unless they continue a log ending at `last`: the
/// first revision is `last + 1`, then consecutive, epochs never below.
pub(crate) fn check_continues(
    mut last: Position,
    changes: &[SharedChange],
) -> Result<(), LogError> {
    for change in changes {
        if change.revision != last.revision + 1 || change.epoch < last.epoch {
            return Err(LogError::Refused(format!(
                "entry ({}, {}) does not continue the log at ({}, {})",
                change.epoch, change.revision, last.epoch, last.revision
            )));
        }
        last = Position {
            epoch: change.epoch,
            revision: change.revision,
        };
    }
    Ok(())
}

/// About what a change costs in a frame or in memory: its value plus a
/// little for the path and the rest.
pub fn change_size(change: &Change) -> usize {
    let data = match &change.kind {
        crate::record::ChangeKind::Put { data, .. } => data.len(),
        crate::record::ChangeKind::Delete => 0,
    };
    data + change.path.len() + 48
}

fn id(p: Position) -> (u64, u64) {
    (p.epoch, p.revision)
}

fn position(id: &(u64, u64)) -> Position {
    Position {
        epoch: id.0,
        revision: id.1,
    }
}

/// A node's log. Owned by one thread (the node's protocol driver); the
/// flush itself runs on raft-log's worker thread.
pub struct ReplicatedLog {
    inner: RaftLog<LogTypes>,
}

impl std::fmt::Debug for ReplicatedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedLog")
            .field("start", &self.start())
            .field("last", &self.last())
            .field("committed", &self.committed())
            .field("promised", &self.promised_epoch())
            .finish()
    }
}

impl ReplicatedLog {
    /// Opens (or creates) the log in `dir`. A record torn by a crash at the
    /// tail is dropped (it was never flushed, so nothing depended on it); a
    /// checksum error anywhere else fails the open.
    pub fn open(dir: &Path, options: &LogOptions) -> Result<Self, LogError> {
        let open_err = |source: io::Error| LogError::Open {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let mut config = Config::new(dir.display());
        config.log_cache_max_items = Some(options.cache_entries);
        config.log_cache_capacity = Some(options.cache_bytes);
        config.wal.chunk_max_size = Some(options.chunk_bytes);
        // Replay reads a chunk through this buffer; raft-log's 64 MiB
        // default is memory a small node does not need.
        config.wal.read_buffer_size = Some(1 << 20);
        config.wal.truncate_incomplete_record = Some(true);
        // No timer between a flush request and its fsync: group commit
        // comes from `GroupFlush` (one flush in flight, the rest queue up
        // behind it), so a lone writer never waits for a batch to fill.
        config.wal.flush_batch_wait = Some(std::time::Duration::ZERO);
        let inner = RaftLog::open(Arc::new(config)).map_err(open_err)?;
        Ok(Self { inner })
    }

    /// The position just before the first entry held: what was purged (or
    /// the start the log was given), or zero for a log that never had one.
    pub fn start(&self) -> Position {
        self.inner
            .log_state()
            .purged()
            .map(position)
            .unwrap_or_default()
    }

    /// The last entry appended (durable or not), or [`Self::start`].
    pub fn last(&self) -> Position {
        self.inner
            .log_state()
            .last()
            .map(position)
            .unwrap_or_else(|| self.start())
    }

    /// The last entry this node knows to be committed.
    pub fn committed(&self) -> Position {
        self.inner
            .log_state()
            .committed()
            .map(position)
            .unwrap_or_default()
    }

    pub fn promised_epoch(&self) -> u64 {
        self.inner.log_state().vote().copied().unwrap_or(0)
    }

    /// The epoch of the entry at `revision`, if the log holds it (the start
    /// position counts: it is the last entry before the log).
    pub fn epoch_at(&self, revision: u64) -> Option<u64> {
        let start = self.start();
        if revision == start.revision {
            return Some(start.epoch);
        }
        if revision < start.revision || revision > self.last().revision {
            return None;
        }
        self.inner
            .read(revision, revision + 1)
            .next()
            .and_then(|r| r.ok())
            .map(|(id, _)| id.0)
    }

    /// Whether the log holds `p` (log matching: then it holds everything
    /// the writer of `p` had before it).
    pub fn holds(&self, p: Position) -> bool {
        self.epoch_at(p.revision) == Some(p.epoch)
    }

    /// Appends changes that continue the log: the first revision is
    /// `last + 1`, then consecutive, epochs never below the last entry's.
    pub fn append(&mut self, changes: &[SharedChange]) -> Result<(), LogError> {
        check_continues(self.last(), changes)?;
        self.inner.append(
            changes
                .iter()
                .map(|c| ((c.epoch, c.revision), Payload(c.clone()))),
        )?;
        Ok(())
    }

    /// Drops every entry after `revision` (an uncommitted suffix a new
    /// leader's log replaces). Refused below the known commit.
    pub fn truncate_after(&mut self, revision: u64) -> Result<(), LogError> {
        if revision >= self.last().revision {
            return Ok(());
        }
        if revision < self.committed().revision {
            return Err(LogError::Refused(format!(
                "truncating after {revision} would drop committed entries (committed through {})",
                self.committed().revision
            )));
        }
        self.inner.truncate(revision + 1)?;
        Ok(())
    }

    /// Forgets entries through `upto` (applied and checkpointed, no longer
    /// needed for catch-up). `upto` beyond the last entry moves the log's
    /// start there: how a snapshot install and an upgrade from a log-less
    /// store begin a log at a position.
    pub fn purge_through(&mut self, upto: Position) -> Result<(), LogError> {
        if upto.revision <= self.start().revision {
            return Ok(());
        }
        if upto.revision <= self.last().revision && !self.holds(upto) {
            return Err(LogError::Refused(format!(
                "purge through ({}, {}): the log holds another entry there",
                upto.epoch, upto.revision
            )));
        }
        self.inner.purge(id(upto))?;
        Ok(())
    }

    /// Records that everything through `upto` is committed. Never moves
    /// back; refused past the last entry.
    pub fn save_commit(&mut self, upto: Position) -> Result<(), LogError> {
        if upto <= self.committed() {
            return Ok(());
        }
        if !self.holds(upto) {
            return Err(LogError::Refused(format!(
                "commit ({}, {}) is not an entry of this log",
                upto.epoch, upto.revision
            )));
        }
        self.inner.commit(id(upto))?;
        Ok(())
    }

    /// Records a promise not to accept anything below `epoch`. Durable only
    /// once a later flush completes.
    pub fn save_promise(&mut self, epoch: u64) -> Result<(), LogError> {
        if epoch <= self.promised_epoch() {
            return Ok(());
        }
        self.inner.save_vote(epoch)?;
        Ok(())
    }

    /// Hands everything written so far to the flush worker; `done` runs
    /// once it is on disk (or the flush failed). Call through
    /// [`GroupFlush`] so at most one is in flight.
    pub fn flush(&mut self, done: FlushDone) -> Result<(), LogError> {
        self.inner.flush(true, Some(done))?;
        Ok(())
    }

    /// Flushes and waits: for start-up, shutdown and tests.
    pub fn flush_blocking(&mut self) -> Result<(), LogError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.flush(FlushDone::new(move |r| {
            let _ = tx.send(r);
        }))?;
        rx.recv()
            .map_err(|_| LogError::Io(io::Error::other("the log's flush worker stopped")))??;
        Ok(())
    }

    /// Entries with revisions in `from..=to`, in order, stopping after
    /// `max_bytes` of payload (at least one entry is returned when any is
    /// in range): catch-up frames stay under the frame limit.
    pub fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<SharedChange>, LogError> {
        let from = from.max(self.start().revision + 1);
        let to = to.min(self.last().revision);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from > to {
            return Ok(out);
        }
        for item in self.inner.read(from, to + 1) {
            let (_, payload) = item?;
            let size = LogTypes::payload_size(&payload) as usize;
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(payload.0);
        }
        Ok(out)
    }
}

/// The node's [`ReplicatedLog`] as the protocol core sees it: flush
/// completions are handed to `done` (the driver routes them back to the
/// core as events).
pub struct DiskLog {
    /// `None` only after a failed [`LogStore::reopen`]: the positions last
    /// seen are answered from `closed`, and everything else fails.
    log: Option<ReplicatedLog>,
    closed: Closed,
    dir: PathBuf,
    options: LogOptions,
    done: Arc<dyn Fn(u64, io::Result<()>) + Send + Sync>,
}

/// What a closed log answers for its positions.
#[derive(Debug, Default, Clone, Copy)]
struct Closed {
    start: Position,
    last: Position,
    committed: Position,
}

impl DiskLog {
    /// Opens the log in `dir`.
    pub fn open(
        dir: &Path,
        options: &LogOptions,
        done: impl Fn(u64, io::Result<()>) + Send + Sync + 'static,
    ) -> Result<Self, LogError> {
        let log = ReplicatedLog::open(dir, options)?;
        Ok(Self {
            log: Some(log),
            closed: Closed::default(),
            dir: dir.to_path_buf(),
            options: options.clone(),
            done: Arc::new(done),
        })
    }

    fn open_log(&self) -> Result<&ReplicatedLog, LogError> {
        self.log.as_ref().ok_or_else(closed)
    }

    fn open_log_mut(&mut self) -> Result<&mut ReplicatedLog, LogError> {
        self.log.as_mut().ok_or_else(closed)
    }
}

fn closed() -> LogError {
    LogError::Io(io::Error::other(
        "the log is closed after a disk error and not reopened yet",
    ))
}

impl LogStore for DiskLog {
    fn start(&self) -> Position {
        self.log.as_ref().map_or(self.closed.start, |l| l.start())
    }
    fn last(&self) -> Position {
        self.log.as_ref().map_or(self.closed.last, |l| l.last())
    }
    fn committed(&self) -> Position {
        self.log
            .as_ref()
            .map_or(self.closed.committed, |l| l.committed())
    }
    fn epoch_at(&self, revision: u64) -> Option<u64> {
        self.log.as_ref()?.epoch_at(revision)
    }
    fn append(&mut self, changes: &[SharedChange]) -> Result<(), LogError> {
        self.open_log_mut()?.append(changes)
    }
    fn truncate_after(&mut self, revision: u64) -> Result<(), LogError> {
        self.open_log_mut()?.truncate_after(revision)
    }
    fn purge_through(&mut self, upto: Position) -> Result<(), LogError> {
        self.open_log_mut()?.purge_through(upto)
    }
    fn save_commit(&mut self, upto: Position) -> Result<(), LogError> {
        self.open_log_mut()?.save_commit(upto)
    }
    fn flush(&mut self, ticket: u64) -> Result<(), LogError> {
        let done = self.done.clone();
        self.open_log_mut()?
            .flush(FlushDone::new(move |r| done(ticket, r)))
    }
    fn read(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<SharedChange>, LogError> {
        self.open_log()?.read(from, to, max_bytes)
    }
    /// Drops the log (its flush worker is joined and the directory lock
    /// released) and opens the directory again; a record torn by the
    /// failed write is at the tail and is dropped by the open.
    fn reopen(&mut self) -> Result<(), LogError> {
        if let Some(log) = self.log.take() {
            self.closed = Closed {
                start: log.start(),
                last: log.last(),
                committed: log.committed(),
            };
        }
        self.log = Some(ReplicatedLog::open(&self.dir, &self.options)?);
        Ok(())
    }
}

/// Group commit for the log: at most one flush in flight; a request while
/// one runs is remembered, and the next flush (started when the running
/// one completes) covers everything appended meanwhile. Sans IO: the
/// caller starts a flush when told to.
#[derive(Debug, Default, Clone)]
pub struct GroupFlush {
    running: Option<Position>,
    wanted: bool,
}

impl GroupFlush {
    /// The log should be flushed through `last`. Returns whether to start a
    /// flush now (then call [`Self::started`]).
    pub fn request(&mut self) -> bool {
        self.wanted = true;
        self.running.is_none()
    }

    /// A flush covering the log through `upto` was handed to the worker.
    pub fn started(&mut self, upto: Position) {
        self.running = Some(upto);
        self.wanted = false;
    }

    /// The log dropped entries after `upto`: the running flush makes
    /// durable no more than that (what it wrote past it is gone from the
    /// log, and its replacement was not in it).
    pub fn truncated(&mut self, upto: Position) {
        if let Some(running) = self.running.as_mut()
            && running.revision > upto.revision
        {
            *running = upto;
        }
    }

    /// The running flush completed: returns what it made durable, and
    /// whether another flush is due.
    pub fn completed(&mut self) -> (Option<Position>, bool) {
        (self.running.take(), self.wanted)
    }

    pub fn in_flight(&self) -> bool {
        self.running.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_flush_keeps_one_in_flight_and_merges_what_queues_behind_it() {
        let p = |r| Position {
            epoch: 1,
            revision: r,
        };
        let mut g = GroupFlush::default();
        assert!(g.request());
        g.started(p(1));
        assert!(!g.request(), "one flush at a time");
        assert!(!g.request());
        assert_eq!(
            g.completed(),
            (Some(p(1)), true),
            "the queued requests make one flush"
        );
        g.started(p(5));
        assert_eq!(g.completed(), (Some(p(5)), false));
        assert!(!g.in_flight());
    }
}
