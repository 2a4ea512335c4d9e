//! What election participants say to each other ([`ElectionMessage`]),
//! and what the election asks its driver to do ([`Action`]).

use serde::{Deserialize, Serialize};

/// Where a node's log ends: the epoch and revision of its last applied
/// change. Ordered by epoch first (vote restriction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub revision: u64,
}

/// What a node asks for, in a pre-vote and in a campaign alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAsk {
    pub epoch: u64,
    pub candidate: String,
    pub last: Position,
    /// The candidate's `replicas`.
    pub replicas: u64,
    /// The candidate's voter-set id: the revision of the newest voter set
    /// in its log, 0 when it knows none.
    pub voters: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionMessage {
    LeaseRequest(LeaseAsk),
    LeaseReply {
        epoch: u64,
        granted: bool,
        /// The voter's promise after handling the request: a candidate that
        /// lost learns which epoch to outbid.
        promised: u64,
    },
    /// Lease renewal and proof of leadership; followers' read leases run
    /// from the last one they heard.
    Heartbeat {
        epoch: u64,
        leader: String,
        round: u64,
        /// The leader's `replicas`, reported by followers that differ.
        replicas: u64,
        /// The leader's voter-set id (0: its log holds no set yet). A
        /// follower that hears one takes no part in bootstrap elections.
        voters: u64,
    },
    HeartbeatAck {
        epoch: u64,
        round: u64,
        /// False when the follower has promised a newer epoch (fencing).
        ok: bool,
        promised: u64,
        /// The follower's `replicas`, reported by a leader that differs.
        replicas: u64,
    },
    /// The sender's campaign for `epoch` ended without a lease, so nothing
    /// rests on the grants it got: voters may grant again at once instead
    /// of staying bound for a lease.
    Withdrawn {
        epoch: u64,
    },
    /// Would the receiver grant the epoch to the candidate now? Asked
    /// before a campaign; the answer binds nobody and is persisted nowhere.
    PreVote(LeaseAsk),
    PreVoteReply {
        epoch: u64,
        granted: bool,
        /// The voter's promise: a node refused for an epoch too low learns
        /// which one to ask for next.
        promised: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make `promised_epoch` durable before performing the next action.
    Persist {
        promised_epoch: u64,
    },
    Send {
        to: String,
        message: ElectionMessage,
    },
    BecameLeader {
        epoch: u64,
    },
    SteppedDown {
        epoch: u64,
        reason: &'static str,
    },
    /// This node now follows `leader` in `epoch`.
    Following {
        leader: String,
        epoch: u64,
    },
}
