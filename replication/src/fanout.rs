//! The leader's replication set, sans IO: who must have a batch before its
//! writers are answered (DESIGN.md, "Writes" step 4, and "Reads").
//!
//! A batch is acknowledged when the leader and every follower in the set
//! have it durably, and the set (leader included) holds a quorum. A follower
//! leaves the set only once its read lease has surely run out: it has not
//! acknowledged anything for L·(1 + drift), so it stopped serving reads
//! before any write it lacks could be acknowledged without it.
//!
//! Being in the set is not yet leave to serve reads. A new leader's set
//! starts with every live follower, and one of those may still lack writes
//! an earlier leader acknowledged. A follower is *confirmed* (may read) once
//! it acknowledged a diff of this epoch that reaches the leader's log end at
//! election, or was admitted after catching up: from then on every write
//! released waited for it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::election::Position;
use crate::record::Change;

/// One follower as the leader sees it.
#[derive(Debug, Clone)]
struct Follower {
    /// Highest revision the follower has durably applied (from its acks).
    acked: u64,
    last_heard: Duration,
    /// Holds every write any leader acknowledged (see the module docs).
    confirmed: bool,
}

/// Answers waiting for acknowledgements, by the revision they depend on.
pub struct ReplicationSet<A> {
    quorum: usize,
    /// How long after its last word a follower's read lease has surely run
    /// out: L·(1 + drift).
    eviction: Duration,
    /// The leader's log end (revision) when it took over: a follower whose
    /// acknowledgement reaches it holds everything acknowledged before.
    base: u64,
    followers: BTreeMap<String, Follower>,
    waiting: VecDeque<(u64, A)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerView {
    pub id: String,
    pub acked: u64,
}

impl<A> ReplicationSet<A> {
    /// A new leader's set: every follower membership reports alive, none
    /// known to hold anything yet, none confirmed. One that cannot keep up
    /// (a gap) stops acknowledging and leaves through eviction.
    pub fn new(
        quorum: usize,
        eviction: Duration,
        base: u64,
        followers: impl IntoIterator<Item = String>,
        now: Duration,
    ) -> Self {
        Self {
            quorum,
            eviction,
            base,
            followers: followers
                .into_iter()
                .map(|id| {
                    (
                        id,
                        Follower {
                            acked: 0,
                            last_heard: now,
                            confirmed: false,
                        },
                    )
                })
                .collect(),
            waiting: VecDeque::new(),
        }
    }

    pub fn followers(&self) -> Vec<FollowerView> {
        self.followers
            .iter()
            .map(|(id, f)| FollowerView {
                id: id.clone(),
                acked: f.acked,
            })
            .collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.followers.contains_key(id)
    }

    /// In the set and confirmed: the follower may serve local reads.
    pub fn may_read(&self, id: &str) -> bool {
        self.followers.get(id).is_some_and(|f| f.confirmed)
    }

    /// Members not confirmed yet: the leader probes them so that an idle
    /// cluster does not leave them unconfirmed until the next write.
    pub fn unconfirmed(&self) -> Vec<String> {
        self.followers
            .iter()
            .filter(|(_, f)| !f.confirmed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The leader plus its followers reach a quorum.
    pub fn has_quorum(&self) -> bool {
        self.followers.len() + 1 >= self.quorum
    }

    /// Answers to give once every member has `revision`.
    pub fn wait(&mut self, revision: u64, answers: A) {
        self.waiting.push_back((revision, answers));
    }

    /// A follower applied through `revision` (a diff of this epoch, so its
    /// log matches the leader's that far); anything else it says only
    /// proves it is alive.
    pub fn heard(&mut self, id: &str, revision: Option<u64>, now: Duration) {
        if let Some(f) = self.followers.get_mut(id) {
            f.last_heard = now;
            if let Some(r) = revision {
                f.acked = f.acked.max(r);
                f.confirmed |= r >= self.base;
            }
        }
    }

    /// A caught-up follower (re)joins the set.
    pub fn admit(&mut self, id: &str, revision: u64, now: Duration) {
        self.followers.insert(
            id.to_string(),
            Follower {
                acked: revision,
                last_heard: now,
                confirmed: true,
            },
        );
    }

    /// Drops followers silent for longer than the eviction time; returns who
    /// left.
    pub fn evict_silent(&mut self, now: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .followers
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.last_heard) > self.eviction)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.followers.remove(id);
        }
        gone
    }

