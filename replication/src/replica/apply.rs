//! The log's durable end and the state applied behind it (DESIGN.md,
//! "The replicated log"): flushes, a failed disk, truncation, applying
//! committed entries to the store, the commit record, checkpoints.
//!
//! Invariants kept here:
//! - `flushed` is a position this log holds, on disk: it moves forward
//!   with completed flushes and back only with a truncation below it.
//! - `applied ≤ commit` and `applied ≤ flushed` ([`ReplicaCore::begin_apply`]
//!   goes no further than the apply target): the state holds committed
//!   entries only, and only entries durable in this node's own log, so a
//!   crash never leaves the state ahead of the log. An apply in flight
//!   keeps it: its entries are committed (the commit index only rises
//!   within one incarnation) and a truncation drops only uncommitted ones.
//! - One apply in flight at a time, and nothing else writes entries to
//!   the state meanwhile (no snapshot install, no reopen): each apply
//!   continues exactly where the previous one left the state.
//! - An entry stops being pending only once the store holds it
//!   ([`ReplicaCore::finish_apply`]), so a read that does not wait sees it.
//! - The log's commit record names only a committed, flushed entry of
//!   this log ([`ReplicaCore::save_commit`]).
//! - The log is purged only behind a durable checkpoint.

use std::time::Duration;

use super::core::ReplicaCore;
use crate::election::Position;
use crate::log::LogStore;
use crate::record::{Entry, SharedChange};
use crate::store::{ApplyError, Store};

/// A store write for the apply thread, handed out by
/// [`ReplicaCore::begin_apply`]: a run of committed entries, or a snapshot
/// session's install.
#[derive(Debug)]
pub struct ApplyJob {
    /// The revision the state is at once it is written: what
    /// [`ReplicaCore::finish_apply`] is told.
    pub last: u64,
    work: Work,
}

#[derive(Debug)]
enum Work {
    Entries {
        /// Consecutive entries, continuing the state, as the log holds
        /// them.
        changes: Vec<SharedChange>,
        /// The [`Entry`] each change leaves, as it was made when the
        /// change became pending: its content digest hashes the whole
        /// value, once per node rather than again here (5 % of an apply:
        /// `store_apply` `behind_log/256` 3.11 → 2.95 ms).
        entries: Vec<Entry>,
    },
    /// Session `session`'s staged paths, at [`ApplyJob::last`].
    Install {
        session: u64,
        plan: super::snapshot::PlannedInstall,
    },
}

impl ApplyJob {
    /// Entries to apply, through `last`.
    pub fn entries(changes: Vec<SharedChange>, entries: Vec<Entry>, last: u64) -> ApplyJob {
        ApplyJob {
            last,
            work: Work::Entries { changes, entries },
        }
    }

    pub(super) fn install(session: u64, plan: super::snapshot::PlannedInstall) -> ApplyJob {
        ApplyJob {
            last: plan.at.revision,
            work: Work::Install { session, plan },
        }
    }

    /// Whether this is a snapshot install (which a rejoining node waits
    /// for).
    pub fn is_install(&self) -> bool {
        matches!(self.work, Work::Install { .. })
    }

    /// The store write: one transaction without fsync for entries, one
    /// durable transaction for an install.
    pub fn write(&self, store: &Store) -> Result<(), ApplyError> {
        match &self.work {
            Work::Entries { changes, entries } => store.apply_entries_behind_log(changes, entries),
            Work::Install { session, plan } => store
                .install_staged(
                    *session,
                    &plan.buckets,
                    &plan.requests,
                    plan.at.revision,
                    plan.at.epoch,
                    plan.since,
                )
                .map(|_| ())
                .map_err(ApplyError::from),
        }
    }
}

/// Bytes of log entries applied per store transaction.
const APPLY_CHUNK: usize = 8 << 20;

impl<L: LogStore> ReplicaCore<L> {
    /// The log's durable end: the last entry a completed flush covers.
    pub fn durable_end(&self) -> Position {
        self.flushed
    }

    /// Entries committed and durable here that the state has not applied
    /// yet and no apply in flight holds: what the next [`Self::begin_apply`]
    /// would take (none while a snapshot is installing or the disk failed).
    pub fn unapplied(&self) -> u64 {
        let applied = self.store.revision().max(self.applying.unwrap_or(0));
        self.apply_target()
            .map_or(0, |target| target.saturating_sub(applied))
    }

