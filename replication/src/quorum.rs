//! Who must agree: for a campaign's grants, a lease renewal's acks and a
//! commit's durable copies, the same rule (DESIGN.md, "Who votes").
//!
//! - Before a new cluster has a voter set: `replicas`/2 + 1 of anyone
//!   (the members are assumed to be at most `replicas`; more live members
//!   than that is the `replicas_mismatch` refusal).
//! - With a committed voter set V: a majority of V.
//! - While a newer set V' is in the log and not known committed:
//!   - if V' differs from V by one member, a majority of V' (Raft's
//!     single-server change: any majority of V and any of V' share a
//!     member, so whichever of the two a node goes by, two quorums meet);
//!   - for the first set (V' replacing the bootstrap rule, which differs
//!     from it by more than one member): the bootstrap rule **and** a
//!     majority of V' (joint consensus), until V' is known committed.
//!
//! The leader changes the set one member at a time, only when no change is
//! in flight and only after its epoch committed an entry.

use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quorum {
    committed: Option<BTreeSet<String>>,
    pending: Option<BTreeSet<String>>,
    replicas: usize,
}

fn majority_of(set: &BTreeSet<String>, ids: &BTreeSet<String>) -> bool {
    set.iter().filter(|id| ids.contains(*id)).count() > set.len() / 2
}

impl Quorum {
    /// A new cluster's rule: `replicas`/2 + 1 of anyone.
    pub fn bootstrap(replicas: usize) -> Quorum {
        Quorum {
            committed: None,
            pending: None,
            replicas,
        }
    }

    pub fn new(
        committed: Option<BTreeSet<String>>,
        pending: Option<BTreeSet<String>>,
        replicas: usize,
    ) -> Quorum {
        // A one-member change goes by the new set alone (module doc).
        let one_member = match (&committed, &pending) {
            (Some(c), Some(p)) => c.symmetric_difference(p).count() <= 1,
            _ => false,
        };
        if one_member {
            return Quorum {
                committed: pending,
                pending: None,
                replicas,
            };
        }
        Quorum {
            committed,
            pending,
            replicas,
        }
    }

    /// Whether `ids` (the ones that agreed, self included) are enough.
    pub fn is_met(&self, ids: &BTreeSet<String>) -> bool {
        let base = match &self.committed {
            Some(v) => majority_of(v, ids),
            None => ids.len() > self.replicas / 2,
        };
        base && self.pending.as_ref().is_none_or(|v| majority_of(v, ids))
    }

    /// Whether `id` has a say: a member of either set, or anyone before
    /// there is one.
    pub fn counts(&self, id: &str) -> bool {
        match (&self.committed, &self.pending) {
            (None, None) => true,
            (c, p) => {
                c.as_ref().is_some_and(|v| v.contains(id))
                    || p.as_ref().is_some_and(|v| v.contains(id))
            }
        }
    }

    /// No voter set yet, committed or not.
    pub fn is_bootstrap(&self) -> bool {
        self.committed.is_none() && self.pending.is_none()
    }

    /// The newest set: pending, else committed.
    pub fn latest(&self) -> Option<&BTreeSet<String>> {
        self.pending.as_ref().or(self.committed.as_ref())
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_joint_rule_needs_both_majorities() {
        let q = Quorum::new(
            Some(set(&["a", "b", "c"])),
            Some(set(&["a", "b", "c", "d"])),
            3,
        );
        assert!(
            !q.is_met(&set(&["a", "b"])),
            "2 of 4 is no majority of the new set"
        );
        assert!(q.is_met(&set(&["a", "b", "d"])));
        assert!(
            q.is_met(&set(&["a", "c", "d"])),
            "one-member change: the new set alone"
        );
        let two = Quorum::new(Some(set(&["a", "b", "c"])), Some(set(&["a", "d", "e"])), 3);
        assert!(
            !two.is_met(&set(&["a", "d"])),
            "2 of the new, 1 of the old: joint"
        );
        assert!(two.is_met(&set(&["a", "b", "d"])));
        let boot = Quorum::new(None, Some(set(&["a", "b", "c"])), 5);
        assert!(
            !boot.is_met(&set(&["a", "b"])),
            "2 of anyone is below 5/2 + 1"
        );
        assert!(boot.is_met(&set(&["a", "b", "x"])));
        assert!(!boot.is_met(&set(&["a", "x", "y"])), "1 of the new set");
        assert!(Quorum::bootstrap(3).is_met(&set(&["x", "y"])));
        assert!(q.counts("d") && !q.counts("x") && Quorum::bootstrap(3).counts("x"));
    }
}
