//! Who a member is, and what it tells the others about itself.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A member's identity in SWIM: the node id persisted in its store, the peer
/// address it is reached at, and its boot generation.
///
/// The generation grows with every start of the process (the store persists a
/// counter), so a restarted node is a new identity that replaces its old
/// incarnation instead of arguing with it. `renewal` grows when foca rejoins
/// the cluster after being declared down without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId {
    pub node_id: String,
    pub addr: SocketAddr,
    pub generation: u64,
    pub renewal: u32,
}

impl PeerId {
    pub fn new(node_id: impl Into<String>, addr: SocketAddr, generation: u64) -> PeerId {
        PeerId {
            node_id: node_id.into(),
            addr,
            generation,
            renewal: 0,
        }
    }

    /// The identity used to announce to an address whose occupant is not known
    /// yet: foca accepts an announce addressed to any identity at its address.
    pub fn placeholder(addr: SocketAddr) -> PeerId {
        PeerId::new(String::new(), addr, 0)
    }

    /// Which of two identities at one address is the more recent incarnation.
    pub fn is_newer_than(&self, other: &PeerId) -> bool {
        (self.generation, self.renewal) > (other.generation, other.renewal)
    }
}

impl foca::Identity for PeerId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(PeerId {
            renewal: self.renewal.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.is_newer_than(adversary)
    }
}

/// What a member says about itself beyond its identity. Membership carries it
/// without interpreting it; replication fills in role, revision and epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMeta {
    /// The member's HTTP API address, as clients should use it.
    pub http_addr: String,
    /// `leader`, `follower`, `candidate`, ...: whatever replication reports.
    pub role: String,
    pub applied_revision: u64,
    pub epoch: u64,
}
