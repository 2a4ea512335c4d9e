//! Snapshot install by Merkle descent, sans IO (DESIGN.md, "Catch-up,
//! snapshots and verification").
//!
//! The follower compares its tree with the leader's from the root down,
//! asking only for the children of nodes that differ, then for the contents
//! of the differing buckets, all answered from one leader snapshot at
//! revision S. Bucket contents come in answers of bounded size, which the
//! follower stages on disk as they come (the session holds none of them);
//! once all are in, installing them in one transaction makes the follower
//! equal to the leader at S. The cost is in what differs, not in what is
//! stored.

use serde::{Deserialize, Serialize};

use crate::merkle::{Digest, FANOUT, MerkleBuckets};
use crate::record::Applied;
use crate::store::{PathState, REQUEST_WINDOW, RequestCursor, Snapshot, StoreError};

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
    /// The contents of these buckets; `since`: only what changed after
    /// that revision (the follower holds the rest), `None`: everything.
    Buckets {
        buckets: Vec<u16>,
        since: Option<u64>,
    },
    /// The request ids applied after revision `after` inside the window at
    /// the snapshot, from just after `from`: once the buckets are in. The
    /// versions that travel carry their own, but a path changed more than
    /// `storage.history` times inside the window left the older ones out.
    Requests {
        after: u64,
        from: Option<RequestCursor>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncAnswer {
    Level {
        level: u32,
        digests: Vec<(u32, Digest)>,
    },
    /// The contents of `buckets`, a prefix of those asked for that fits
    /// the answer's byte budget (at least one).
    Buckets {
        buckets: Vec<u16>,
        paths: Vec<PathState>,
    },
    /// Request ids that fit the answer's byte budget, and where to ask on
    /// from (`None`: that was all of them).
    Requests {
        ids: Vec<(String, Applied)>,
        next: Option<RequestCursor>,
    },
    Refused(String),
}

/// What the follower does next.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncStep {
    Ask(SyncAsk),
    /// Keep these paths for the install (`Store::stage`), then ask `next`.
    Stage {
        paths: Vec<PathState>,
        next: SyncAsk,
    },
    /// Install these buckets, with the paths staged for them, and move to
    /// the snapshot's position.
    Install {
        buckets: Vec<u16>,
        /// Request ids beside the paths' versions (see [`SyncAsk::Requests`]).
        requests: Vec<(String, Applied)>,
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
    /// Catching up from this revision (ask only what changed after it), or
    /// repairing (ask for everything in the differing buckets).
    since: Option<u64>,
    /// The snapshot every answer must come from.
    at: Option<(u64, u64)>,
    /// Differing buckets not received yet, and those received (their
    /// paths are staged).
    todo: Vec<u16>,
    buckets: Vec<u16>,
    requests: Vec<(String, Applied)>,
}

impl SyncSession {
    /// `local` is the follower's own tree; the first ask is [`SyncAsk::Start`].
    /// `since`: the follower's state is a prefix of the leader's at that
    /// revision (it is behind, not damaged), so only later changes move.
    pub fn new(local: MerkleBuckets, since: Option<u64>) -> SyncSession {
        SyncSession {
            local,
            since,
            at: None,
            todo: Vec::new(),
            buckets: Vec::new(),
            requests: Vec::new(),
        }
    }

    pub fn on_answer(&mut self, revision: u64, epoch: u64, answer: SyncAnswer) -> SyncStep {
        if let SyncAnswer::Refused(why) = answer {
            return SyncStep::Failed(why);
        }
        if *self.at.get_or_insert((revision, epoch)) != (revision, epoch) {
            return SyncStep::Failed("answers from two snapshots".into());
        }
        match answer {
            SyncAnswer::Refused(why) => SyncStep::Failed(why),
            SyncAnswer::Buckets { buckets, paths } => {
                // Only buckets asked for and not received yet, and only
                // their paths, each once: the install clears exactly the
                // buckets it names and sums its paths' leaves into their
                // digests (a path twice would cancel itself out).
                let fresh: Vec<u16> = buckets
                    .into_iter()
                    .filter(|b| self.todo.contains(b) && !self.buckets.contains(b))
                    .collect();
                if fresh.is_empty() {
                    return SyncStep::Failed("a bucket answer with no bucket asked for".into());
                }
                self.todo.retain(|b| !fresh.contains(b));
                // A path is in one bucket and a bucket is taken once, so
                // a path can come twice only within one answer.
                let mut seen = std::collections::HashSet::new();
                let taken: std::collections::HashSet<u16> = fresh.iter().copied().collect();
                let paths: Vec<PathState> = paths
                    .into_iter()
                    .filter(|state| {
                        taken.contains(&crate::merkle::bucket_of(&state.path))
                            && seen.insert(state.path.clone())
                    })
                    .collect();
                self.buckets.extend(fresh);
                let next = if self.todo.is_empty() {
                    self.ask_requests(revision, None)
                } else {
                    self.ask_buckets()
                };
                SyncStep::Stage { paths, next }
            }
            SyncAnswer::Requests { ids, next } => {
                if self.buckets.is_empty() || !self.todo.is_empty() {
                    return SyncStep::Failed("request ids before the buckets".into());
                }
                self.requests.extend(ids);
                match next {
                    Some(from) => SyncStep::Ask(self.ask_requests(revision, Some(from))),
                    None => SyncStep::Install {
                        buckets: std::mem::take(&mut self.buckets),
                        requests: std::mem::take(&mut self.requests),
                        revision,
                        epoch,
                    },
                }
            }
            SyncAnswer::Level { level, digests } => {
                let mine = self.local.level(level);
                // Nodes the tree has at that level only (an index past it
                // would overflow the next level's numbers).
                let differing: Vec<u32> = digests
                    .into_iter()
                    .filter(|(i, d)| mine.get(*i as usize).is_some_and(|m| m != d))
                    .map(|(i, _)| i)
                    .collect();
                if differing.is_empty() {
                    SyncStep::InSync { revision, epoch }
                } else if level >= LEAF_LEVEL {
                    self.todo = differing
                        .into_iter()
                        .filter_map(|i| u16::try_from(i).ok())
                        .collect();
                    SyncStep::Ask(self.ask_buckets())
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

impl SyncSession {
    fn ask_buckets(&self) -> SyncAsk {
        SyncAsk::Buckets {
            buckets: self.todo.clone(),
            since: self.since,
        }
    }

    /// The ids this node lacks: those after its state when it is behind
    /// (it holds the ones before), all those inside the window at the
    /// snapshot (`revision`) when it repairs.
    fn ask_requests(&self, revision: u64, from: Option<RequestCursor>) -> SyncAsk {
        let window_start = revision.saturating_sub(REQUEST_WINDOW + 1);
        SyncAsk::Requests {
            after: self.since.unwrap_or(0).max(window_start),
            from,
        }
    }

    /// What the install covers: see [`crate::Store::install`].
    pub fn since(&self) -> Option<u64> {
        self.since
    }
}

/// The leader's answer to one ask, from the session's snapshot; bucket
/// contents stop after `max_bytes` (at least one bucket is sent). A bucket
/// larger than `limit` on its own (what one frame may carry) goes with
/// fewer versions of its paths' histories, the oldest left out and never a
/// path's latest: the follower keeps fewer of them, as after an install
/// from a leader whose history is shorter (their request ids still come,
/// [`SyncAsk::Requests`]). Sent whole, such an answer broke the stream at
/// every try, and the follower never got back.
pub fn answer(
    snapshot: &Snapshot,
    ask: &SyncAsk,
    max_bytes: usize,
    limit: usize,
) -> Result<SyncAnswer, StoreError> {
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
        SyncAsk::Buckets {
            buckets: asked,
            since,
        } => {
            let (mut buckets, mut paths, mut bytes) = (Vec::new(), Vec::new(), 0usize);
            for &bucket in asked {
                let mut contents = snapshot.bucket_contents(&[bucket], *since)?;
                let mut size: usize = contents.iter().map(PathState::size).sum();
                if !buckets.is_empty() && bytes + size > max_bytes {
                    break;
                }
                if size > limit {
                    size = leave_out_oldest(&mut contents, limit);
                }
                bytes += size;
                buckets.push(bucket);
                paths.extend(contents);
            }
            SyncAnswer::Buckets { buckets, paths }
        }
        SyncAsk::Requests { after, from } => {
            let (ids, next) = snapshot.request_ids(*after, from.as_ref(), max_bytes)?;
            SyncAnswer::Requests { ids, next }
        }
    })
}

/// Leaves the oldest versions out of `paths`' histories, never a path's
/// latest, until they fit `limit` or only the latest are left; returns
/// their size then.
fn leave_out_oldest(paths: &mut [PathState], limit: usize) -> usize {
    let mut size: usize = paths.iter().map(PathState::size).sum();
    let mut oldest_first: Vec<(u64, usize, u64)> = paths
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.versions
                .iter()
                .filter(|c| c.version != p.entry.version)
                .map(move |c| (c.revision, i, c.version))
        })
        .collect();
    oldest_first.sort_unstable();
    for (_, i, version) in oldest_first {
        if size <= limit {
            break;
        }
        let versions = &mut paths[i].versions;
        if let Some(k) = versions.iter().position(|c| c.version == version) {
            size -= crate::log::change_size(&versions.remove(k));
        }
    }
    size
}
