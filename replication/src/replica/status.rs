//! What the status API shows of a replica: its role, the leader it
//! follows, its log and commit index, the replication set, the voter set,
//! verifications and snapshot installs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::core::ReplicaCore;
use crate::election::Role;
use crate::log::LogStore;

/// What the status API shows of replication.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStatus {
    pub role: String,
    pub is_leader: bool,
    pub leader_id: Option<String>,
    pub epoch: u64,
    pub promised_epoch: u64,
    /// The leader is known and this node may serve reads.
    pub leader_healthy: bool,
    /// Followers in the leader's replication set with what they received.
    pub replication_set: Vec<(String, u64)>,
    /// This follower needs a snapshot and serves no reads until installed.
    pub behind: bool,
    pub replicas_mismatch: bool,
    /// Members whose `replicas` differs from this node's, with theirs (from
    /// their lease requests, heartbeats and acks). Before a voter set
    /// exists, they and this node do not grant each other's campaigns.
    pub replicas_conflicts: BTreeMap<String, u64>,
    /// The log: its first and last revision, and the commit index.
    pub log_start: u64,
    pub log_last: u64,
    pub commit: u64,
    pub applied: u64,
    /// Entries received and not applied yet.
    pub pending: usize,
    /// Why this node stopped taking part, if its disk failed.
    pub disk_error: Option<String>,
    /// The voter set of this node's log (empty before a new cluster's
    /// first leader wrote one), and whether this node is in it (a voter)
    /// or not (a learner: it receives the log and serves reads, but does
    /// not vote).
    pub voters: Vec<String>,
    /// `None` while this node knows no voter set (a new cluster, or a
    /// wiped node that has not caught up).
    pub voter: Option<bool>,
    /// The cluster's id (see `voters`); `None` before a voter set names one.
    pub cluster_id: Option<String>,
    /// Verifications of this node's Merkle root that matched the leader's,
    /// and snapshots it installed, since it started.
    pub verified: u64,
    /// Verifications whose roots differed from the leader's (each repaired
    /// by a snapshot of the differing buckets), since it started.
    pub mismatches: u64,
    pub snapshots: u64,
    /// The last snapshot this node installed as a follower.
    pub last_sync: Option<SyncRecord>,
    /// When this node last heard from the leader, on the replica's clock
    /// (see [`crate::replica::Replica::since_leader_contact`]).
    #[serde(skip)]
    pub leader_heard_at: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRecord {
    /// On this node's clock (time since its origin), in milliseconds.
    pub at_ms: u64,
    pub revision: u64,
    pub buckets: usize,
    pub paths: usize,
}

impl<L: LogStore> ReplicaCore<L> {
    pub fn status(&self, now: Duration) -> ReplicaStatus {
        let leader = self.election.leader(now);
        let role = self.election.role();
        ReplicaStatus {
            role: match role {
                Role::Leader => "leader",
                Role::Candidate => "candidate",
                Role::Follower => "follower",
            }
            .into(),
            is_leader: role == Role::Leader && self.leading.is_some(),
            leader_id: leader.map(|(id, _)| id.to_string()),
            epoch: leader.map_or(0, |(_, e)| e),
            promised_epoch: self.election.promised(),
            leader_healthy: self.read_until(now).is_some_and(|u| now < u),
            replication_set: self
                .leading
                .as_ref()
                .map(|l| {
                    l.set
                        .followers()
                        .into_iter()
                        .filter(|f| f.in_set)
                        .map(|f| (f.id, f.received))
                        .collect()
                })
                .unwrap_or_default(),
            behind: self.needs_snapshot,
            replicas_mismatch: self.election.replicas_mismatch(),
            replicas_conflicts: self.election.replicas_conflicts().clone(),
            log_start: self.log.start().revision,
            log_last: self.log.last().revision,
            commit: self.commit,
            applied: self.store.revision(),
            pending: self.pending.lock().len(),
            disk_error: self.disk_error.clone(),
            voters: self
                .voters()
                .map(|v| v.iter().cloned().collect())
                .unwrap_or_default(),
            voter: self.voters().map(|v| v.contains(&self.me)),
            cluster_id: Some(self.cluster_id.clone()).filter(|c| !c.is_empty()),
            verified: self.verified,
            mismatches: self.mismatches,
            snapshots: self.snapshots,
            last_sync: self.last_sync.clone(),
            leader_heard_at: self.election.leader_heard_at(now),
        }
    }
}
