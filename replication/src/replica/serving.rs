//! What the leader serves to nodes behind it or outside the voter set:
//! catch-up from its log, snapshot sessions from a read snapshot, and the
//! learners fed in batches (with their read index).

use std::sync::Arc;
use std::time::Duration;

use super::core::{LearnerFeed, Output, ReplicaCore};
use crate::election::Position;
use crate::log::LogStore;
use crate::store::Snapshot;
use crate::sync::{self, SyncAnswer, SyncAsk};
use crate::wire::PeerMessage;

/// Frames one catch-up answer may take before the follower asks again.
const CATCH_UP_FRAMES: usize = 8;

impl<L: LogStore> ReplicaCore<L> {
    /// With `learner_feed: batched`, tells the set who the learners are
    /// (followers outside the newest voter set in the log, which includes
    /// one being promoted). Returns whether a member left the set at once.
    pub(super) fn classify_learners(&mut self, now: Duration) -> bool {
        let voters = match self.config.learner_feed {
            LearnerFeed::Batched => self.voters().cloned(),
            LearnerFeed::PerWrite => None,
        };
        match self.leading.as_mut() {
            Some(leading) => leading.set.feed_in_batches(voters.as_ref(), now),
            None => false,
        }
    }

    /// A learner's read index: our commit index, if we lead inside our
    /// lease and our epoch has committed an entry. Then every write
    /// acknowledged before the learner asked is at or below it: we
    /// acknowledge only what we committed, a later leader commits nothing
    /// before our lease has run out, and an earlier one's acknowledged
    /// entries are below our epoch's first committed entry. A learner fed
    /// in batches is sent what it lacks at once, rather than at the next
    /// tick.
    pub(super) fn serve_read_index(&mut self, from: &str, id: u64, now: Duration) {
        let commit = self.commit;
        let (epoch, answer) = match self.leading.as_ref() {
            Some(l) => {
                let ours = self.election.lease(now).is_some_and(|(e, _)| e == l.epoch)
                    && l.epoch_start.is_some_and(|start| start <= commit);
                (l.epoch, ours.then_some(commit))
            }
            None => (0, None),
        };
        self.send(
            from,
            PeerMessage::ReadIndexReply {
                id,
                epoch,
                commit: answer,
            },
        );
        metrics::counter!("pika_read_index_total", "answered" => answer.is_some().to_string())
            .increment(1);
        if answer.is_some() {
            let last = self.log.last().revision;
            let from_revision = self
                .leading
                .as_mut()
                .and_then(|l| l.set.feed_now(from, last, now));
            if let Some(revision) = from_revision {
                self.send_batch(from, revision, epoch);
            }
        }
    }

    /// Sends learners fed in batches what they lack, from the log, once per
    /// heartbeat interval (the tick comes four times as often); one
    /// whose next entry the log no longer holds gets the empty diff at our
    /// log end and asks to catch up (or for a snapshot) by itself.
    pub(super) fn feed_batches(&mut self, epoch: u64, now: Duration) {
        let last = self.log.last();
        // Two ticks without the learner's receipt moving past a batch:
        // it was lost (a batch is small, and this is rare).
        let resend = self.config.heartbeat_interval * 2;
        let every = self.config.heartbeat_interval;
        let due = match self.leading.as_mut() {
            Some(leading) if now >= leading.next_feed => {
                leading.next_feed = now + every;
                leading.set.batches_due(last.revision, now, resend)
            }
            _ => return,
        };
        for (to, from) in due {
            self.send_batch(&to, from, epoch);
        }
    }

    /// One learner's batch: the log after revision `from`.
    pub(super) fn send_batch(&mut self, to: &str, from: u64, epoch: u64) {
        match self.log.epoch_at(from) {
            Some(e) => {
                let from = Position {
                    epoch: e,
                    revision: from,
                };
                self.serve_catch_up(to, from, from);
            }
            None => self.send(
                to,
                PeerMessage::Diff {
                    epoch,
                    prev: self.log.last(),
                    changes: Arc::from([]),
                    commit: self.commit,
                    more: false,
                },
            ),
        }
    }

