//! The replicated log (DESIGN.md, "The replicated log"): durable,
//! checksummed, append-only, the source of truth that the redb state is
//! applied from.
//!
//! One entry per [`Change`], numbered by revision, with the epoch of the
//! leader that wrote it: the log id is (epoch, revision), so truncation,
//! purge and catch-up reads are all by revision. A leader's batch is a run
//! of consecutive entries of one epoch; nothing on the protocol side needs
//! its boundaries. On disk ([`ReplicatedLog`]) the log is a run of segment
//! files of checksummed records ([`segment`]), written by pika itself:
//! until December 2026 it was `raft-log` 0.4, whose files grow with every
//! append, so that every flush's `fdatasync` also journaled a new file
//! size; segments are sized up front instead (`docs/benchmarks.md`, "A
//! log of our own"). A directory holding raft-log's files is imported at
//! the first open (`import.rs`).
//!
//! Invariants, kept here (which refuses the call otherwise):
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
use std::sync::atomic::AtomicU64;

use crate::election::Position;
use crate::record::{Change, SharedChange};

mod import;
mod mem;
mod replicated;
pub mod segment;
mod spare;
mod syncer;
pub use mem::{MemDisk, MemLog};
pub use replicated::{HeldFlushes, ReplicatedLog};

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
    /// Bytes a new segment file is sized to; the next one starts when a
    /// record does not fit.
    pub segment_bytes: u64,
    /// Fault tests only: milliseconds every sync of the log takes more,
    /// as on a disk whose syncs stall (zero otherwise); changed while the
    /// log runs through `Faults::slow_syncs`.
    pub sync_delay_ms: Arc<AtomicU64>,
    /// [`ReplicatedLog::flush`] holds its job until the caller takes it
    /// ([`ReplicatedLog::take_held`]) and runs it, on its own thread or the
    /// sync thread. A follower's protocol thread syncs its appends itself
    /// once it has sent what the step produced: no hand-over to the sync
    /// thread and back per batch (writes spread over three nodes +10 %
    /// under `wrk`, `docs/benchmarks.md`, "A follower syncs its own log").
    pub hold_flushes: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            cache_entries: 16 * 1024,
            cache_bytes: 64 << 20,
            segment_bytes: segment::SEGMENT_BYTES,
            sync_delay_ms: Arc::default(),
            hold_flushes: false,
        }
    }
}

/// What a flush calls when it is done (on the log's sync thread).
pub struct FlushDone(Box<dyn FnOnce(io::Result<()>) + Send>);

impl FlushDone {
    pub fn new(done: impl FnOnce(io::Result<()>) + Send + 'static) -> Self {
        Self(Box::new(done))
    }

    pub(crate) fn call(self, result: io::Result<()>) {
        (self.0)(result)
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

    /// The flushes held since the last call (none while the log is
    /// closed: a flush then fails at once).
    pub fn take_held(&mut self) -> Option<HeldFlushes> {
        Some(self.log.as_mut()?.take_held()).filter(|h| !h.is_empty())
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
    /// Drops the log (its sync thread is joined and the directory lock
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
