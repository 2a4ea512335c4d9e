//! The follower's half of the protocol: appending the leader's entries
//! (truncating a conflicting uncommitted suffix), acknowledging receipt and
//! durability, learning the commit index, read permission, catch-up,
//! snapshot install and verification.

use std::time::Duration;

use super::core::{DRIFT, ReplicaCore};
use crate::election::Position;
use crate::log::LogStore;
use crate::merkle::Digest;
use crate::record::SharedChange;
use crate::wire::PeerMessage;

/// `Alive` send times kept to resolve the leader's echo.
const ALIVE_HISTORY: usize = 256;

impl<L: LogStore> ReplicaCore<L> {
    pub(super) fn follower_tick(&mut self, leader: &str, now: Duration) {
        self.alive_seq += 1;
        self.alive_sent.push_back((self.alive_seq, now));
        while self.alive_sent.len() > ALIVE_HISTORY {
            self.alive_sent.pop_front();
        }
        if self.disk_error.is_some() {
            return;
        }
        self.send(
            leader,
            PeerMessage::Alive {
                seq: self.alive_seq,
                boot: self.boot,
            },
        );
        // Acks are sent once per diff and once per flush; a lost one would
        // leave the leader short of a durable quorum with nothing new to
        // ack. Restating them every tick heals that.
        if self.follow_leader.as_deref() == Some(leader) {
            self.send_ack();
        }
        if self
            .syncing
            .as_ref()
            .is_some_and(|s| s.install.is_none() && now > s.started + self.config.sync_timeout)
        {
            tracing::warn!("snapshot session timed out; starting over");
            self.syncing = None;
        }
        if self.syncing.is_some() {
            return;
        }
        if self.needs_snapshot {
            return self.start_sync(leader, now);
        }
        // Without leave to read we are out of the set or not confirmed yet:
        // keep asking to catch up (a lost request must not leave us out
        // until the next write).
        if self.permission_until.is_none_or(|p| now >= p) {
            self.request_catch_up(leader, now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_diff(
        &mut self,
        from: &str,
        epoch: u64,
        prev: Position,
        changes: &[SharedChange],
        commit: u64,
        more: bool,
        now: Duration,
    ) {
        if self.disk_error.is_some() || self.leading.is_some() || self.syncing.is_some() {
            return;
        }
        let promised = self.store.promised_epoch();
        if epoch < promised {
            metrics::counter!("pika_diffs_fenced_total").increment(1);
            tracing::info!(%from, epoch, promised, "diff from a deposed epoch refused");
            return self.send(from, PeerMessage::Fenced { epoch, promised });
        }
        if epoch < self.follow.epoch {
            return;
        }
        if epoch > self.follow.epoch {
            self.follow = super::core::Follow { epoch, matched: 0 };
        }
        self.follow_leader = Some(from.to_string());
        // Committed entries are the same in every log (and may be purged
        // here): holding the revision is holding the entry.
        let held_committed = prev.revision <= self.commit.min(self.log.last().revision);
        if !self.log.holds(prev) && !held_committed {
            tracing::debug!(?prev, last = ?self.log.last(), "diff does not continue this log: catching up");
            return self.request_catch_up(from, now);
        }
        let end = prev.revision + changes.len() as u64;
        // What this log lacks starts at the first change it neither holds
        // nor may skip (committed, or purged here); everything after it is
        // appended too.
        let mut lacking = changes.len();
        for (i, change) in changes.iter().enumerate() {
            if change.revision <= self.commit.max(self.log.start().revision) {
                continue;
            }
            if change.revision <= self.log.last().revision {
                if self.log.epoch_at(change.revision) == Some(change.epoch) {
                    continue;
                }
                // Ours is an older leader's uncommitted entry: the new
                // leader's log replaces it from here on.
                if let Err(e) = self.truncate_after(change.revision - 1) {
                    return self.disk_failed(format!("truncating a conflicting suffix: {e}"));
                }
            }
            lacking = i;
            break;
        }
        let append = &changes[lacking..];
        if !append.is_empty() {
            if let Err(e) = self.log.append(append) {
                return self.disk_failed(format!("appending to the log: {e}"));
            }
            self.pending.update(|p| p.add(append));
            self.voters_appended(append);
            self.request_flush();
        }
        self.follow.matched = self.follow.matched.max(end);
        // Entries after this diff's end from an epoch older than its last
        // entry's cannot be in this leader's log (epochs only grow along a
        // log), and nothing of this epoch was acknowledged past `matched`:
        // drop them now, or an idle leader would leave their paths pending
        // (reads waiting) until its next write. Older than the leader's
        // epoch is not enough: a catch-up frame of the leader's entries
        // from an earlier epoch is followed by more of them, which this
        // log may hold already.
        let end_epoch = changes.last().map_or(prev.epoch, |c| c.epoch);
        if end == self.follow.matched
            && end >= self.commit
            && self.log.last().revision > end
            && self.log.epoch_at(end + 1).is_some_and(|e| e < end_epoch)
            && let Err(e) = self.truncate_after(end)
        {
            return self.disk_failed(format!("truncating a stale suffix: {e}"));
        }
        // A diff that continues the log ends being behind, not a state
        // found to differ from the leader's: that one keeps refusing reads
        // until its snapshot is installed, and the next tick starts it.
        if !self.repairing {
            self.needs_snapshot = false;
        }
        self.send_ack();
        self.learn_commit(commit);
        // A catch-up answer's last frame says whether there is more: ask
        // for it once, from the frame that ends the log. With two requests
        // in flight (the install's and a tick's, say) each answer asked
        // again and the two chains went on side by side: every entry of a
        // long catch-up came twice (51 213 of 102 428 in the fanout
        // bench's rejoin, 1.38× the changed bytes).
        let last = self.log.last();
        if more
            && end == last.revision
            && self
                .catch_up_asked
                .as_ref()
                .is_none_or(|(to, asked, _)| to != from || *asked != last)
        {
            self.catch_up(from, now);
        }
    }

    /// Tells the leader what this log holds of its entries: received
    /// through `matched`, durable through what the last flush covered.
    pub(super) fn send_ack(&mut self) {
        let Some(leader) = self.follow_leader.clone() else {
            return;
        };
        if self.disk_error.is_some() || self.follow.epoch == 0 {
            return;
        }
        let received = self.follow.matched;
        self.send(
            &leader,
            PeerMessage::Ack {
                epoch: self.follow.epoch,
                received,
                durable: self.flushed.revision.min(received),
                boot: self.boot,
            },
        );
    }

    /// The leader committed through `commit`: what this log shares with it
    /// is committed here too.
    fn learn_commit(&mut self, commit: u64) {
        let commit = commit.min(self.follow.matched);
        if commit > self.commit {
            self.commit = commit;
        }
    }

    /// The leader's answer to our read index: learned as a commit index
    /// (its entries reach us with the feed it sends at once), and handed
    /// to the read that asked. An answer from anyone but the leader we
    /// follow in its epoch is none.
    pub(super) fn on_read_index_reply(
        &mut self,
        from: &str,
        id: u64,
        epoch: u64,
        commit: Option<u64>,
    ) {
        let ours = self.leading.is_none()
            && epoch == self.follow.epoch
            && self.follow_leader.as_deref() == Some(from);
        let commit = commit.filter(|_| ours);
        if let Some(c) = commit {
            self.learn_commit(c);
        }
        self.outputs
            .push(super::core::Output::ReadIndexAnswered { id, commit });
    }

    pub(super) fn on_commit(&mut self, from: &str, epoch: u64, revision: u64, _now: Duration) {
        if self.leading.is_none()
            && epoch == self.follow.epoch
            && self.follow_leader.as_deref() == Some(from)
        {
            self.learn_commit(revision);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_set_status(
        &mut self,
        from: &str,
        epoch: u64,
        in_set: bool,
        echo: u64,
        lease_left: Duration,
        commit: u64,
        now: Duration,
    ) {
        let follows = self
            .election
            .leader(now)
            .is_some_and(|(l, e)| l == from && e == epoch);
        if !follows {
            return;
        }
        let sent = self
            .alive_sent
            .iter()
            .find(|(s, _)| *s == echo)
            .map(|(_, t)| *t);
        // Permission runs from when we sent the echoed `Alive` (before the
        // leader wrote this), for L but never past the leader's own lease,
        // read on its clock and shortened for drift: a new leader can be
        // elected once that lease is over, and it commits without us.
        let left = lease_left.mul_f64(1.0 - DRIFT).min(self.config.lease);
        self.permission_until = match (in_set, sent) {
            (true, Some(sent)) => Some(sent + left),
            _ => None,
        };
        if epoch == self.follow.epoch {
            self.learn_commit(commit);
        }
    }

    /// Asks the leader for whatever follows this log's end.
    pub(super) fn catch_up(&mut self, leader: &str, now: Duration) {
        let from = self.log.last();
        let committed = Position {
            epoch: self
                .log
                .epoch_at(self.commit)
                .unwrap_or(self.log.start().epoch),
            revision: self.commit.max(self.log.start().revision),
        };
        self.catch_up_asked = Some((leader.to_string(), from, now));
        let epoch = self.follow.epoch;
        self.send(
            leader,
            PeerMessage::CatchUp {
                epoch,
                from,
                committed,
            },
        );
    }

    /// [`Self::catch_up`], at most once per heartbeat interval, and from
    /// the same log end only once per `sync_timeout`: the answer to that
    /// very request may still be on its way (thousands of entries take a
    /// while to send and append), and asking again would ship them twice.
    pub(super) fn request_catch_up(&mut self, leader: &str, now: Duration) {
        if self.disk_error.is_some() {
            return;
        }
        let from = self.log.last();
        let due = match &self.catch_up_asked {
            None => true,
            Some((to, _, _)) if to != leader => true,
            Some((_, asked, at)) if *asked == from => now >= *at + self.config.sync_timeout,
            Some((_, _, at)) => now >= *at + self.config.heartbeat_interval,
        };
        if due {
            self.catch_up(leader, now);
        }
    }

    pub(super) fn on_verify(
        &mut self,
        from: &str,
        epoch: u64,
        revision: u64,
        root: Digest,
        _now: Duration,
    ) {
        if self.leading.is_some()
            || self.syncing.is_some()
            || epoch != self.follow.epoch
            || self.follow_leader.as_deref() != Some(from)
        {
            return;
        }
        self.verify = Some((revision, root));
        self.check_verification();
    }

    /// The bucket digests at `revision`, the state being at `applied`: read
    /// as they are, or, past it, rebuilt from the changes applied since
    /// (`Store::merkle_before`). A follower applies as commits arrive,
    /// so under steady writes about a third of them were past the
    /// revision when the leader's root came, and skipped the comparison.
    /// `None`: the log or the history no longer holds what is needed.
    fn merkle_at(
        &self,
        revision: u64,
        applied: u64,
    ) -> Result<Option<crate::merkle::MerkleBuckets>, String> {
        if applied == revision {
            return self.store.merkle().map(Some).map_err(|e| e.to_string());
        }
        if self.log.start().revision > revision {
            return Ok(None);
        }
        let since = self
            .log
            .read(revision + 1, applied, VERIFY_READ_BYTES)
            .map_err(|e| e.to_string())?;
        if since.len() as u64 != applied - revision {
            return Ok(None);
        }
        self.store.merkle_before(&since).map_err(|e| e.to_string())
    }

    /// Compares Merkle roots once the state is exactly at the revision the
    /// leader verified; a difference is corruption or a bug, repaired by a
    /// snapshot of the differing buckets.
    pub(super) fn check_verification(&mut self) {
        let Some((revision, root)) = self.verify else {
            return;
        };
        // The state moves while an apply is in flight: its finish compares.
        if self.applying.is_some() {
            return;
        }
        let applied = self.store.revision();
        if applied < revision {
            return;
        }
        self.verify = None;
        let mine = match self.merkle_at(revision, applied) {
            Ok(Some(m)) => m.root(),
            Ok(None) => {
                metrics::counter!("pika_verify_skipped_total").increment(1);
                return;
            }
            Err(e) => return tracing::warn!(error = %e, "reading Merkle digests to verify"),
        };
        if mine == root {
            metrics::counter!("pika_verify_matches_total").increment(1);
            self.verified += 1;
            return;
        }
        metrics::counter!("pika_verify_mismatches_total").increment(1);
        self.mismatches += 1;
        tracing::error!(
            revision,
            "this node's state differs from the leader's at the same revision: \
             serving no reads until a snapshot of the differing buckets repairs it"
        );
        // The next tick starts the snapshot session, for everything in the
        // differing buckets.
        self.needs_snapshot = true;
        self.repairing = true;
    }
}

/// The most a follower reads from its log to rebuild the digests of a
/// revision it applied past: beyond that it skips the comparison.
const VERIFY_READ_BYTES: usize = 16 << 20;