    /// How far [`Self::apply`] may go: what is committed and durable here;
    /// `None` while a snapshot is installing or the disk failed.
    pub(super) fn apply_target(&self) -> Option<u64> {
        if self.syncing.is_some() || self.disk_error.is_some() {
            return None;
        }
        Some(self.commit.min(self.flushed.revision))
    }

    /// Starts a flush of the log unless one is running (then the next one,
    /// started when it completes, covers what was appended meanwhile).
    pub(super) fn request_flush(&mut self) {
        if self.disk_error.is_some() || !self.flush.request() {
            return;
        }
        self.save_commit();
        let upto = self.log.last();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        match self.log.flush(ticket) {
            Ok(()) => self.flush.started(upto),
            Err(e) => self.disk_failed(format!("starting a log flush: {e}")),
        }
    }

    /// A flush completed (or failed).
    pub fn flushed(&mut self, ticket: u64, result: std::io::Result<()>, now: Duration) {
        self.latest = self.latest.max(now);
        if ticket < self.stale_tickets_below {
            return;
        }
        if let Err(e) = result {
            return self.disk_failed(format!("log flush: {e}"));
        }
        let (done, again) = self.flush.completed();
        if let Some(done) = done
            && done.revision > self.flushed.revision
            && self.log.holds(done)
        {
            self.flushed = done;
        }
        if again {
            self.request_flush();
        }
        if self.leading.is_some() {
            self.advance_commit(now);
        } else {
            self.send_ack();
        }
    }

    /// This node's disk failed: it stops acknowledging, voting, sending
    /// `Alive` and serving reads; a leader steps down, failing what waits
    /// with "outcome unknown". Silent, it leaves the leader's replication
    /// set once its read permission has surely run out, and the others go
    /// on. It takes part again after [`Self::recover`] or a restart.
    pub(super) fn disk_failed(&mut self, why: String) {
        if self.disk_error.is_none() {
            metrics::counter!("pika_disk_failures_total").increment(1);
            tracing::error!(error = %why, "the disk failed: this node stops taking part until the disk takes writes again");
        }
        self.disk_error = Some(why);
        self.election.resign("this node's disk failed");
        // Only the step-down follows from resigning, and it needs no clock.
        self.perform_election(Duration::ZERO);
    }

    /// The log dropped every entry after `revision`: so do the pending
    /// paths and the durable end.
    pub(super) fn truncate_after(&mut self, revision: u64) -> Result<(), String> {
        self.log
            .truncate_after(revision)
            .map_err(|e| e.to_string())?;
        let at = Position {
            epoch: self.log.epoch_at(revision).unwrap_or_default(),
            revision,
        };
        if self.flushed.revision > revision {
            self.flushed = at;
        }
        self.flush.truncated(at);
        self.pending.update(|p| p.truncated_after(revision));
        if self
            .voter_records
            .last()
            .is_some_and(|(r, _)| *r > revision)
        {
            self.load_voters();
        }
        Ok(())
    }

    /// Applies what is committed and durable here, in order, on the
    /// calling thread: [`Self::begin_apply`], the store write and
    /// [`Self::finish_apply`] until nothing is left. For a start, a
    /// recovery, the shutdown and tests; the driver runs the store write on
    /// an apply thread instead. Does nothing while an apply is in flight.
    pub fn apply(&mut self) {
        while let Some(job) = self.begin_apply() {
            let result = job.write(&self.store);
            self.finish_apply(job.last, result);
        }
    }

