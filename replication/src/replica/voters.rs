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
//!   voters that elected it. While the set is smaller than `replicas` it
//!   promotes a confirmed learner; a voter unheard of by membership for
//!   `dead_voter_timeout` is removed (then replaced by the same rule).
//! - A wiped data directory boots as a new node id, so it is a learner:
//!   its grants do not count, and it never votes on what it forgot.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::core::ReplicaCore;
use crate::format::Format;
use crate::log::LogStore;
use crate::path::ConfigPath;
use crate::record::{Change, ChangeKind, Meta, Op};

#[derive(Serialize, Deserialize)]
struct Record {
    voters: BTreeSet<String>,
}

/// The voter set a record holds; `None` for anything else (a delete).
pub fn parse(change: &Change) -> Option<BTreeSet<String>> {
    match &change.kind {
        ChangeKind::Put { data, .. } => serde_json::from_slice::<Record>(data)
            .ok()
            .map(|r| r.voters),
        ChangeKind::Delete => None,
    }
}

fn record(voters: &BTreeSet<String>) -> Vec<u8> {
    serde_json::to_vec(&Record {
        voters: voters.clone(),
    })
    .unwrap_or_default()
}

impl<L: LogStore> ReplicaCore<L> {
    /// Recomputes the voter set from the state and the log above it.
    pub(super) fn load_voters(&mut self) {
        let path = self.config.voters_path.clone();
        let (mut voters, mut at) = match self.store.get(&path, None) {
            Ok(Some(change)) => (parse(&change), change.revision),
            Ok(None) => (None, 0),
            Err(e) => {
                tracing::error!(error = %e, "reading the voter set");
                (self.voters.clone(), self.voters_revision)
            }
        };
        let from = self.store.revision() + 1;
        let to = self.log.last().revision;
        if from <= to {
            match self.log.read(from, to, usize::MAX) {
                Ok(changes) => {
                    for change in changes.iter().filter(|c| c.path == path) {
                        voters = parse(change);
                        at = change.revision;
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the log for the voter set"),
            }
        }
        self.voters = voters;
        self.voters_revision = at;
        self.publish_voters();
    }

    /// Takes the voter set from a batch just appended to the log.
    pub(super) fn voters_appended(&mut self, changes: &[Change]) {
        let path = &self.config.voters_path;
        let Some(change) = changes.iter().rev().find(|c| &c.path == path) else {
            return;
        };
        self.voters = parse(change);
        self.voters_revision = change.revision;
        tracing::info!(voters = ?self.voters, revision = change.revision, "voter set");
        self.publish_voters();
    }

    /// Tells the election and the leader's set who votes.
    pub(super) fn publish_voters(&mut self) {
        let live_voters = self.voters.as_ref().map_or(0, |v| {
            v.iter()
                .filter(|id| **id == self.me || self.alive.contains(id))
                .count()
        });
        self.election.set_voters(self.voters.clone(), live_voters);
        let quorum = self.election.quorum();
        if let Some(leading) = self.leading.as_mut() {
            leading.set.set_voters(self.voters.clone(), quorum);
        }
    }

    /// Whether this node is a voter (or there is no voter set yet).
    pub fn is_voter(&self) -> bool {
        self.voters.as_ref().is_none_or(|v| v.contains(&self.me))
    }

    pub fn voters(&self) -> Option<&BTreeSet<String>> {
        self.voters.as_ref()
    }

    /// Membership changed: notes since when each voter has been gone.
    pub(super) fn voters_alive(&mut self, now: Duration) {
        let alive = &self.alive;
        let me = &self.me;
        self.dead_since
            .retain(|id, _| !alive.contains(id) && id != me);
        if let Some(voters) = &self.voters {
            for id in voters {
                if id != me && !alive.contains(id) {
                    self.dead_since.entry(id.clone()).or_insert(now);
                }
            }
        }
        self.publish_voters();
    }

    /// Leader: the one voter-set change due now, if any (module doc).
    pub(super) fn manage_voters(&mut self, epoch: u64, now: Duration) {
        if self.voters_revision > self.commit {
            return; // a change is in flight
        }
        let next = match &self.voters {
            None => Some(self.election.won_with().clone()),
            Some(voters) => {
                let dead = voters.iter().find(|id| {
                    **id != self.me
                        && self.dead_since.get(*id).is_some_and(|t| {
                            now.saturating_sub(*t) >= self.config.dead_voter_timeout
                        })
                });
                match dead {
                    Some(dead) if voters.len() > 1 => {
                        tracing::warn!(voter = %dead, "removing a voter down longer than dead_voter_timeout");
                        let mut next = voters.clone();
                        next.remove(&dead.clone());
                        Some(next)
                    }
                    _ if voters.len() < self.config.replicas => {
                        let learner = self.leading.as_ref().and_then(|l| {
                            l.set.followers().into_iter().map(|f| f.id).find(|id| {
                                !voters.contains(id)
                                    && self.alive.contains(id)
                                    && l.set.may_read(id)
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
        let Some(next) = next.filter(|n| !n.is_empty()) else {
            return;
        };
        let Ok(path) = ConfigPath::new(self.config.voters_path.clone()) else {
            tracing::error!(path = %self.config.voters_path, "the voter set's path is not a valid path");
            return;
        };
        let meta = Meta {
            format: Format::Json,
            description: "pika voter set".into(),
            flags: 0,
        };
        let op = match Op::put(path, meta, record(&next), None) {
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
