//! [`ReplicatedLog`]: the node's log on disk, in segments of checksummed
//! records ([`segment`]), with an index of its entries in memory and the
//! most recent entries' changes cached there.
//!
//! Records go to a buffer; [`ReplicatedLog::flush`] makes a job of the
//! buffer, which writes it to the segment, `fdatasync`s, and reports
//! through the flush's [`FlushDone`]. Jobs run one at a time, in order
//! ([`super::syncer`]), so a completed flush makes everything appended
//! before it durable, in order. By default the log's sync thread runs
//! them: the protocol thread must not write while a sync runs (a write
//! into the page a sync is still writing back waits for it, 81 µs on
//! average and up to 5 ms at 64 clients, `perf trace`). With
//! [`LogOptions::hold_flushes`] the caller takes each job and runs it on
//! its own thread once nothing is in flight on the sync thread
//! ([`HeldFlushes::run_here`]), or hands it over: a follower's protocol
//! thread syncs its own appends, after sending what the step produced, and
//! saves two thread hand-overs per batch.
//!
//! Invariants (module docs of [`super`] for the log's own):
//! - `index[i]` is the entry at revision `state.start.revision + 1 + i`;
//!   entries `uncached..` hold their change, the ones before were evicted
//!   and are read from their segment;
//! - every segment some entry is in is open in `segments`, and segments
//!   are deleted oldest first, only once no entry is in them and a flush
//!   made the record that released them (a purge) durable, so the
//!   segments on disk are always a run of consecutive numbers;
//! - the first segment's header and the records after it give the log's
//!   state: a segment's header holds the state when it began, so that no
//!   deleted segment held anything still needed.

mod replay;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use super::segment::{self, Record, State};
use super::spare::Spare;
pub use super::syncer::HeldFlushes;
use super::syncer::{SyncJob, Syncer, Write};
use super::{FlushDone, LogError, LogOptions, change_size, check_continues};
use crate::election::Position;
use crate::record::SharedChange;

/// Where an entry is.
#[derive(Debug)]
struct Loc {
    epoch: u64,
    seg: u64,
    offset: u64,
    len: u32,
    /// The flush that writes it to its segment.
    job: u64,
    /// The entry itself, while it is cached.
    change: Option<SharedChange>,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
}

/// The lock file that keeps a second process out of the directory.
const LOCK_FILE: &str = "pika-log.lock";

/// A node's log. Owned by one thread (the node's protocol driver); the
/// `fdatasync` of a flush runs on the log's sync thread, or on the thread
/// that took it ([`Self::take_held`]).
pub struct ReplicatedLog {
    dir: PathBuf,
    segment_bytes: u64,
    cache_entries: usize,
    cache_bytes: usize,
    state: State,
    index: VecDeque<Loc>,
    /// Entries at the front of `index` whose change is not cached.
    uncached: usize,
    cached_bytes: usize,
    /// Oldest first; the last is the one written to.
    segments: VecDeque<Segment>,
    /// Where `pending` goes in the active segment.
    write_at: u64,
    /// Records not handed to the sync thread yet, for the active segment.
    pending: Vec<u8>,
    /// Records for segments before it, for the next flush.
    writes: Vec<Write>,
    /// The number of the next flush.
    next_job: u64,
    /// Runs flushes, on the sync thread or the caller's; knows which are
    /// done.
    syncer: Arc<Syncer>,
    /// Flushes are held for the caller to run
    /// ([`LogOptions::hold_flushes`]).
    hold: bool,
    /// Flushes not handed to anyone yet, oldest first.
    held: Vec<SyncJob>,
    /// A segment was created since the last flush: its directory entry
    /// needs a sync.
    created: bool,
    sync: Option<mpsc::Sender<SyncJob>>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
    /// The next segment, written with zeros ahead of need.
    spare: Spare,
    /// Held for the log's life: one process per directory.
    _lock: File,
}

