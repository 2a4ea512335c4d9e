//! The leader's half of the protocol: proposing batches, the commit rule,
//! heartbeats with read permission and verification roots. What it serves
//! to nodes behind it (catch-up, snapshots, learners) is in `serving`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::core::{DRIFT, Leading, Output, ReplicaCore};
use crate::commit::{Decided, WriteError};
use crate::fanout::ReplicationSet;
use crate::log::LogStore;
use crate::record::{Applied, Entry, Fingerprint, Op, SharedChange};
use crate::store;
use crate::wire::PeerMessage;

impl<L: LogStore> ReplicaCore<L> {
    pub(super) fn lead(&mut self, epoch: u64, now: Duration) {
        metrics::counter!("pika_elections_won_total").increment(1);
        // A term before this one never saw its step-down here: its writers
        // are told they are lost rather than left waiting for good.
        if let Some(mut old) = self.leading.take() {
            let waiting = old.set.drain();
            if !waiting.is_empty() {
                self.outputs.push(Output::Fail(waiting, super::core::LOST));
            }
        }
        let eviction = self.config.lease.mul_f64(1.0 + DRIFT);
        let quorum = self.quorum_rule();
        self.leading = Some(Leading {
            epoch,
            set: ReplicationSet::new(
                quorum,
                &self.me,
                eviction,
                self.log.last().revision,
                self.alive.clone(),
                now,
            ),
            epoch_start: None,
            sent: VecDeque::new(),
            echoes: HashMap::new(),
            serving: BTreeMap::new(),
            next_verify: now + self.config.sync_interval,
            verify_at: None,
            verified_at_finish: false,
            next_feed: now,
        });
        tracing::info!(epoch, "leading");
        self.classify_learners(now);
        self.first_voters(epoch, now);
        self.outputs.push(Output::BecameLeader { epoch });
    }

