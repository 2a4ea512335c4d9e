//! What replicas say to each other, as postcard frames on membership
//! streams. The first frame of every stream is [`PeerMessage::Hello`].

use serde::{Deserialize, Serialize};

use crate::election::{ElectionMessage, Position};
use crate::merkle::Digest;
use crate::record::{Applied, Op, OpError, SharedChange};
use crate::sync::{SyncAnswer, SyncAsk};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Names the sender of everything that follows on the stream, and the
    /// cluster its log belongs to (empty: it knows none yet).
    Hello {
        node_id: String,
        cluster: String,
    },
    Election(ElectionMessage),
    /// Leader → follower: log entries that follow `prev` in the leader's
    /// log (none: a probe of whether the follower holds `prev`), and the
    /// leader's commit index. `more`: a catch-up answer that stopped at its
    /// byte budget; ask again from the new log end.
    Diff {
        epoch: u64,
        prev: Position,
        /// Shared: a leader sends the same entries to every follower, the
        /// ones its log holds. The encoding is the changes' own (`Arc` is
        /// transparent to serde).
        changes: std::sync::Arc<[SharedChange]>,
        commit: u64,
        more: bool,
    },
    /// Follower → leader: its log matches the leader's through `received`,
    /// and is durable through `durable`, as incarnation `boot` (a restart
    /// loses what was received and not flushed).
    Ack {
        epoch: u64,
        received: u64,
        durable: u64,
        boot: u64,
    },
    /// Leader → follower: everything through `revision` is committed.
    Commit {
        epoch: u64,
        revision: u64,
    },
    /// Follower → leader: a diff came from an epoch below its promise.
    Fenced {
        epoch: u64,
        promised: u64,
    },
    /// Follower → leader: a diff did not continue its log; send what
    /// follows `from`, or else what follows its known commit, or say that
    /// it needs a snapshot.
    CatchUp {
        epoch: u64,
        from: Position,
        committed: Position,
    },
    /// Leader → follower: the entries it needs are no longer in the log.
    SyncNeeded {
        epoch: u64,
    },
    /// Follower → leader: one step of a snapshot install (Merkle descent).
    SyncRequest {
        session: u64,
        ask: SyncAsk,
    },
    /// Leader → follower: the answer, from the session's snapshot at
    /// (`epoch`, `revision`); `leader_epoch` fences answers of a deposed
    /// leader.
    SyncReply {
        session: u64,
        leader_epoch: u64,
        revision: u64,
        epoch: u64,
        answer: SyncAnswer,
    },
    /// Leader → follower, every `sync_interval`: the leader's Merkle root
    /// at committed revision `revision`, to compare at exactly that point.
    Verify {
        epoch: u64,
        revision: u64,
        root: Digest,
    },
    /// Follower → leader, every tick: proof of life, numbered so the leader
    /// can echo it; `boot` tells a restarted follower from its previous
    /// incarnation.
    Alive {
        seq: u64,
        boot: u64,
    },
    /// Leader → follower, every tick: whether the follower may serve reads
    /// (it is in the replication set and confirmed), the last `Alive` heard
    /// from it, what is left of the leader's lease, and the commit index.
    /// A follower's read permission runs from when it sent that `Alive`,
    /// for L at most and never longer than `lease_left` (less drift).
    SetStatus {
        epoch: u64,
        in_set: bool,
        echo: u64,
        lease_left: std::time::Duration,
        commit: u64,
    },
    /// Follower → leader: a client's write.
    Forward {
        id: u64,
        request_id: String,
        op: Op,
    },
    ForwardReply {
        id: u64,
        result: ForwardResult,
    },
    /// Learner → leader: a client's read this learner holds no read
    /// permission for (it is fed in batches): what is committed?
    ReadIndex {
        id: u64,
    },
    /// Leader → learner: the commit index, from a leader of `epoch` inside
    /// its lease whose epoch has committed an entry (so that index covers
    /// every write acknowledged before the ask); `None` from anyone else.
    /// The learner serves the read once it has applied that far.
    ReadIndexReply {
        id: u64,
        epoch: u64,
        commit: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResult {
    Applied(Applied),
    Rejected(OpError),
    /// Not the leader, no quorum, lost leadership, storage failure.
    Unavailable(String),
}

/// The largest epoch, revision, version or commit index a peer may send. The protocol adds to these (a campaign takes the highest
/// epoch seen plus one, a follower expects `prev.revision + 1`), so a value
/// near `u64::MAX` would wrap: one `Heartbeat {epoch: u64::MAX}` from a key
/// holder would leave every later campaign at epoch 0, refused forever.
/// 2^62 is a billion epochs a second for 146 years.
pub const MAX_COUNTER: u64 = 1 << 62;

impl PeerMessage {
    /// Why this message cannot come from a correct peer: the first number
    /// the protocol adds to that is beyond [`MAX_COUNTER`]. Such messages
    /// are dropped whole before the core sees them. Numbers the receiver
    /// only compares or echoes (snapshot sessions, `Alive` sequence numbers
    /// and their echoes, which start at random; heartbeat rounds; boot
    /// generations; forward ids) are not bounded.
    pub fn malformed(&self) -> Option<String> {
        self.counters()
            .into_iter()
            .find(|(_, n)| *n > MAX_COUNTER)
            .map(|(field, n)| format!("{field} = {n} is beyond 2^62"))
    }

    /// Whether this message from `from` must be dropped as malformed;
    /// logs and counts it if so. Every handler of peer messages (the core,
    /// forwarded writes) calls this before reading anything in it.
    pub fn dropped_as_malformed(&self, from: &str) -> bool {
        let Some(why) = self.malformed() else {
            return false;
        };
        tracing::warn!(%from, %why, "dropped a malformed peer message");
        metrics::counter!("pika_peer_messages_malformed_total").increment(1);
        true
    }

    /// Every counter this message carries, by name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let position =
            |name: [&'static str; 2], p: &Position| [(name[0], p.epoch), (name[1], p.revision)];
        match self {
            PeerMessage::Hello { .. } => vec![],
            PeerMessage::Election(m) => match m {
                ElectionMessage::LeaseRequest(ask) | ElectionMessage::PreVote(ask) => {
                    let mut v = vec![("epoch", ask.epoch), ("voters", ask.voters)];
                    v.extend(position(["last.epoch", "last.revision"], &ask.last));
                    v
                }
                ElectionMessage::LeaseReply {
                    epoch, promised, ..
                }
                | ElectionMessage::HeartbeatAck {
                    epoch, promised, ..
                }
                | ElectionMessage::PreVoteReply {
                    epoch, promised, ..
                } => vec![("epoch", *epoch), ("promised", *promised)],
                ElectionMessage::Heartbeat { epoch, voters, .. } => {
                    vec![("epoch", *epoch), ("voters", *voters)]
                }
                ElectionMessage::Withdrawn { epoch } => vec![("epoch", *epoch)],
            },
            PeerMessage::Diff {
                epoch,
                prev,
                changes,
                commit,
                ..
            } => {
                let mut v = vec![("epoch", *epoch), ("commit", *commit)];
                v.extend(position(["prev.epoch", "prev.revision"], prev));
                for c in changes.iter() {
                    v.extend([
                        ("change.epoch", c.epoch),
                        ("change.revision", c.revision),
                        ("change.version", c.version),
                    ]);
                }
                v
            }
            PeerMessage::Ack {
                epoch,
                received,
                durable,
                ..
            } => vec![
                ("epoch", *epoch),
                ("received", *received),
                ("durable", *durable),
            ],
            PeerMessage::Commit { epoch, revision } => {
                vec![("epoch", *epoch), ("revision", *revision)]
            }
            PeerMessage::ReadIndexReply { epoch, commit, .. } => {
                vec![("epoch", *epoch), ("commit", commit.unwrap_or(0))]
            }
            PeerMessage::Fenced { epoch, promised } => {
                vec![("epoch", *epoch), ("promised", *promised)]
            }
            PeerMessage::CatchUp {
                epoch,
                from,
                committed,
            } => {
                let mut v = vec![("epoch", *epoch)];
                v.extend(position(["from.epoch", "from.revision"], from));
                v.extend(position(
                    ["committed.epoch", "committed.revision"],
                    committed,
                ));
                v
            }
            PeerMessage::SyncNeeded { epoch } => vec![("epoch", *epoch)],
            PeerMessage::SyncRequest { ask, .. } => match ask {
                SyncAsk::Buckets { since: Some(s), .. } => vec![("since", *s)],
                SyncAsk::Requests { after, .. } => vec![("after", *after)],
                _ => vec![],
            },
            PeerMessage::SyncReply {
                leader_epoch,
                revision,
                epoch,
                ..
            } => vec![
                ("leader_epoch", *leader_epoch),
                ("revision", *revision),
                ("epoch", *epoch),
            ],
            PeerMessage::Verify {
                epoch, revision, ..
            } => vec![("epoch", *epoch), ("revision", *revision)],
            PeerMessage::Alive { .. } | PeerMessage::ReadIndex { .. } => vec![],
            PeerMessage::SetStatus { epoch, commit, .. } => {
                vec![("epoch", *epoch), ("commit", *commit)]
            }
            PeerMessage::Forward { op, .. } => op
                .expected_version
                .map(|v| vec![("expected_version", v)])
                .unwrap_or_default(),
            PeerMessage::ForwardReply { result, .. } => match result {
                ForwardResult::Applied(a) => vec![
                    ("version", a.version),
                    ("revision", a.revision),
                    ("epoch", a.epoch),
                ],
                _ => vec![],
            },
        }
    }
}
