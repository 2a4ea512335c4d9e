//! The follower's side of a snapshot session (DESIGN.md, "Catch-up,
//! snapshots and verification"): told it is beyond the leader's log, or
//! found to differ, it runs a Merkle descent against one leader snapshot
//! (`crate::sync`), stages the answers in the store, and installs them.
//!
//! The install is a job for the apply thread, as an apply of committed
//! entries is ([`ReplicaCore::begin_apply`]), not a transaction on the
//! protocol thread: a store of 100 000 changed paths takes seconds to
//! install, and a protocol thread held that long answered no vote, so a
//! leader lost meanwhile waited for it. Invariants:
//! - While a session runs, and until its install finished, the session
//!   stays in `syncing`: no Diff is appended, nothing else is applied, no
//!   verification is compared, and neither a new leader nor silence ends
//!   an install already planned (its revision S is committed whoever
//!   leads, and the install is the only writer of the state meanwhile).
//! - The log moves to S only after the store holds S
//!   ([`ReplicaCore::installed`]): a crash in between finds the state
//!   ahead of the log, which the open handles (`ReplicaCore::open_log`);
//!   the other order would leave a log that starts after its state.
//! - Until the install finished the core's commit index and durable end
//!   may be below the state's revision (S, a committed revision of the
//!   leader's): the one window where `applied ≤ commit` does not hold
//!   from the core's view (`replica_sim` checks `applied ≤ S` there).

use std::time::Duration;

use super::apply::ApplyJob;
use super::core::{ReplicaCore, SyncRecord};
use crate::election::Position;
use crate::log::LogStore;
use crate::record::Applied;
use crate::sync::{SyncAnswer, SyncAsk, SyncSession, SyncStep};
use crate::wire::PeerMessage;

pub(super) struct Syncing {
    pub(super) id: u64,
    pub(super) leader: String,
    pub(super) session: SyncSession,
    /// When the session last heard from the leader (it times out after
    /// `sync_timeout` of silence, unless its install is planned).
    pub(super) started: Duration,
    /// Paths staged so far.
    pub(super) staged: usize,
    /// Everything is in: the install for the apply thread
    /// (`replica/snapshot.rs`).
    pub(super) install: Option<PlannedInstall>,
}

/// An install the session is done asking for: what the apply thread
/// writes ([`ApplyJob`]) and what the core does once it has.
#[derive(Debug, Clone)]
pub(super) struct PlannedInstall {
    pub(super) buckets: Vec<u16>,
    pub(super) requests: Vec<(String, Applied)>,
    /// The snapshot's position S.
    pub(super) at: Position,
    pub(super) since: Option<u64>,
    /// Handed to the apply thread ([`ReplicaCore::begin_apply`]).
    pub(super) handed_out: bool,
}

impl<L: LogStore> ReplicaCore<L> {
    pub(super) fn on_sync_needed(&mut self, from: &str, epoch: u64, now: Duration) {
        // A node whose disk failed takes no part (it syncs after recovery).
        if self.disk_error.is_some()
            || self.leading.is_some()
            || epoch < self.store.promised_epoch()
        {
            return;
        }
        self.needs_snapshot = true;
        if self.syncing.is_none() {
            self.start_sync(from, now);
        }
    }

    pub(super) fn start_sync(&mut self, leader: &str, now: Duration) {
        // The install must not meet an apply in flight (`apply.rs`): the
        // next tick starts the session (`needs_snapshot` stays).
        if self.disk_error.is_some() || self.applying.is_some() {
            return;
        }
        // Behind, committed entries this log holds and the state lacks go
        // in first (the next tick starts the session once they have): a
        // session from the state as it is would have the leader ship their
        // changes again (a catch-up cut short by the leader's log purge
        // can leave many).
        if !self.repairing
            && self
                .apply_target()
                .is_some_and(|target| target > self.store.revision())
        {
            return;
        }
        let local = match self.store.merkle() {
            Ok(m) => m,
            Err(e) => return tracing::error!(error = %e, "reading Merkle digests for a snapshot"),
        };
        let id = self.dice.next_u64();
        // Behind, the state is a prefix of the leader's: only what changed
        // after it moves. Damaged (a verification mismatch), everything in
        // the differing buckets does.
        let since = (!self.repairing).then(|| self.store.revision());
        // What an earlier session staged is of another snapshot: its
        // install never takes it, and here it goes.
        if let Err(e) = self.store.clear_staged() {
            return tracing::error!(error = %e, "clearing an earlier snapshot's staged paths");
        }
        self.syncing = Some(Syncing {
            id,
            leader: leader.to_string(),
            session: SyncSession::new(local, since),
            started: now,
            staged: 0,
            install: None,
        });
        self.send(
            leader,
            PeerMessage::SyncRequest {
                session: id,
                ask: SyncAsk::Start,
            },
        );
    }

