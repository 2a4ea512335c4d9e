//! Who votes (DESIGN.md, "Who votes"): the voter set is replicated state,
//! the record `{prefix}/voters` = `{"voters": [node ids]}`, changed only
//! through the log, one member at a time.
//!
//! Invariants kept here:
//! - A node's voter set is the latest record in its log, committed or not
//!   (what Raft calls using the configuration as soon as it is appended):
//!   recomputed from the state and the log's suffix whenever the log moves
//!   back (truncation, snapshot install, start), and taken from each
//!   appended batch otherwise.
//! - A leader changes the set only when no change is in flight (the last
//!   record is committed), and by one member: any majority of the old set
//!   and any majority of the new one share a member, so two leaders can
//!   never be elected by disjoint quorums across a change.
//! - The first leader of a new cluster (its log holds no record) writes the
//!   voters that elected it and the other live members. While the set is
//!   smaller than `replicas` it
//!   promotes a confirmed learner; a voter unheard of by membership for
//!   `dead_voter_timeout` is removed (then replaced by the same rule), but
//!   never below a majority of `replicas`, and only if a majority of the
//!   set without it is alive (else the change could never commit).
//! - A wiped data directory boots as a new node id, so it is a learner:
//!   its grants do not count, and it never votes on what it forgot.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::core::ReplicaCore;
use crate::format::Format;
use crate::log::LogStore;
use crate::path::ConfigPath;
use crate::quorum::Quorum;
use crate::record::{Change, ChangeKind, Meta, Op, SharedChange};

#[derive(Serialize, Deserialize)]
struct Record {
    voters: BTreeSet<String>,
    /// The cluster's id: chosen by a new cluster's first leader (and by a
    /// restore, which starts a new cluster), carried by every later set.
    /// Replica streams between nodes that know different ids are refused
    /// (`peers`), so a restored copy and the cluster it came from never
    /// mix, even under one DNS name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    cluster: String,
}

/// A voter-set record's content; `None` for anything else (a delete).
fn decode(change: &Change) -> Option<Record> {
    match &change.kind {
        ChangeKind::Put { data, .. } => serde_json::from_slice::<Record>(data).ok(),
        ChangeKind::Delete => None,
    }
}

impl Record {
    fn cluster(self) -> Option<String> {
        Some(self.cluster).filter(|c| !c.is_empty())
    }
}

/// The voter set a record holds; `None` for anything else (a delete).
pub fn parse(change: &Change) -> Option<BTreeSet<String>> {
    decode(change).map(|r| r.voters)
}

/// The cluster id a voter-set record carries, if any.
pub fn parse_cluster(change: &Change) -> Option<String> {
    decode(change).and_then(Record::cluster)
}

pub(crate) fn record(voters: &BTreeSet<String>, cluster: &str) -> Vec<u8> {
    serde_json::to_vec(&Record {
        voters: voters.clone(),
        cluster: cluster.to_string(),
    })
    .unwrap_or_default()
}