impl std::fmt::Debug for ReplicatedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedLog")
            .field("dir", &self.dir)
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
    /// checksum error anywhere else fails the open. A log written by an
    /// earlier release (raft-log's chunks) is imported first.
    pub fn open(dir: &Path, options: &LogOptions) -> Result<Self, LogError> {
        let open_err = |source: io::Error| LogError::Open {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(open_err)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                open_err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("the log is in use by another process ({e})"),
                ))
            },
        )?;
        let segment_bytes = options.segment_bytes;
        super::import::import_raft_log(dir, segment_bytes)?;
        let spare = Spare::start(dir, segment_bytes).map_err(open_err)?;
        let (sync, jobs) = mpsc::channel();
        let syncer = Arc::new(Syncer::new(options.sync_delay_ms.clone()));
        let runs = syncer.clone();
        let sync_thread = std::thread::Builder::new()
            .name("pika-log-sync".into())
            .spawn(move || {
                for job in jobs {
                    runs.run(job);
                }
            })
            .map_err(open_err)?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            cache_entries: options.cache_entries,
            cache_bytes: options.cache_bytes,
            state: State::default(),
            index: VecDeque::new(),
            uncached: 0,
            cached_bytes: 0,
            segments: VecDeque::new(),
            write_at: 0,
            pending: Vec::new(),
            writes: Vec::new(),
            next_job: 1,
            syncer,
            hold: options.hold_flushes,
            held: Vec::new(),
            created: false,
            sync: Some(sync),
            sync_thread: Some(sync_thread),
            spare,
            _lock: lock,
        };
        log.replay().map_err(open_err)?;
        if log.segments.is_empty() {
            log.spare.wait();
            log.start_segment(1).map_err(open_err)?;
            log.flush_blocking()?;
        }
        log.evict();
        Ok(log)
    }

    /// Indexes an entry that the flush numbered `job` writes (0: on disk
    /// already).
    fn push(&mut self, seg: u64, offset: u64, len: usize, job: u64, change: SharedChange) {
        self.cached_bytes += change_size(&change);
        self.index.push_back(Loc {
            epoch: change.epoch,
            seg,
            offset,
            len: len as u32,
            job,
            change: Some(change),
        });
    }

    fn drop_after(&mut self, revision: u64) {
        while self.last().revision > revision {
            let Some(loc) = self.index.pop_back() else {
                break;
            };
            match loc.change {
                Some(change) => self.cached_bytes -= change_size(&change),
                None => self.uncached -= 1,
            }
        }
    }

    fn drop_through(&mut self, upto: Position) {
        if upto.revision < self.state.start.revision {
            return;
        }
        while self.state.start.revision < upto.revision {
            let Some(loc) = self.index.pop_front() else {
                break;
            };
            self.state.start = Position {
                epoch: loc.epoch,
                revision: self.state.start.revision + 1,
            };
            match loc.change {
                Some(change) => self.cached_bytes -= change_size(&change),
                None => self.uncached -= 1,
            }
        }
        self.state.start = upto;
    }

    /// Forgets cached changes, oldest first, beyond the cache's bounds,
    /// of entries whose flush has written them.
    fn evict(&mut self) {
        let written = self.syncer.written();
        while self.uncached < self.index.len()
            && self.index[self.uncached].job <= written
            && (self.index.len() - self.uncached > self.cache_entries
                || self.cached_bytes > self.cache_bytes)
        {
            if let Some(change) = self.index[self.uncached].change.take() {
                self.cached_bytes -= change_size(&change);
            }
            self.uncached += 1;
        }
    }

    /// Starts segment `seq`, with a header of the state now.
    fn start_segment(&mut self, seq: u64) -> io::Result<()> {
        let path = self.dir.join(segment::file_name(seq));
        let file = match self.spare.take(&path)? {
            Some(file) => file,
            None => segment::create(&self.dir, seq, self.segment_bytes)?.1,
        };
        self.segments.push_back(Segment {
            seq,
            path,
            file: Arc::new(file),
        });
        self.write_at = 0;
        self.created = true;
        segment::encode(
            &Record::Header {
                seq,
                state: self.state,
            },
            &mut self.pending,
        )?;
        Ok(())
    }

    fn active(&self) -> io::Result<&Segment> {
        self.segments
            .back()
            .ok_or_else(|| io::Error::other("the log has no segment"))
    }

    /// Moves the buffered records to the next flush's writes.
    fn seal_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = self.active()?.file.clone();
        let bytes = std::mem::take(&mut self.pending);
        let at = self.write_at;
        self.write_at += bytes.len() as u64;
        self.writes.push(Write { file, at, bytes });
        Ok(())
    }

    /// Buffers `record`, in a new segment when the active one is full;
    /// returns its segment, offset and framed length.
    fn write(&mut self, record: &Record) -> Result<(u64, u64, usize), LogError> {
        let at = self.pending.len();
        let len = segment::encode(record, &mut self.pending)?;
        let end = self.write_at + self.pending.len() as u64;
        if end > self.segment_bytes / 2 {
            self.spare.want();
        }
        if end > self.segment_bytes && self.write_at + at as u64 > 0 {
            // Move the record to a new segment: what is before it goes to
            // the full one.
            let framed = self.pending.split_off(at);
            self.seal_pending()?;
            let seq = self.active()?.seq + 1;
            self.start_segment(seq)?;
            let at = self.pending.len();
            self.pending.extend_from_slice(&framed);
            return Ok((seq, self.write_at + at as u64, len));
        }
        Ok((self.active()?.seq, self.write_at + at as u64, len))
    }

    /// The position just before the first entry held: what was purged (or
    /// the start the log was given), or zero for a log that never had one.
    pub fn start(&self) -> Position {
        self.state.start
    }

    /// The last entry appended (durable or not), or [`Self::start`].
    pub fn last(&self) -> Position {
        match self.index.back() {
            Some(loc) => Position {
                epoch: loc.epoch,
                revision: self.state.start.revision + self.index.len() as u64,
            },
            None => self.state.start,
        }
    }

    /// The last entry this node knows to be committed.
    pub fn committed(&self) -> Position {
        self.state.committed
    }

    pub fn promised_epoch(&self) -> u64 {
        self.state.promised
    }

    /// The epoch of the entry at `revision`, if the log holds it (the start
    /// position counts: it is the last entry before the log).
    pub fn epoch_at(&self, revision: u64) -> Option<u64> {
        let start = self.state.start;
        if revision == start.revision {
            return Some(start.epoch);
        }
        let i = revision.checked_sub(start.revision + 1)?;
        self.index.get(usize::try_from(i).ok()?).map(|l| l.epoch)
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
        for change in changes {
            let (seg, offset, len) = self.write(&Record::Entry(change.clone()))?;
            self.push(seg, offset, len, self.next_job, change.clone());
        }
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
        if revision < self.state.start.revision {
            return Err(LogError::Refused(format!(
                "truncating after {revision}, before the log's start {}",
                self.state.start.revision
            )));
        }
        self.write(&Record::Truncate(revision))?;
        self.drop_after(revision);
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
        self.write(&Record::Purge(upto))?;
        self.drop_through(upto);
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
        self.write(&Record::Commit(upto))?;
        self.state.committed = upto;
        Ok(())
    }

    /// Records a promise not to accept anything below `epoch`. Durable only
    /// once a later flush completes.
    pub fn save_promise(&mut self, epoch: u64) -> Result<(), LogError> {
        if epoch <= self.promised_epoch() {
            return Ok(());
        }
        self.write(&Record::Promise(epoch))?;
        self.state.promised = epoch;
        Ok(())
    }

    /// Hands everything appended so far to the sync thread, which writes
    /// it to its segments and syncs them; `done` runs there once it is on
    /// disk (or the flush failed). Call through [`super::GroupFlush`] so at
    /// most one is in flight.
    pub fn flush(&mut self, done: FlushDone) -> Result<(), LogError> {
        self.seal_pending()?;
        self.evict();
        let number = self.next_job;
        self.next_job += 1;
        let writes = std::mem::take(&mut self.writes);
        let active = self.active()?.file.clone();
        // Segments before the one the oldest entry is in hold nothing the
        // log needs once this flush makes the records that released them
        // durable (a purge, or the header of a later segment).
        let needed = self
            .index
            .front()
            .map_or(u64::MAX, |l| l.seg)
            .min(self.active()?.seq);
        let mut delete = Vec::new();
        while self.segments.front().is_some_and(|s| s.seq < needed) {
            if let Some(s) = self.segments.pop_front() {
                delete.push(s.path);
            }
        }
        let dir = (self.created || !delete.is_empty()).then(|| self.dir.clone());
        self.created = false;
        let job = SyncJob {
            number,
            writes,
            active,
            dir,
            delete,
            done,
        };
        if self.hold {
            self.held.push(job);
            return Ok(());
        }
        self.sync
            .as_ref()
            .ok_or_else(|| LogError::Io(io::Error::other("the log's sync thread stopped")))?
            .send(job)
            .map_err(|_| LogError::Io(io::Error::other("the log's sync thread stopped")))
    }

    /// The flushes held since the last call, for the caller to run.
    pub fn take_held(&mut self) -> HeldFlushes {
        HeldFlushes {
            jobs: std::mem::take(&mut self.held),
            syncer: self.syncer.clone(),
            thread: self.sync.clone(),
        }
    }

    /// Flushes and waits: for start-up, shutdown and tests.
    pub fn flush_blocking(&mut self) -> Result<(), LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.flush(FlushDone::new(move |r| {
            let _ = tx.send(r);
        }))?;
        self.take_held().hand_off();
        rx.recv()
            .map_err(|_| LogError::Io(io::Error::other("the log's sync thread stopped")))??;
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
        let start = self.start().revision;
        let from = from.max(start + 1);
        let to = to.min(self.last().revision);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from > to {
            return Ok(out);
        }
        let first = (from - start - 1) as usize;
        let count = (to - from + 1) as usize;
        for loc in self.index.range(first..first + count) {
            let change = match &loc.change {
                Some(change) => change.clone(),
                None => self.read_entry(loc)?,
            };
            let size = change_size(&change);
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(change);
        }
        Ok(out)
    }

    fn read_entry(&self, loc: &Loc) -> Result<SharedChange, LogError> {
        let i = self
            .segments
            .binary_search_by_key(&loc.seg, |s| s.seq)
            .map_err(|_| {
                LogError::Io(io::Error::other(format!("log segment {} is gone", loc.seg)))
            })?;
        let segment = &self.segments[i];
        match segment::read_at(&segment.file, loc.offset, loc.len as usize).map_err(|e| {
            LogError::Io(io::Error::new(
                e.kind(),
                format!("{} at offset {}: {e}", segment.path.display(), loc.offset),
            ))
        })? {
            Record::Entry(change) => Ok(change),
            _ => Err(LogError::Io(io::Error::other(format!(
                "{} at offset {}: not an entry",
                segment.path.display(),
                loc.offset
            )))),
        }
    }
}

impl Drop for ReplicatedLog {
    /// Waits for the flushes handed over: their completions still run.
    fn drop(&mut self) {
        self.take_held().hand_off();
        self.sync = None;
        if let Some(thread) = self.sync_thread.take() {
            let _ = thread.join();
        }
    }
}