    /// Follower: the next step of its own snapshot session.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_sync_reply(
        &mut self,
        from: String,
        session: u64,
        leader_epoch: u64,
        revision: u64,
        epoch: u64,
        answer: SyncAnswer,
        now: Duration,
    ) {
        if self.disk_error.is_some() {
            return;
        }
        let promised = self.store.promised_epoch();
        let Some(syncing) = self
            .syncing
            .as_mut()
            .filter(|s| s.id == session && s.leader == from && s.install.is_none())
        else {
            return;
        };
        // Fencing: a deposed leader's snapshot is never installed.
        if !matches!(answer, SyncAnswer::Refused(_)) && leader_epoch < promised {
            tracing::info!(%from, leader_epoch, promised, "snapshot from a deposed epoch refused");
            self.syncing = None;
            return;
        }
        // The timeout is for silence: a big snapshot takes many answers.
        syncing.started = now;
        match syncing.session.on_answer(revision, epoch, answer) {
            SyncStep::Ask(ask) => self.send(&from, PeerMessage::SyncRequest { session, ask }),
            SyncStep::Stage { paths, next } => {
                syncing.staged += paths.len();
                if let Err(e) = self.store.stage(session, &paths) {
                    tracing::error!(error = %e, "staging a snapshot's paths failed");
                    self.syncing = None;
                    return;
                }
                self.send(&from, PeerMessage::SyncRequest { session, ask: next })
            }
            SyncStep::Install {
                buckets,
                requests,
                revision,
                epoch,
            } => self.plan_install(buckets, requests, Position { epoch, revision }),
            SyncStep::InSync { revision, epoch } => {
                self.plan_install(Vec::new(), Vec::new(), Position { epoch, revision })
            }
            SyncStep::Failed(why) => {
                tracing::debug!(%why, "snapshot refused");
                self.syncing = None;
            }
        }
    }

    /// The session has everything for the leader's state at S (`at`): the
    /// differing buckets, from the paths staged for them, go to the apply
    /// thread in one transaction, never below what is applied here.
    fn plan_install(&mut self, buckets: Vec<u16>, requests: Vec<(String, Applied)>, at: Position) {
        let Some(syncing) = self.syncing.as_mut() else {
            return;
        };
        let since = syncing.session.since();
        if since.is_some_and(|a| a != self.store.revision()) {
            // Asked for what changed after a state we no longer have.
            self.syncing = None;
            return;
        }
        if at.revision < self.store.revision() {
            // The state only moves forward; a newer snapshot comes next.
            tracing::debug!(
                revision = at.revision,
                applied = self.store.revision(),
                "snapshot older than the state: not installed"
            );
            self.syncing = None;
            return;
        }
        syncing.install = Some(PlannedInstall {
            buckets,
            requests,
            at,
            since,
            handed_out: false,
        });
    }

    /// An install ready for the apply thread, if one is planned and no
    /// apply is in flight: see [`Self::begin_apply`].
    pub(super) fn begin_install(&mut self) -> Option<ApplyJob> {
        if self.applying.is_some() || self.disk_error.is_some() {
            return None;
        }
        let syncing = self.syncing.as_mut()?;
        let plan = syncing.install.as_mut().filter(|p| !p.handed_out)?;
        plan.handed_out = true;
        self.applying = Some(plan.at.revision);
        // The request ids go with the job: the finish needs none of them.
        let for_job = PlannedInstall {
            requests: std::mem::take(&mut plan.requests),
            ..plan.clone()
        };
        Some(ApplyJob::install(syncing.id, for_job))
    }

    /// Whether an install waits for the apply thread.
    pub fn install_waiting(&self) -> bool {
        self.syncing
            .as_ref()
            .and_then(|s| s.install.as_ref())
            .is_some_and(|p| !p.handed_out)
    }

    /// The revision of the install in flight on the apply thread, if one is.
    pub fn installing(&self) -> Option<u64> {
        self.syncing
            .as_ref()
            .and_then(|s| s.install.as_ref())
            .filter(|p| p.handed_out)
            .map(|p| p.at.revision)
    }

    /// The apply thread wrote the install (or failed to): the log then
    /// starts at S, keeping any entries after S that it holds.
    pub(super) fn installed(&mut self, result: Result<(), crate::store::ApplyError>) {
        let Some(syncing) = self.syncing.take() else {
            return;
        };
        let Some(plan) = syncing.install.filter(|p| p.handed_out) else {
            return;
        };
        if let Err(e) = result {
            // Nothing was installed (one transaction): the next tick
            // starts another session (`needs_snapshot` stays).
            return tracing::error!(error = %e, "installing a snapshot failed");
        }
        let (at, revision) = (plan.at, plan.at.revision);
        let log_result = if self.log.holds(at) {
            self.log.purge_through(at)
        } else {
            let keep = self.commit.max(self.log.start().revision);
            self.truncate_after(keep)
                .map_err(crate::log::LogError::Refused)
                .and_then(|()| self.log.purge_through(at))
        };
        if let Err(e) = log_result {
            return self.disk_failed(format!("starting the log at the snapshot: {e}"));
        }
        self.pending.update(|p| p.applied_through(revision));
        if self.flushed.revision < revision {
            self.flushed = at;
        }
        self.load_voters();
        self.commit = self.commit.max(revision);
        self.follow.matched = self.follow.matched.max(revision);
        // A snapshot of what changed after this state (`since`) does not
        // repair a difference that an apply's verification found while it
        // was on its way: that one still needs all of the differing
        // buckets, and reads stay refused until it is installed.
        if plan.since.is_none() || !self.repairing {
            self.needs_snapshot = false;
            self.repairing = false;
        }
        self.verify = None;
        self.request_flush();
        metrics::counter!("pika_syncs_total").increment(1);
        self.snapshots += 1;
        metrics::counter!("pika_sync_buckets_transferred_total")
            .increment(plan.buckets.len() as u64);
        tracing::info!(
            buckets = plan.buckets.len(),
            paths = syncing.staged,
            revision,
            "snapshot installed"
        );
        // The apply thread's finish comes without a clock: the latest time
        // an event brought. (The last answer's, seconds old after a large
        // install, made the next tick ask again at once: two chains of
        // catch-up requests, 1.41× the changed bytes in the fanout bench's
        // rejoin.)
        let now = self.latest.max(syncing.started);
        self.last_sync = Some(SyncRecord {
            at_ms: now.as_millis() as u64,
            revision,
            buckets: plan.buckets.len(),
            paths: syncing.staged,
        });
        // From the leader followed now: another may have taken over while
        // the install was written.
        let leader = self.follow_leader.clone().unwrap_or(syncing.leader);
        self.catch_up(&leader, now);
    }
}