    /// Leader: decides a batch of ops against the state plus the pending
    /// entries (so compare-and-set sees writes not committed yet), appends
    /// the changes to the log, sends them to every follower and starts a
    /// flush. The answers wait for the commit ([`Self::wait`]).
    pub fn propose(
        &mut self,
        epoch: u64,
        ops: &[Op],
        now_ms: u64,
        now: Duration,
    ) -> Result<Decided, WriteError> {
        if self.write_epoch()? != epoch {
            return Err(WriteError::Unavailable(super::core::LOST.into()));
        }
        let prev = self.log.last();
        let mut revision = prev.revision;
        let mut decided: HashMap<String, Entry> = HashMap::new();
        let mut results = Vec::with_capacity(ops.len());
        let mut changes: Vec<SharedChange> = Vec::with_capacity(ops.len());
        let mut entries: Vec<Entry> = Vec::with_capacity(ops.len());
        // One read of the store for the batch, opened on the first path
        // that is neither decided here nor pending. Safe against applies
        // that finish meanwhile: an entry leaves the pending paths only in
        // `finish_apply`, under the core's lock this call holds, and after
        // its store transaction committed. So an entry missing from the
        // pending paths now was in the store before this read began.
        let mut stored: Option<store::Entries> = None;
        let pending = self.pending.lock();
        for op in ops {
            let path = op.path.as_str();
            let current = match decided.get(path) {
                Some(e) => Some(e.clone()),
                None => match pending.latest(path).cloned() {
                    Some(e) => Some(e),
                    None => {
                        let stored = match stored.as_mut() {
                            Some(stored) => stored,
                            None => stored.insert(
                                self.store
                                    .entries()
                                    .map_err(|e| WriteError::Storage(e.to_string()))?,
                            ),
                        };
                        stored
                            .get(path)
                            .map_err(|e| WriteError::Storage(e.to_string()))?
                    }
                },
            };
            match store::resolve(op, current.as_ref(), revision + 1, epoch, now_ms) {
                Ok(change) => {
                    revision = change.revision;
                    let entry = Entry::of(&change);
                    decided.insert(path.to_string(), entry.clone());
                    entries.push(entry);
                    results.push(Ok(Applied {
                        version: change.version,
                        revision: change.revision,
                        epoch,
                    }));
                    changes.push(Arc::new(change));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        drop(pending);
        let Some(last) = changes.last().map(|c| c.revision) else {
            return Ok((results, None));
        };
        if let Err(e) = self.log.append(&changes) {
            self.disk_failed(format!("appending to the log: {e}"));
            return Err(WriteError::Unavailable(format!(
                "appending to the log failed: {e}"
            )));
        }
        self.pending.update(|p| p.add_entries(&changes, entries));
        self.voters_appended(&changes);
        let commit = self.commit;
        if let Some(leading) = self.leading.as_mut() {
            leading.epoch_start.get_or_insert(changes[0].revision);
            leading.sent.push_back((last, now));
            while leading.sent.len() > 4096 {
                leading.sent.pop_front();
            }
        }
        // Shared by every follower's message, not copied per follower.
        let message = PeerMessage::Diff {
            epoch,
            prev,
            changes: changes.into(),
            commit,
            more: false,
        };
        self.send_per_write(&message);
        self.request_flush();
        Ok((results, Some(last)))
    }

    /// The request ids in the log above the applied state, with what they
    /// did: a new leader answers a retry of one of them once it commits,
    /// instead of applying the op again.
    ///
    /// Above the applied state, not above the commit index: the committer
    /// finds older ids in the store's record, which holds applied entries
    /// only, and applies gather for up to 20 ms. From the commit index a
    /// retry of an entry committed but not applied yet was in neither place
    /// and was applied a second time (campaign seed 10, `PauseQueued`, under
    /// the full test suite's load: a put at versions 6 and 8).
    pub fn requests_in_flight(&self) -> Vec<(String, Applied, Fingerprint)> {
        let from = self.store.revision() + 1;
        match self.log.read(from, self.log.last().revision, usize::MAX) {
            Ok(changes) => changes
                .into_iter()
                .filter_map(|c| {
                    let applied = Applied {
                        version: c.version,
                        revision: c.revision,
                        epoch: c.epoch,
                    };
                    let fingerprint = c.fingerprint();
                    Some((c.request_id.clone()?, applied, fingerprint))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading request ids from the log");
                Vec::new()
            }
        }
    }

    /// Leader: answer `token` once `revision` is committed.
    pub fn wait(&mut self, epoch: u64, revision: u64, token: u64, now: Duration) {
        match self.leading.as_mut().filter(|l| l.epoch == epoch) {
            Some(leading) => {
                leading.set.wait(revision, token);
                self.release_ready(now);
            }
            None => self
                .outputs
                .push(Output::Fail(vec![token], super::core::LOST)),
        }
    }

    /// Acknowledges what is committed, but only inside this node's lease:
    /// a leader never acknowledges while another may hold a lease. What
    /// waits when the lease runs out is failed at step-down.
    fn release_ready(&mut self, now: Duration) {
        if self.election.lease(now).is_none() {
            return;
        }
        let commit = self.commit;
        if let Some(leading) = self.leading.as_mut() {
            let ready = leading.set.released(commit);
            if !ready.is_empty() {
                self.outputs.push(Output::Release(ready));
            }
        }
    }

    pub(super) fn on_ack(
        &mut self,
        from: &str,
        epoch: u64,
        received: u64,
        durable: u64,
        boot: u64,
        now: Duration,
    ) {
        let commit = self.commit;
        let Some(leading) = self.leading.as_mut().filter(|l| l.epoch == epoch) else {
            return;
        };
        if !leading.set.heard(from, boot, now) {
            return;
        }
        // Each latency once, when the ack moves it onto a batch we sent: an
        // ack restates both positions, and a `durable` ack restating
        // `received` must not count as a second, later receipt.
        let (had_received, had_durable) = leading.set.progress(from);
        let since_sent = |revision: u64| {
            leading
                .sent
                .iter()
                .rev()
                .find(|(r, _)| *r == revision)
                .map(|(_, at)| now.saturating_sub(*at).as_secs_f64())
        };
        if received > had_received
            && let Some(took) = since_sent(received)
        {
            metrics::histogram!("pika_fanout_seconds", "follower" => from.to_string()).record(took);
        }
        let durable_now = durable.min(received);
        if durable_now > had_durable
            && let Some(took) = since_sent(durable_now)
        {
            metrics::histogram!("pika_fanout_durable_seconds", "follower" => from.to_string())
                .record(took);
        }
        leading.set.acked(from, received, durable, now);
        if leading.set.admit_if_caught_up(from, commit) {
            tracing::info!(follower = %from, received, "follower caught up: in the replication set");
        }
        self.advance_commit(now);
    }

    /// Moves the commit index as far as the commit rule allows, answers
    /// writers and tells the followers (the shell applies afterwards).
    pub(super) fn advance_commit(&mut self, now: Duration) {
        let last = self.log.last().revision;
        let Some(leading) = self.leading.as_ref() else {
            return;
        };
        let epoch = leading.epoch;
        let bound = leading.set.commit_bound(last, self.flushed.revision);
        // Only through an entry of our own epoch (see `Leading::epoch_start`).
        if leading.epoch_start.is_none_or(|start| bound < start) || bound <= self.commit {
            return self.release_ready(now);
        }
        self.commit = bound;
        self.release_ready(now);
        let message = PeerMessage::Commit {
            epoch,
            revision: bound,
        };
        self.send_per_write(&message);
    }

    /// Sends `message` to every follower fed with each write: all of them
    /// but the learners fed in batches, who hear of it at the next tick.
    fn send_per_write(&mut self, message: &PeerMessage) {
        for peer in self.peers.clone() {
            let batched = self
                .leading
                .as_ref()
                .is_some_and(|l| l.set.is_batched(&peer));
            if !batched {
                self.send(&peer, message.clone());
            }
        }
    }

    pub(super) fn leader_tick(&mut self, epoch: u64, now: Duration) {
        // An advance may have waited for the lease (renewed by this tick).
        // First, so that what follows carries the new commit index and a
        // verification is at or above every commit sent before it.
        self.advance_commit(now);
        let batched_left = self.classify_learners(now);
        if self.update_set(now) || batched_left {
            // Commit what waited only for those who left at once: before
            // the next word from one of them could admit it back on the
            // commit index as it stood (a follower that never receives
            // anything would keep a write from committing for good).
            self.advance_commit(now);
        }
        // What is left of this node's lease bounds the followers' read
        // permission: with no lease left, no follower may read on our word.
        let lease_left = self
            .election
            .lease(now)
            .map_or(Duration::ZERO, |(_, until)| until.saturating_sub(now));
        let (commit, last) = (self.commit, self.log.last());
        let sync_timeout = self.config.sync_timeout;
        let verify = match self.leading.as_ref() {
            Some(l) if now >= l.next_verify => self.verification(epoch),
            _ => None,
        };
        let applied = self.store.revision();
        let Some(leading) = self.leading.as_mut() else {
            return;
        };
        if leading.verified_at_finish || (now >= leading.next_verify && verify.is_some()) {
            leading.next_verify = now + self.config.sync_interval;
            leading.verify_at = None;
            leading.verified_at_finish = false;
        } else if now >= leading.next_verify && leading.verify_at.is_none_or(|at| at < applied) {
            // Aim at the commit index (again, if an apply in flight when
            // it was aimed went past it).
            leading.verify_at = (commit > 0).then_some(commit);
        }
        leading
            .serving
            .retain(|_, (_, started)| now < *started + sync_timeout);
        let mut messages: Vec<(String, PeerMessage)> = Vec::new();
        for peer in &self.peers {
            messages.push((
                peer.clone(),
                PeerMessage::SetStatus {
                    epoch,
                    in_set: leading.set.may_read(peer),
                    echo: leading.echoes.get(peer).copied().unwrap_or(0),
                    lease_left,
                    commit,
                },
            ));
            if let Some(verify) = &verify {
                messages.push((peer.clone(), verify.clone()));
            }
        }
        // An empty diff at our log end, to members not confirmed yet and to
        // members stalled behind it: a follower that already holds it
        // acknowledges (and is confirmed) without waiting for a write; one
        // that does not asks to catch up.
        let probe = PeerMessage::Diff {
            epoch,
            prev: last,
            changes: Arc::from([]),
            commit,
            more: false,
        };
        let mut probed = leading.set.unconfirmed();
        for peer in leading
            .set
            .stalled(last.revision, now, self.config.heartbeat_interval)
        {
            if !probed.contains(&peer) {
                probed.push(peer);
            }
        }
        for peer in probed {
            messages.push((peer, probe.clone()));
        }
        for (to, message) in messages {
            self.send(&to, message);
        }
        self.feed_batches(epoch, now);
    }

    /// Revokes the read permission of members lagging past `ack_timeout`,
    /// and takes out of the set those whose permission has surely run out
    /// (silent or revoked that long ago) and the unconfirmed that stay
    /// silent. Returns whether anyone left.
    fn update_set(&mut self, now: Duration) -> bool {
        let (ack_timeout, quiet) = (self.config.ack_timeout, self.config.heartbeat_interval / 2);
        let Some(leading) = self.leading.as_mut() else {
            return false;
        };
        let sent = &leading.sent;
        let sent_at = |received: u64| sent.iter().find(|(r, _)| *r > received).map(|(_, t)| *t);
        let mut left_now = false;
        for (lagging, left) in leading.set.revoke_lagging(sent_at, now, ack_timeout) {
            if left {
                left_now = true;
                tracing::warn!(follower = %lagging, ?ack_timeout, "follower received nothing within ack_timeout and was never confirmed: it left the replication set");
            } else {
                metrics::counter!("pika_followers_revoked_total").increment(1);
                tracing::warn!(follower = %lagging, ?ack_timeout, "follower received nothing within ack_timeout: no more read permission; it leaves the replication set once the last one has run out");
            }
        }
        let evicted = leading.set.evict_silent(now);
        for gone in &evicted {
            tracing::warn!(follower = %gone, "follower left the replication set: its read permission has run out");
        }
        let dropped = leading.set.drop_silent_unconfirmed(now, quiet);
        for gone in &dropped {
            tracing::info!(follower = %gone, "follower left the replication set: silent and not confirmed yet");
        }
        left_now || !evicted.is_empty() || !dropped.is_empty()
    }

    /// The leader's Merkle root at its applied revision, when that is the
    /// revision aimed at ([`Leading::verify_at`]), or else the commit index
    /// (what the followers will compare at).
    ///
    /// [`Leading::verify_at`]: super::core::Leading::verify_at
    fn verification(&self, epoch: u64) -> Option<PeerMessage> {
        let applied = self.store.revision();
        let target = self
            .leading
            .as_ref()
            .and_then(|l| l.verify_at)
            .unwrap_or(self.commit);
        // With an apply in flight the root could be read at another
        // revision than `applied`.
        if applied != target || applied == 0 || self.applying.is_some() {
            return None;
        }
        match self.store.merkle() {
            Ok(merkle) => Some(PeerMessage::Verify {
                epoch,
                revision: applied,
                root: merkle.root(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "reading Merkle digests to verify");
                None
            }
        }
    }

    /// Leader: the apply that just finished reached the revision a due
    /// verification aims at: send the root now, before the next apply
    /// moves the state past it.
    pub(super) fn verify_at_finish(&mut self) {
        let Some(leading) = self.leading.as_ref() else {
            return;
        };
        if leading.verify_at != Some(self.store.revision()) {
            return;
        }
        let epoch = leading.epoch;
        let Some(verify) = self.verification(epoch) else {
            return;
        };
        for peer in self.peers.clone() {
            self.send(&peer, verify.clone());
        }
        if let Some(leading) = self.leading.as_mut() {
            leading.verify_at = None;
            leading.verified_at_finish = true;
        }
    }
}
