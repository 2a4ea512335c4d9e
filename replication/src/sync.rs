//! Merkle anti-entropy, sans IO (DESIGN.md, "Anti-entropy").
//!
//! The follower compares its tree with the leader's from the root down,
//! asking only for the children of nodes that differ, then for the contents
//! of the differing buckets, all answered from one leader snapshot at
//! revision S. Installing them makes the follower equal to the leader at S.
//! The cost is in what differs, not in what is stored.

use serde::{Deserialize, Serialize};

use crate::merkle::{Digest, FANOUT, MerkleBuckets};
use crate::store::{PathState, Snapshot, StoreError};

/// Tree levels: 0 is the root, 3 the 4096 buckets.
pub const LEAF_LEVEL: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncAsk {
    Start,
    /// Digests of these nodes of `level`.
    Level {
        level: u32,
        nodes: Vec<u32>,
    },
    Buckets(Vec<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncAnswer {
    Level {
        level: u32,
        digests: Vec<(u32, Digest)>,
    },
    Buckets {
        buckets: Vec<u16>,
        paths: Vec<PathState>,
    },
    Refused(String),
}

/// What the follower does next.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncStep {
    Ask(SyncAsk),
    /// Install these buckets and move to the snapshot's position.
    Install {
        buckets: Vec<u16>,
        paths: Vec<PathState>,
        revision: u64,
        epoch: u64,
    },
    /// Nothing differs: the follower already equals the snapshot.
    InSync {
        revision: u64,
        epoch: u64,
    },
    Failed(String),
}

/// The follower's side of one session.
pub struct SyncSession {
    local: MerkleBuckets,
}

impl SyncSession {
    /// `local` is the follower's own tree; the first ask is [`SyncAsk::Start`].
    pub fn new(local: MerkleBuckets) -> SyncSession {
        SyncSession { local }
    }

    pub fn on_answer(&mut self, revision: u64, epoch: u64, answer: SyncAnswer) -> SyncStep {
        match answer {
            SyncAnswer::Refused(why) => SyncStep::Failed(why),
            SyncAnswer::Buckets { buckets, paths } => SyncStep::Install {
                buckets,
                paths,
                revision,
                epoch,
            },
            SyncAnswer::Level { level, digests } => {
                let mine = self.local.level(level);
                let differing: Vec<u32> = digests
                    .into_iter()
                    .filter(|(i, d)| mine.get(*i as usize) != Some(d))
                    .map(|(i, _)| i)
                    .collect();
                if differing.is_empty() {
                    SyncStep::InSync { revision, epoch }
                } else if level >= LEAF_LEVEL {
                    SyncStep::Ask(SyncAsk::Buckets(
                        differing
                            .into_iter()
                            .filter_map(|i| u16::try_from(i).ok())
                            .collect(),
                    ))
                } else {
                    let fanout = FANOUT as u32;
                    SyncStep::Ask(SyncAsk::Level {
                        level: level + 1,
                        nodes: differing
                            .into_iter()
                            .flat_map(|i| i * fanout..(i + 1) * fanout)
                            .collect(),
                    })
                }
            }
        }
    }
}

/// The leader's answer to one ask, from the session's snapshot.
pub fn answer(snapshot: &Snapshot, ask: &SyncAsk) -> Result<SyncAnswer, StoreError> {
    Ok(match ask {
        SyncAsk::Start => SyncAnswer::Level {
            level: 0,
            digests: vec![(0, snapshot.merkle().root())],
        },
        SyncAsk::Level { level, nodes } => {
            let all = snapshot.merkle().level((*level).min(LEAF_LEVEL));
            SyncAnswer::Level {
                level: *level,
                digests: nodes
                    .iter()
                    .filter_map(|i| all.get(*i as usize).map(|d| (*i, *d)))
                    .collect(),
            }
        }
        SyncAsk::Buckets(buckets) => SyncAnswer::Buckets {
            buckets: buckets.clone(),
            paths: snapshot.bucket_contents(buckets)?,
        },
    })
}