impl<L: LogStore> ReplicaCore<L> {
    /// Recomputes the voter-set records from the state and the log above
    /// it (after the log moved back, and at start).
    pub(super) fn load_voters(&mut self) {
        let path = self.config.voters_path.clone();
        let mut records = Vec::new();
        let mut cluster = None;
        // Read before the state: an apply in flight may move the state on
        // meanwhile, and the log is read from here, skipping what the
        // state's record already covers.
        let from = self.store.revision() + 1;
        let mut in_state = 0;
        match self.store.get(&path, None) {
            Ok(Some(change)) => {
                in_state = change.revision;
                let record = decode(&change);
                records.push((change.revision, record.as_ref().map(|r| r.voters.clone())));
                cluster = record.and_then(Record::cluster);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the voter set; keeping the one known");
                return;
            }
        }
        let to = self.log.last().revision;
        if from <= to {
            match self.log.read(from, to, usize::MAX) {
                Ok(changes) => {
                    for c in changes
                        .iter()
                        .filter(|c| c.path == path && c.revision > in_state)
                    {
                        let record = decode(c);
                        records.push((c.revision, record.as_ref().map(|r| r.voters.clone())));
                        cluster = record.and_then(Record::cluster).or(cluster);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the log for the voter set; keeping the one known");
                    return;
                }
            }
        }
        self.voter_records = records;
        self.cluster_id = cluster.unwrap_or_default();
        self.publish_voters();
    }

    /// Takes the voter-set records of a batch just appended to the log.
    pub(super) fn voters_appended(&mut self, changes: &[SharedChange]) {
        let path = &self.config.voters_path;
        let mut found = false;
        for change in changes.iter().filter(|c| &c.path == path) {
            let record = decode(change);
            let voters = record.as_ref().map(|r| r.voters.clone());
            tracing::info!(?voters, revision = change.revision, "voter set appended");
            self.voter_records.push((change.revision, voters));
            if let Some(cluster) = record.and_then(Record::cluster) {
                self.cluster_id = cluster;
            }
            found = true;
        }
        if found {
            self.publish_voters();
        }
    }

    /// The quorum rule of this node's log: the latest set at or below the
    /// commit index this node knows, and the latest above it (joint).
    pub(super) fn quorum_rule(&self) -> Quorum {
        let committed = self
            .voter_records
            .iter()
            .rev()
            .find(|(r, _)| *r <= self.commit)
            .and_then(|(_, v)| v.clone());
        let pending = self
            .voter_records
            .last()
            .filter(|(r, _)| *r > self.commit)
            .and_then(|(_, v)| v.clone());
        Quorum::new(committed, pending, self.config.replicas)
    }

    /// The id of the cluster this node's log belongs to (empty: none yet).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The newest voter set in this node's log, committed or not.
    pub fn voters(&self) -> Option<&BTreeSet<String>> {
        self.voter_records.last().and_then(|(_, v)| v.as_ref())
    }

    /// The revision of the newest voter-set record (0: none): the
    /// voter-set id a lease request carries.
    fn voters_revision(&self) -> u64 {
        self.voter_records.last().map_or(0, |(r, _)| *r)
    }

    /// Tells the election and the leader's set who must agree. Called
    /// when the records change and at every tick (the commit index moves
    /// in between; a rule older than it is only stricter).
    pub(super) fn publish_voters(&mut self) {
        let rule = self.quorum_rule();
        self.election
            .set_quorum(rule.clone(), self.voters_revision());
        let me = self.me.clone();
        if let Some(leading) = self.leading.as_mut() {
            leading.set.set_quorum(rule, &me);
        }
    }

    /// Membership changed: notes since when each voter has been gone.
    pub(super) fn voters_alive(&mut self, now: Duration) {
        let alive = self.alive.clone();
        let me = self.me.clone();
        self.dead_since
            .retain(|id, _| !alive.contains(id) && *id != me);
        if let Some(voters) = self.voters().cloned() {
            for id in voters {
                if id != me && !alive.contains(&id) {
                    self.dead_since.entry(id).or_insert(now);
                }
            }
        }
        self.publish_voters();
    }

    /// A new leader whose log holds no voter set (a new cluster: its log
    /// is empty, since every cluster's first entry is its first set) writes
    /// one as the epoch's first entry: the voters that elected it and every
    /// other live member (at most `replicas` in all, or nobody would have
    /// been elected), so that a failure right after the first election
    /// finds a full set. Any first set is safe: it replaces the bootstrap
    /// rule jointly ([`Quorum`]). Being first, it is in every non-empty
    /// log, so only nodes with empty logs elect by the bootstrap rule, and
    /// a wiped node (empty) cannot help a node that holds data win by it.
    pub(super) fn first_voters(&mut self, epoch: u64, now: Duration) {
        if self.voters().is_some() {
            return;
        }
        let mut first = self.election.won_with().clone();
        first.extend(self.alive.iter().cloned());
        first.insert(self.me.clone());
        self.ensure_cluster_id();
        tracing::info!(voters = ?first, cluster = %self.cluster_id, "a new cluster: writing its first voter set");
        self.propose_voters(epoch, first, now);
    }

    /// Leader: the one voter-set change due now, if any (module doc).
    pub(super) fn manage_voters(&mut self, epoch: u64, now: Duration) {
        // One change at a time, and only once this leader's epoch has
        // committed an entry (a leader that changed the set before that
        // could overlap a change of an earlier leader it does not know).
        let epoch_committed = self
            .leading
            .as_ref()
            .and_then(|l| l.epoch_start)
            .is_some_and(|start| start <= self.commit);
        if self.voters_revision() > self.commit || !epoch_committed {
            return;
        }
        let next = match self.voters().cloned() {
            // The first set is written as the epoch starts (`first_voters`).
            None => None,
            Some(voters) => {
                // A change is proposed only if a majority of the new set is
                // alive: it commits by that majority, and a set whose
                // majority includes a node that is gone for good (removing
                // one dead voter of three while another is wiped leaves a
                // set of two that needs the wiped one) never commits again.
                let live_majority = |set: &BTreeSet<String>| {
                    set.iter()
                        .filter(|id| **id == self.me || self.alive.contains(*id))
                        .count()
                        > set.len() / 2
                };
                let without = |id: &String| {
                    let mut next = voters.clone();
                    next.remove(id);
                    next
                };
                let dead = voters.iter().find(|id| {
                    **id != self.me
                        && self.dead_since.get(*id).is_some_and(|t| {
                            now.saturating_sub(*t) >= self.config.dead_voter_timeout
                        })
                        && live_majority(&without(id))
                });
                // Never below a majority of `replicas`: a set of 2 of 3
                // that lost another voter has lost a quorum, and shrinking
                // it to one would let that one acknowledge alone.
                let keep = self.config.replicas / 2 + 1;
                match dead {
                    Some(dead) if voters.len() > keep => {
                        tracing::warn!(voter = %dead, "removing a voter down longer than dead_voter_timeout");
                        Some(without(dead))
                    }
                    _ if voters.len() < self.config.replicas => {
                        let learner = self.leading.as_ref().and_then(|l| {
                            l.set.followers().into_iter().map(|f| f.id).find(|id| {
                                !voters.contains(id)
                                    && self.alive.contains(id)
                                    && l.set.caught_up(id, self.commit)
                            })
                        });
                        learner.map(|id| {
                            tracing::info!(learner = %id, "promoting a caught-up learner to voter");
                            let mut next = voters.clone();
                            next.insert(id);
                            next
                        })
                    }
                    _ => None,
                }
            }
        };
        // A set written before sets carried a cluster id: the same set
        // again, now with one (no member changes, so any quorum of the old
        // set is one of the new).
        let next = next.or_else(|| {
            let voters = self.voters()?.clone();
            if !self.ensure_cluster_id() {
                return None;
            }
            tracing::info!(cluster = %self.cluster_id, "the voter set gets a cluster id");
            Some(voters)
        });
        if let Some(next) = next.filter(|n| !n.is_empty()) {
            self.propose_voters(epoch, next, now);
        }
    }

    /// Gives this node's log a cluster id if it has none (from the core's
    /// seeded randomness): true when it made one.
    fn ensure_cluster_id(&mut self) -> bool {
        if !self.cluster_id.is_empty() {
            return false;
        }
        self.cluster_id = format!("{:016x}{:016x}", self.dice.next_u64(), self.dice.next_u64());
        true
    }

    fn propose_voters(&mut self, epoch: u64, next: BTreeSet<String>, now: Duration) {
        let Ok(path) = ConfigPath::new(self.config.voters_path.clone()) else {
            tracing::error!(path = %self.config.voters_path, "the voter set's path is not a valid path");
            return;
        };
        let meta = Meta {
            format: Format::Json,
            description: "pika voter set".into(),
            flags: 0,
        };
        let op = match Op::put(path, meta, record(&next, &self.cluster_id), None) {
            Ok(op) => op,
            Err(e) => {
                tracing::error!(error = %e, "encoding the voter set");
                return;
            }
        };
        if let Err(e) = self.propose(epoch, &[op], 0, now) {
            tracing::warn!(error = %e, "proposing a voter-set change");
        }
    }
}
