//! What replicas say to each other, as postcard frames on membership
//! streams. The first frame of every stream is [`PeerMessage::Hello`].

use serde::{Deserialize, Serialize};

use crate::election::{ElectionMessage, Position};
use crate::merkle::Digest;
use crate::record::{Applied, Change, Op, OpError};
use crate::sync::{SyncAnswer, SyncAsk};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Names the sender of everything that follows on the stream.
    Hello {
        node_id: String,
    },
    Election(ElectionMessage),
    /// Leader → follower: log entries that follow `prev` in the leader's
    /// log (none: a probe of whether the follower holds `prev`), and the
    /// leader's commit index. `more`: a catch-up answer that stopped at its
    /// byte budget; ask again from the new log end.
    Diff {
        epoch: u64,
        prev: Position,
        changes: Vec<Change>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResult {
    Applied(Applied),
    Rejected(OpError),
    /// Not the leader, no quorum, lost leadership, storage failure.
    Unavailable(String),
}

/// The largest epoch, revision, version, round, sequence or boot number a
/// peer may send. The protocol adds to these (a campaign takes the highest
/// epoch seen plus one, a follower expects `prev.revision + 1`), so a value
/// near `u64::MAX` would wrap: one `Heartbeat {epoch: u64::MAX}` from a key
/// holder would leave every later campaign at epoch 0, refused forever.
/// 2^62 is a billion epochs a second for 146 years.
pub const MAX_COUNTER: u64 = 1 << 62;

impl PeerMessage {
    /// Why this message cannot come from a correct peer: a number the
    /// protocol adds to beyond [`MAX_COUNTER`]. Such messages are dropped
    /// whole before the core sees them.
    pub fn malformed(&self) -> Option<&'static str> {
        let too_big = |n: u64| n > MAX_COUNTER;
        let position = |p: &Position| too_big(p.epoch) || too_big(p.revision);
        let change = |c: &Change| too_big(c.epoch) || too_big(c.revision) || too_big(c.version);
        let bad = match self {
            PeerMessage::Hello { .. } => false,
            PeerMessage::Election(m) => match m {
                ElectionMessage::LeaseRequest { epoch, last, .. } => {
                    too_big(*epoch) || position(last)
                }
                ElectionMessage::LeaseReply {
                    epoch, promised, ..
                } => too_big(*epoch) || too_big(*promised),
                ElectionMessage::Heartbeat { epoch, round, .. } => {
                    too_big(*epoch) || too_big(*round)
                }
                ElectionMessage::HeartbeatAck {
                    epoch,
                    round,
                    promised,
                    ..
                } => too_big(*epoch) || too_big(*round) || too_big(*promised),
                ElectionMessage::Withdrawn { epoch } => too_big(*epoch),
            },
            PeerMessage::Diff {
                epoch,
                prev,
                changes,
                commit,
                ..
            } => {
                too_big(*epoch) || position(prev) || too_big(*commit) || changes.iter().any(change)
            }
            PeerMessage::Ack {
                epoch,
                received,
                durable,
                boot,
            } => too_big(*epoch) || too_big(*received) || too_big(*durable) || too_big(*boot),
            PeerMessage::Commit { epoch, revision } => too_big(*epoch) || too_big(*revision),
            PeerMessage::Fenced { epoch, promised } => too_big(*epoch) || too_big(*promised),
            PeerMessage::CatchUp {
                epoch,
                from,
                committed,
            } => too_big(*epoch) || position(from) || position(committed),
            PeerMessage::SyncNeeded { epoch } => too_big(*epoch),
            PeerMessage::SyncRequest { session, ask } => {
                too_big(*session)
                    || matches!(ask, SyncAsk::Buckets { since: Some(s), .. } if too_big(*s))
            }
            PeerMessage::SyncReply {
                session,
                leader_epoch,
                revision,
                epoch,
                ..
            } => {
                too_big(*session) || too_big(*leader_epoch) || too_big(*revision) || too_big(*epoch)
            }
            PeerMessage::Verify {
                epoch, revision, ..
            } => too_big(*epoch) || too_big(*revision),
            PeerMessage::Alive { seq, boot } => too_big(*seq) || too_big(*boot),
            PeerMessage::SetStatus {
                epoch,
                echo,
                commit,
                ..
            } => too_big(*epoch) || too_big(*echo) || too_big(*commit),
            PeerMessage::Forward { op, .. } => op.expected_version.is_some_and(too_big),
            PeerMessage::ForwardReply { result, .. } => match result {
                ForwardResult::Applied(a) => {
                    too_big(a.version) || too_big(a.revision) || too_big(a.epoch)
                }
                _ => false,
            },
        };
        bad.then_some("a number beyond 2^62 (epoch, revision, version, round, sequence or boot)")
    }
}