    /// Answers whose revision every member of a quorate set now has.
    pub fn released(&mut self) -> Vec<A> {
        if !self.has_quorum() {
            return Vec::new();
        }
        let floor = self
            .followers
            .values()
            .map(|f| f.acked)
            .min()
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|(r, _)| *r <= floor) {
            if let Some((_, a)) = self.waiting.pop_front() {
                out.push(a);
            }
        }
        out
    }

    /// Everything still waiting, for failing when leadership ends.
    pub fn drain(&mut self) -> Vec<A> {
        self.waiting.drain(..).map(|(_, a)| a).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_millis(1100);

    fn set() -> ReplicationSet<&'static str> {
        ReplicationSet::new(2, L, 4, ["b".to_string(), "c".to_string()], Duration::ZERO)
    }

    #[test]
    fn a_follower_reads_only_once_it_reached_the_log_end_at_election() {
        let mut s = set();
        assert!(!s.may_read("b") && !s.may_read("c"));
        assert_eq!(s.unconfirmed(), vec!["b".to_string(), "c".to_string()]);
        s.heard("b", None, Duration::ZERO);
        s.heard("b", Some(3), Duration::ZERO);
        assert!(!s.may_read("b"), "revision 4 may be an acknowledged write");
        s.heard("b", Some(4), Duration::ZERO);
        assert!(s.may_read("b"));
        s.admit("d", 9, Duration::ZERO);
        assert!(s.may_read("d"), "admitted after catching up");
        assert_eq!(s.unconfirmed(), vec!["c".to_string()]);
    }

    #[test]
    fn answers_wait_for_every_follower_in_the_set() {
        let mut s = set();
        s.wait(5, "w5");
        s.wait(7, "w7");
        s.heard("b", Some(7), Duration::ZERO);
        assert!(s.released().is_empty(), "c has nothing yet");
        s.heard("c", Some(5), Duration::ZERO);
        assert_eq!(s.released(), vec!["w5"]);
        s.heard("c", Some(9), Duration::ZERO);
        assert_eq!(s.released(), vec!["w7"]);
    }

    #[test]
    fn a_silent_follower_leaves_only_after_its_lease_surely_ran_out() {
        let mut s = set();
        s.wait(3, "w3");
        s.heard("b", Some(3), L);
        assert!(s.evict_silent(L).is_empty());
        assert_eq!(
            s.evict_silent(L + Duration::from_millis(1)),
            vec!["c".to_string()]
        );
        assert_eq!(s.released(), vec!["w3"], "b and the leader are a quorum");
    }

    #[test]
    fn below_quorum_nothing_is_released() {
        let mut s = set();
        s.wait(1, "w1");
        let later = L * 3;
        s.heard("b", Some(1), Duration::ZERO);
        assert_eq!(s.evict_silent(later).len(), 2);
        assert!(!s.has_quorum());
        assert!(s.released().is_empty());
        assert_eq!(s.drain(), vec!["w1"]);
    }
}

/// The leader's most recent changes, so a follower that missed a few diffs
/// catches up from memory instead of a full Merkle sync.
pub struct RecentChanges {
    /// The log position just before `changes[0]`.
    anchor: Position,
    changes: VecDeque<Change>,
    capacity: usize,
}

impl RecentChanges {
    /// Starts empty at `position` (the leader's log end when it took over).
    pub fn new(position: Position, capacity: usize) -> Self {
        Self {
            anchor: position,
            changes: VecDeque::new(),
            capacity,
        }
    }

    /// The log position after the last change pushed.
    pub fn end(&self) -> Position {
        self.changes.back().map_or(self.anchor, |c| Position {
            epoch: c.epoch,
            revision: c.revision,
        })
    }

    pub fn push(&mut self, changes: &[Change]) {
        for change in changes {
            self.changes.push_back(change.clone());
            while self.changes.len() > self.capacity {
                if let Some(old) = self.changes.pop_front() {
                    self.anchor = Position {
                        epoch: old.epoch,
                        revision: old.revision,
                    };
                }
            }
        }
    }

    /// Everything after `from`, if `from` is a point of this log that the
    /// buffer still reaches; `None` means the follower must sync.
    pub fn after(&self, from: Position) -> Option<Vec<Change>> {
        if from == self.anchor {
            return Some(self.changes.iter().cloned().collect());
        }
        let at = self
            .changes
            .iter()
            .position(|c| c.revision == from.revision && c.epoch == from.epoch)?;
        Some(self.changes.iter().skip(at + 1).cloned().collect())
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;
    use crate::record::ChangeKind;

    fn change(epoch: u64, revision: u64) -> Change {
        Change {
            revision,
            epoch,
            path: format!("p{revision}"),
            version: 1,
            created_at_ms: 0,
            kind: ChangeKind::Delete,
            request_id: None,
        }
    }

    #[test]
    fn catch_up_comes_from_memory_only_for_points_of_this_log() {
        let start = Position {
            epoch: 1,
            revision: 10,
        };
        let mut recent = RecentChanges::new(start, 3);
        recent.push(&[change(2, 11), change(2, 12)]);
        assert_eq!(recent.after(start).map(|c| c.len()), Some(2));
        assert_eq!(
            recent
                .after(Position {
                    epoch: 2,
                    revision: 11
                })
                .map(|c| c.len()),
            Some(1)
        );
        assert_eq!(
            recent
                .after(Position {
                    epoch: 2,
                    revision: 12
                })
                .map(|c| c.len()),
            Some(0)
        );
        // Same revision, other epoch: a deposed leader's write. Sync instead.
        assert_eq!(
            recent.after(Position {
                epoch: 1,
                revision: 11
            }),
            None
        );
        recent.push(&[change(2, 13), change(2, 14)]);
        assert_eq!(recent.after(start), None, "fell out of the buffer");
        assert_eq!(
            recent
                .after(Position {
                    epoch: 2,
                    revision: 11
                })
                .map(|c| c.len()),
            Some(3)
        );
    }
}