    /// Starts an apply: reads the next run of entries that are committed
    /// and durable here from the log (stopping at a pending verification's
    /// revision, to compare roots there) and hands it out, for the shell to
    /// write to the store (off the protocol loop) and report back to
    /// [`Self::finish_apply`]. `None` when nothing is due, or while an
    /// apply is in flight (one at a time: each continues the state the
    /// previous one left).
    ///
    /// Until the finish, the job's entries stay pending: a read of one of
    /// their paths waits, so no read sees the state before the store has
    /// them (reads of other paths are served from the store as it is,
    /// which holds committed entries only, before or after the job's
    /// transaction). The leader decides ops against the state plus the
    /// pending entries, which agree whether or not the job's transaction
    /// has committed yet.
    ///
    /// While a job is in flight nothing else writes the entries' state:
    /// no snapshot session starts (`start_sync`; none runs, since
    /// `apply_target` is `None` while one does), [`Self::recover`] waits,
    /// and verifications compare at the finish. A truncation meanwhile
    /// drops only uncommitted entries, above the job.
    pub fn begin_apply(&mut self) -> Option<ApplyJob> {
        if self.applying.is_some() {
            return None;
        }
        if self.install_waiting() {
            return self.begin_install();
        }
        let target = self.apply_target()?;
        let applied = self.store.revision();
        let mut upto = target;
        // A verification compares at one revision: stop there (a follower
        // told by the leader, a leader aiming at one).
        let verify_at = self
            .verify
            .map(|(at, _)| at)
            .or_else(|| self.leading.as_ref().and_then(|l| l.verify_at));
        if let Some(at) = verify_at
            && at > applied
            && at < upto
        {
            upto = at;
        }
        if upto <= applied {
            return None;
        }
        let changes = match self.log.read(applied + 1, upto, APPLY_CHUNK) {
            Ok(changes) if !changes.is_empty() => changes,
            Ok(_) => {
                self.disk_failed(format!("the log has no entry {} to apply", applied + 1));
                return None;
            }
            Err(e) => {
                self.disk_failed(format!("reading the log to apply: {e}"));
                return None;
            }
        };
        let last = changes.last().map_or(applied, |c| c.revision);
        let entries = self.pending.lock().entries_of(&changes);
        self.applying = Some(last);
        Some(ApplyJob::entries(changes, entries, last))
    }

    /// The store write of the job that [`Self::begin_apply`] handed out
    /// through `last` completed (or failed): its entries stop being
    /// pending, and a verification waiting for this revision compares.
    pub fn finish_apply(&mut self, last: u64, result: Result<(), ApplyError>) {
        if self.applying != Some(last) {
            return;
        }
        self.applying = None;
        if self.installing().is_some() {
            return self.installed(result);
        }
        if let Err(e) = result {
            return self.disk_failed(format!("applying committed entries: {e}"));
        }
        self.pending.update(|p| p.applied_through(last));
        self.check_verification();
        self.verify_at_finish();
        metrics::gauge!("pika_revision").set(self.store.revision() as f64);
    }

    /// The last revision of the apply in flight, if one is.
    pub fn applying(&self) -> Option<u64> {
        self.applying
    }

    /// Records in the log what is committed and durable here (what
    /// [`Self::apply`] may apply), durable with the next flush. Called just
    /// before each flush and after each checkpoint, never on its own: a
    /// record after every commit woke the log's flush thread once more per
    /// write. The log's commit is a lower bound a restart replays to (the
    /// leader tells the rest), so a late one loses nothing; but a restart
    /// that knows less than it could starts further behind, and a node
    /// that rejoins by snapshot then receives buckets it had in its log.
    /// It is the apply target, not the applied state, since applies gather
    /// for up to 20 ms: dozens of entries at one writer.
    ///
    /// Invariant: only an entry of this log that is committed and flushed
    /// is recorded, so a crash cannot leave a commit record ahead of the
    /// entries it names, and a truncation never meets one.
    fn save_commit(&mut self) {
        let Some(target) = self.apply_target() else {
            return;
        };
        if target <= self.log.committed().revision {
            return;
        }
        let Some(epoch) = self.log.epoch_at(target) else {
            return;
        };
        let upto = Position {
            epoch,
            revision: target,
        };
        if let Err(e) = self.log.save_commit(upto) {
            tracing::warn!(error = %e, "recording the commit index in the log");
        }
    }

    /// Makes the applied state durable, and purges log entries that are
    /// both checkpointed and older than `retain` entries.
    pub fn checkpoint(&mut self, retain: u64) {
        let position = self.store.checkpoint();
        self.checkpointed(position, retain);
    }

    /// A checkpoint the shell made off the protocol loop (a durable redb
    /// commit, which must not hold up acks and answers) completed: purge
    /// the log behind it, or stop on a disk error.
    pub fn checkpointed(
        &mut self,
        position: Result<Position, crate::store::StoreError>,
        retain: u64,
    ) {
        let position = match position {
            Ok(p) => p,
            Err(e) => return self.disk_failed(format!("checkpoint: {e}")),
        };
        // An idle node flushes nothing: the commit goes to the log here,
        // and to disk with the next flush (a restart replays the log to it).
        self.save_commit();
        let upto = position.revision.saturating_sub(retain);
        if upto <= self.log.start().revision {
            return;
        }
        if let Some(epoch) = self.log.epoch_at(upto)
            && let Err(e) = self.log.purge_through(Position {
                epoch,
                revision: upto,
            })
        {
            tracing::warn!(error = %e, "purging the log");
        }
    }
}
