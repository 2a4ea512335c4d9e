//! What replicas say to each other, as postcard frames on membership
//! streams. The first frame of every stream is [`PeerMessage::Hello`].

use serde::{Deserialize, Serialize};

use crate::election::{ElectionMessage, Position};
use crate::record::{Applied, Change, Op, OpError};
use crate::sync::{SyncAnswer, SyncAsk};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Names the sender of everything that follows on the stream.
    Hello {
        node_id: String,
    },
    Election(ElectionMessage),
    /// Leader → follower: changes that continue the log after `prev`, to
    /// apply in order in one durable transaction.
    Diff {
        epoch: u64,
        prev: Position,
        changes: Vec<Change>,
    },
    /// Follower → leader: durably applied through `revision`.
    DiffAck {
        epoch: u64,
        revision: u64,
    },
    /// Follower → leader: a diff came from an epoch below its promise.
    Fenced {
        epoch: u64,
        promised: u64,
    },
    /// Follower → leader: a diff did not continue its log; send what
    /// follows `from`, or say to sync.
    CatchUp {
        epoch: u64,
        from: Position,
    },
    /// Leader → follower: `from` is not in the recent-change buffer.
    SyncNeeded {
        epoch: u64,
    },
    /// Follower → leader: one step of a Merkle sync session.
    SyncRequest {
        session: u64,
        ask: SyncAsk,
    },
    /// Leader → follower: the answer, from the session's snapshot.
    SyncReply {
        session: u64,
        revision: u64,
        epoch: u64,
        answer: SyncAnswer,
    },
    /// Follower → leader, every tick: proof of life, numbered so the leader
    /// can echo it.
    Alive {
        seq: u64,
    },
    /// Leader → follower, every tick: whether the follower may serve reads
    /// (it is in the replication set and confirmed), the last `Alive` heard
    /// from it, and what is left of the leader's lease. A follower's read
    /// permission runs from when it sent that `Alive`, for L at most and
    /// never longer than `lease_left` (less drift).
    SetStatus {
        epoch: u64,
        in_set: bool,
        echo: u64,
        lease_left: std::time::Duration,
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
