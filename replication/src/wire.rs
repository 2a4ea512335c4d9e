//! What replicas say to each other, as postcard frames on membership
//! streams. The first frame of every stream is [`PeerMessage::Hello`].

use serde::{Deserialize, Serialize};

use crate::election::ElectionMessage;
use crate::record::{Applied, Change, Op, OpError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Names the sender of everything that follows on the stream.
    Hello {
        node_id: String,
    },
    Election(ElectionMessage),
    /// Leader → follower: changes `first..=last` of `epoch`, to apply in
    /// order in one transaction.
    Diff {
        epoch: u64,
        changes: Vec<Change>,
    },
    /// Follower → leader: durably applied through `revision`.
    DiffAck {
        epoch: u64,
        revision: u64,
    },
    /// Follower → leader: the diff did not continue the follower's log
    /// (`applied` is where it stands), or came from a deposed epoch.
    DiffRefused {
        epoch: u64,
        applied: u64,
        promised: u64,
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