    /// Leader: a follower's log does not continue ours at the point we sent
    /// from. Send what follows its log end if we hold that, else what
    /// follows its known commit (it then drops its conflicting suffix),
    /// else tell it to install a snapshot.
    pub(super) fn serve_catch_up(&mut self, to: &str, from: Position, committed: Position) {
        let Some(epoch) = self.leading.as_ref().map(|l| l.epoch) else {
            return;
        };
        let start = if self.log.holds(from) {
            from
        } else if self.log.holds(committed) {
            committed
        } else {
            if let Some(leading) = self.leading.as_mut()
                && leading.set.remove_unconfirmed(to)
            {
                tracing::info!(follower = %to, "follower needs a snapshot: out of the replication set");
            }
            return self.send(to, PeerMessage::SyncNeeded { epoch });
        };
        let last = self.log.last().revision;
        let mut prev = start;
        for frame in 0..CATCH_UP_FRAMES {
            if prev.revision >= last && frame > 0 {
                break;
            }
            let changes = match self
                .log
                .read(prev.revision + 1, last, self.config.frame_bytes)
            {
                Ok(changes) => changes,
                Err(e) => return tracing::warn!(error = %e, "reading the log for a catch-up"),
            };
            let next = changes.last().map_or(prev, |c| Position {
                epoch: c.epoch,
                revision: c.revision,
            });
            let more = frame + 1 == CATCH_UP_FRAMES && next.revision < last;
            metrics::counter!("pika_catch_up_entries_total").increment(changes.len() as u64);
            self.send(
                to,
                PeerMessage::Diff {
                    epoch,
                    prev,
                    changes: changes.into(),
                    commit: self.commit,
                    more,
                },
            );
            prev = next;
        }
    }

    /// Leader: one step of a follower's snapshot session, from the
    /// session's read snapshot.
    pub(super) fn serve_sync(&mut self, from: String, session: u64, ask: SyncAsk, now: Duration) {
        let refuse = |why: String| refused(session, why);
        let (frame_bytes, limit) = (self.config.frame_bytes, self.config.max_answer_bytes);
        let Some(leading) = self.leading.as_mut() else {
            return self.send(&from, refuse("not the leader".into()));
        };
        let leader_epoch = leading.epoch;
        let key = (from.clone(), session);
        if ask == SyncAsk::Start {
            leading.serving.retain(|(f, _), _| *f != from);
            match self.store.snapshot() {
                Ok(snapshot) => {
                    leading
                        .serving
                        .insert(key.clone(), (Arc::new(snapshot), now));
                }
                Err(e) => return self.send(&from, refuse(e.to_string())),
            }
        }
        match leading.serving.get_mut(&key) {
            None => self.send(&from, refuse("unknown sync session".into())),
            Some((snapshot, asked_at)) => {
                // Kept while the follower keeps asking.
                *asked_at = now;
                let job = SnapshotAnswer {
                    to: from,
                    session,
                    leader_epoch,
                    snapshot: snapshot.clone(),
                    ask,
                    frame_bytes,
                    limit,
                };
                self.outputs.push(Output::AnswerSnapshot(job));
            }
        }
    }
}

/// One answer of a snapshot session, for the shell to build off the
/// protocol loop: it reads up to a frame of buckets from the session's
/// read snapshot (tens of megabytes for a follower far behind), which must
/// not hold up acks and commits. The follower asks for the next part only
/// after this one arrives, so a session has at most one answer in the
/// making.
pub struct SnapshotAnswer {
    pub to: String,
    session: u64,
    leader_epoch: u64,
    snapshot: Arc<Snapshot>,
    ask: SyncAsk,
    frame_bytes: usize,
    /// The most one answer may carry (`CoreConfig::max_answer_bytes`).
    limit: usize,
}

impl std::fmt::Debug for SnapshotAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotAnswer")
            .field("to", &self.to)
            .field("session", &self.session)
            .field("leader_epoch", &self.leader_epoch)
            .field("revision", &self.snapshot.revision)
            .field("ask", &self.ask)
            .finish()
    }
}

impl SnapshotAnswer {
    /// Builds the reply (the slow part) from the snapshot taken at the
    /// session's start, fenced by the epoch the leader had when asked.
    pub fn reply(&self) -> PeerMessage {
        let answer = match sync::answer(&self.snapshot, &self.ask, self.frame_bytes, self.limit) {
            Ok(answer) => answer,
            Err(e) => return refused(self.session, e.to_string()),
        };
        if let SyncAnswer::Buckets { buckets, .. } = &answer {
            metrics::counter!("pika_sync_buckets_served_total").increment(buckets.len() as u64);
        }
        PeerMessage::SyncReply {
            session: self.session,
            leader_epoch: self.leader_epoch,
            revision: self.snapshot.revision,
            epoch: self.snapshot.epoch,
            answer,
        }
    }
}

/// A snapshot session step the leader refuses: no epoch or position, so
/// nothing in it can be installed.
fn refused(session: u64, why: String) -> PeerMessage {
    PeerMessage::SyncReply {
        session,
        leader_epoch: 0,
        revision: 0,
        epoch: 0,
        answer: SyncAnswer::Refused(why),
    }
}
