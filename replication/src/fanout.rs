//! The leader's view of its followers, sans IO: the replication set, what
//! each follower has received and made durable, and the commit rule
//! (DESIGN.md, "Writes and commit", step 4).
//!
//! **Commit rule.** An entry commits when (a) it is durable on a quorum of
//! voters, the leader counting itself only once its own flush covers it,
//! and (b) every member of the replication set has at least received it.
//! (a) is what survives crashes: any later leader's election needs a
//! quorum, which overlaps (a)'s, and the vote restriction picks a log that
//! holds the entry. (b) is what makes local reads linearizable: a follower
//! that may read has every committed entry applied or pending (and a read
//! of a pending path waits).
//!
//! **The set.** A follower leaves the set only once its read permission
//! has surely run out: it has not been heard from for L·(1 + drift), or it
//! has no permission at all (not confirmed yet, or a new incarnation of
//! it). Being in the set is not yet leave to read: a new leader's set
//! starts with every live follower, and one of those may still lack
//! entries an earlier leader committed. A follower is *confirmed* (may
//! read) once it has received everything up to the leader's log end at
//! election, or was admitted after catching up: from then on every commit
//! waited for it.
//!
//! **Learners fed in batches** (`cluster.learner_feed: batched`). With a
//! voter set known, a follower outside it is never in the set: it receives
//! the log from the leader's tick rather than with each write, no commit
//! waits for it, and it never holds read permission (it serves a
//! linearizable read after asking the leader for its commit index, a read
//! index, and applying through it). A member that becomes such a learner
//! while it may hold permission is revoked first and leaves once that has
//! run out, like a lagging member.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::quorum::Quorum;
use std::time::Duration;

/// One follower as the leader sees it.
#[derive(Debug, Clone)]
struct Follower {
    /// The follower's log matches the leader's through this revision.
    received: u64,
    /// ... and is durable through this one.
    durable: u64,
    last_heard: Duration,
    /// When `received` last moved (or the follower was first heard).
    moved_at: Duration,
    in_set: bool,
    /// Holds every entry any leader committed (see the module docs).
    confirmed: bool,
    /// The incarnation last heard from: a restart loses what was received
    /// and not flushed.
    boot: Option<u64>,
    /// When its read permission was revoked for lagging past the ack
    /// timeout: it leaves the set once that permission has surely run out,
    /// and is not confirmed again before it left.
    revoked_at: Option<Duration>,
    /// A learner fed in batches: never admitted to the set.
    batched: bool,
    /// Batches sent through this revision, and when (a batch lost on the
    /// way is sent again once `received` has not followed for a while).
    fed: u64,
    fed_at: Duration,
}

/// Counts a follower leaving the replication set, by why.
fn left(why: &'static str) {
    metrics::counter!("pika_followers_left_total", "why" => why).increment(1);
}

impl Follower {
    /// A learner fed in batches: the revision to send its next batch from
    /// (after what was last sent, or what it received), if it lacks
    /// anything through `last`; it counts as fed through `last` from `now`.
    fn take_batch(&mut self, last: u64, now: Duration) -> Option<u64> {
        let from = self.fed.max(self.received);
        if !self.batched || from >= last {
            return None;
        }
        self.fed = last;
        self.fed_at = now;
        Some(from)
    }

    /// It may hold read permission from this leader: confirmed, or
    /// revoked not long enough ago for that permission to have run out.
    /// Only a member that may not can leave the set at once.
    fn may_hold_permission(&self) -> bool {
        self.confirmed || self.revoked_at.is_some()
    }
}

/// The set, the acknowledgements, and writers waiting for a commit.
pub struct ReplicationSet<A> {
    /// Whose durable copies make a commit (see [`Quorum`]). Learners are
    /// in the set all the same: every member receives every entry.
    quorum: Quorum,
    /// The leader's own id, for the quorum.
    leader: String,
    /// How long after its last word a follower's read permission has
    /// surely run out: L·(1 + drift).
    eviction: Duration,
    /// The leader's log end (revision) when it took over.
    base: u64,
    /// With learners fed in batches: the voters (everyone else is such a
    /// learner). `None`: every follower is fed with each write.
    batch_all_but: Option<BTreeSet<String>>,
    followers: BTreeMap<String, Follower>,
    waiting: VecDeque<(u64, A)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerView {
    pub id: String,
    pub received: u64,
    pub durable: u64,
    pub in_set: bool,
}

impl<A> ReplicationSet<A> {
    /// A new leader's set: every follower membership reports alive, none
    /// known to hold anything yet, none confirmed. `quorum` is the rule of
    /// the leader's log, `leader` its own id.
    pub fn new(
        quorum: Quorum,
        leader: &str,
        eviction: Duration,
        base: u64,
        followers: impl IntoIterator<Item = String>,
        now: Duration,
    ) -> Self {
        Self {
            quorum,
            leader: leader.to_string(),
            eviction,
            base,
            followers: followers
                .into_iter()
                .map(|id| {
                    (
                        id,
                        Follower {
                            received: 0,
                            durable: 0,
                            last_heard: now,
                            moved_at: now,
                            in_set: true,
                            confirmed: false,
                            boot: None,
                            revoked_at: None,
                            batched: false,
                            fed: 0,
                            fed_at: now,
                        },
                    )
                })
                .collect(),
            batch_all_but: None,
            waiting: VecDeque::new(),
        }
    }

    pub fn followers(&self) -> Vec<FollowerView> {
        self.followers
            .iter()
            .map(|(id, f)| FollowerView {
                id: id.clone(),
                received: f.received,
                durable: f.durable,
                in_set: f.in_set,
            })
            .collect()
    }

    /// What `id` has acknowledged so far: (received, durable), both 0
    /// for a follower not heard from (or heard restarted).
    pub fn progress(&self, id: &str) -> (u64, u64) {
        self.followers
            .get(id)
            .map_or((0, 0), |f| (f.received, f.durable))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.followers.get(id).is_some_and(|f| f.in_set)
    }

    /// In the set and confirmed: the follower may serve local reads.
    pub fn may_read(&self, id: &str) -> bool {
        self.followers
            .get(id)
            .is_some_and(|f| f.in_set && f.confirmed)
    }

    /// Members not confirmed yet: the leader probes them so that an idle
    /// cluster does not leave them unconfirmed until the next write.
    pub fn unconfirmed(&self) -> Vec<String> {
        self.followers
            .iter()
            .filter(|(_, f)| f.in_set && !f.confirmed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Members behind `last` whose receipt has not moved for `quiet`: a
    /// diff to them was lost, and with no write after it nothing else would
    /// tell them (the leader probes them so that they ask to catch up).
    pub fn stalled(&self, last: u64, now: Duration, quiet: Duration) -> Vec<String> {
        self.followers
            .iter()
            .filter(|(_, f)| f.in_set && f.received < last && now >= f.moved_at + quiet)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The quorum rule of the leader's log, and the leader's id.
    pub fn set_quorum(&mut self, quorum: Quorum, leader: &str) {
        self.quorum = quorum;
        self.leader = leader.to_string();
    }

    /// The leader plus the members of its set reach a quorum.
    pub fn has_quorum(&self) -> bool {
        let mut ids: BTreeSet<String> = self
            .followers
            .iter()
            .filter(|(_, f)| f.in_set)
            .map(|(id, _)| id.clone())
            .collect();
        ids.insert(self.leader.clone());
        self.quorum.is_met(&ids)
    }

    /// Answers to give once `revision` commits.
    pub fn wait(&mut self, revision: u64, answers: A) {
        self.waiting.push_back((revision, answers));
    }

    /// A follower proved it is alive, as incarnation `boot` (its boot
    /// counter, which only grows). A newer incarnation lost whatever it had
    /// received and not flushed, and has no read permission yet: it leaves
    /// the set until it catches up. Returns false for a message from an
    /// older incarnation, still in flight when it restarted: ignore it.
    pub fn heard(&mut self, id: &str, boot: u64, now: Duration) -> bool {
        let batched = self.batch_all_but.as_ref().is_some_and(|v| !v.contains(id));
        let f = self.followers.entry(id.to_string()).or_insert(Follower {
            received: 0,
            durable: 0,
            last_heard: now,
            moved_at: now,
            in_set: false,
            confirmed: false,
            boot: None,
            revoked_at: None,
            batched,
            fed: 0,
            fed_at: now,
        });
        match f.boot {
            Some(b) if boot < b => return false,
            Some(b) if boot > b => {
                if f.in_set {
                    left("restarted");
                }
                f.in_set = false;
                f.confirmed = false;
                f.revoked_at = None;
                f.received = 0;
                f.durable = 0;
                f.fed = 0;
            }
            _ => {}
        }
        f.boot = Some(boot);
        f.last_heard = now;
        true
    }

    /// A follower acknowledged (call [`Self::heard`] first): its log
    /// matches the leader's through `received`, durable through `durable`.
    pub fn acked(&mut self, id: &str, received: u64, durable: u64, now: Duration) {
        let base = self.base;
        let Some(f) = self.followers.get_mut(id) else {
            return;
        };
        f.last_heard = now;
        if received > f.received {
            f.moved_at = now;
        }
        f.received = f.received.max(received);
        f.durable = f.durable.max(durable.min(received));
        if f.in_set && f.revoked_at.is_none() {
            f.confirmed |= f.received >= base;
        }
    }

    /// A follower outside the set that has received everything that may
    /// have been acknowledged joins it, confirmed: every later commit waits
    /// for it. That is everything this leader committed, and everything in
    /// its log at election: an earlier leader may have acknowledged entries
    /// this one does not know to be committed yet (the simulation found a
    /// follower admitted on the commit index alone reading without one).
    pub fn admit_if_caught_up(&mut self, id: &str, committed: u64) -> bool {
        let needed = committed.max(self.base);
        match self.followers.get_mut(id) {
            Some(f) if !f.in_set && !f.batched && f.received >= needed => {
                f.in_set = true;
                f.confirmed = true;
                true
            }
            _ => false,
        }
    }

    /// A member that cannot be caught up from the log (it needs a snapshot)
    /// leaves the set, if that is safe now: it has no read permission.
    pub fn remove_unconfirmed(&mut self, id: &str) -> bool {
        match self.followers.get_mut(id) {
            Some(f) if f.in_set && !f.may_hold_permission() => {
                left("needs_snapshot");
                f.in_set = false;
                true
            }
            _ => false,
        }
    }

    /// Members not confirmed yet and not heard from for `quiet` leave the
    /// set at once: they hold no read permission from this leader, so no
    /// read depends on them, and a new leader's first commit need not wait
    /// out the eviction time for a member that is alive to membership but
    /// silent here (its disk failed, say). It rejoins once caught up.
    /// Returns who left.
    pub fn drop_silent_unconfirmed(&mut self, now: Duration, quiet: Duration) -> Vec<String> {
        let mut gone = Vec::new();
        for (id, f) in &mut self.followers {
            if f.in_set && !f.may_hold_permission() && now.saturating_sub(f.last_heard) > quiet {
                left("silent_unconfirmed");
                f.in_set = false;
                gone.push(id.clone());
            }
        }
        gone
    }

    /// Members that have not received the oldest entry they miss within
    /// `ack_timeout` of its sending (`sent_at(received)`: when the first
    /// entry after `received` went out, if any did) lose their read
    /// permission now: no more grants. They stay in the set (commits still
    /// wait for them) until that permission has surely run out, the
    /// eviction time later ([`Self::evict_silent`]), so that no member
    /// reads without an entry committed in its absence. A member alive but
    /// never acknowledging (a gap it cannot close, a diff it cannot
    /// receive) thus stops holding writes up. A lagging member that was
    /// never confirmed holds no permission and leaves at once. Returns who
    /// lagged, each with whether it left the set already.
    pub fn revoke_lagging(
        &mut self,
        sent_at: impl Fn(u64) -> Option<Duration>,
        now: Duration,
        ack_timeout: Duration,
    ) -> Vec<(String, bool)> {
        let mut lagging = Vec::new();
        for (id, f) in &mut self.followers {
            if !f.in_set || f.revoked_at.is_some() {
                continue;
            }
            if sent_at(f.received).is_some_and(|at| now.saturating_sub(at) > ack_timeout) {
                let gone = !f.may_hold_permission();
                if gone {
                    left("lagging_unconfirmed");
                    f.in_set = false;
                } else {
                    f.revoked_at = Some(now);
                    f.confirmed = false;
                }
                lagging.push((id.clone(), gone));
            }
        }
        lagging
    }

    /// Members silent for longer than the eviction time, or revoked that
    /// long ago, leave the set; returns who left.
    pub fn evict_silent(&mut self, now: Duration) -> Vec<String> {
        let mut gone = Vec::new();
        for (id, f) in &mut self.followers {
            let silent = now.saturating_sub(f.last_heard) > self.eviction;
            let revoked = f
                .revoked_at
                .is_some_and(|at| now.saturating_sub(at) > self.eviction);
            if f.in_set && (silent || revoked) {
                left("permission_ran_out");
                f.in_set = false;
                f.confirmed = false;
                f.revoked_at = None;
                gone.push(id.clone());
            }
        }
        gone
    }

    /// Feeds every follower outside `voters` in batches (`None`: nobody,
    /// which is also the rule while there is no voter set). A member that
    /// becomes such a learner leaves the set at once if it holds no read
    /// permission, else it is revoked and leaves once that has run out
    /// ([`Self::evict_silent`]); commits wait for it until then. Returns
    /// whether anyone left at once.
    pub fn feed_in_batches(&mut self, voters: Option<&BTreeSet<String>>, now: Duration) -> bool {
        self.batch_all_but = voters.cloned();
        let mut left_now = false;
        for (id, f) in &mut self.followers {
            let batched = voters.is_some_and(|v| !v.contains(id));
            if batched && !f.batched && f.in_set {
                if f.may_hold_permission() {
                    if f.revoked_at.is_none() {
                        f.revoked_at = Some(now);
                    }
                    f.confirmed = false;
                } else {
                    left("fed_in_batches");
                    f.in_set = false;
                    left_now = true;
                }
            }
            if batched && !f.batched {
                f.fed = f.received;
            }
            f.batched = batched;
        }
        left_now
    }

    /// Whether `id` is a learner fed in batches rather than with each write.
    pub fn is_batched(&self, id: &str) -> bool {
        match self.followers.get(id) {
            Some(f) => f.batched,
            None => self.batch_all_but.as_ref().is_some_and(|v| !v.contains(id)),
        }
    }

    /// Learners fed in batches that lack something up to `last`, each with
    /// the revision to send from: after what was last sent, or after what
    /// it received if that batch has not arrived within `resend` (lost).
    /// Marks them fed through `last` as of `now`.
    pub fn batches_due(
        &mut self,
        last: u64,
        now: Duration,
        resend: Duration,
    ) -> Vec<(String, u64)> {
        let mut due = Vec::new();
        for (id, f) in &mut self.followers {
            if f.batched && f.fed > f.received && now.saturating_sub(f.fed_at) > resend {
                f.fed = f.received;
            }
            if let Some(from) = f.take_batch(last, now) {
                due.push((id.clone(), from));
            }
        }
        due
    }

    /// A learner fed in batches asked to read: what it lacks through
    /// `last`, at once. Returns the revision to send from, if any.
    pub fn feed_now(&mut self, id: &str, last: u64, now: Duration) -> Option<u64> {
        self.followers.get_mut(id)?.take_batch(last, now)
    }

    /// A learner caught up with `committed` (durable through it), in the
    /// set and confirmed or fed in batches: one the leader may promote.
    pub fn caught_up(&self, id: &str, committed: u64) -> bool {
        self.followers
            .get(id)
            .is_some_and(|f| (f.in_set && f.confirmed) || (f.batched && f.durable >= committed))
    }

    /// The highest revision the commit rule allows, given the leader's own
    /// log end (`last`) and what its own flushes made durable.
    pub fn commit_bound(&self, last: u64, leader_durable: u64) -> u64 {
        if !self.has_quorum() {
            return 0;
        }
        // (b): every member of the set received it.
        let received = self
            .followers
            .values()
            .filter(|f| f.in_set)
            .map(|f| f.received)
            .min()
            .unwrap_or(last)
            .min(last);
        // (a): durable on a quorum, the leader included: the highest
        // revision whose holders make one. Only those the quorum counts
        // (voters) matter; with many learners, the others would only
        // multiply the levels tried.
        let leader_durable = leader_durable.min(last);
        let mut durable: Vec<(String, u64)> = self
            .followers
            .iter()
            .filter(|(id, _)| self.quorum.counts(id))
            .map(|(id, f)| (id.clone(), f.durable))
            .collect();
        durable.push((self.leader.clone(), leader_durable));
        let mut levels: Vec<u64> = durable.iter().map(|(_, d)| *d).collect();
        levels.sort_unstable_by(|a, b| b.cmp(a));
        levels.dedup();
        let quorum_durable = levels
            .into_iter()
            .find(|level| {
                let holders: BTreeSet<String> = durable
                    .iter()
                    .filter(|(_, d)| d >= level)
                    .map(|(id, _)| id.clone())
                    .collect();
                self.quorum.is_met(&holders)
            })
            .unwrap_or(0);
        received.min(quorum_durable)
    }

    /// Answers whose revision is committed now.
    pub fn released(&mut self, committed: u64) -> Vec<A> {
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|(r, _)| *r <= committed) {
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
    const T0: Duration = Duration::ZERO;

    /// Three nodes (quorum 2): the leader and followers b and c, with the
    /// leader's log at revision 4 when it took over.
    fn set() -> ReplicationSet<&'static str> {
        ReplicationSet::new(
            Quorum::bootstrap(3),
            "a",
            L,
            4,
            ["b".to_string(), "c".to_string()],
            T0,
        )
    }

    /// An acknowledgement from incarnation 1.
    fn ack(
        s: &mut ReplicationSet<&'static str>,
        id: &str,
        received: u64,
        durable: u64,
        at: Duration,
    ) {
        assert!(s.heard(id, 1, at));
        s.acked(id, received, durable, at);
    }

    #[test]
    fn a_follower_reads_only_once_it_received_the_log_end_at_election() {
        let mut s = set();
        assert!(!s.may_read("b") && !s.may_read("c"));
        assert_eq!(s.unconfirmed(), vec!["b".to_string(), "c".to_string()]);
        ack(&mut s, "b", 3, 3, T0);
        assert!(!s.may_read("b"), "revision 4 may be an acknowledged write");
        ack(&mut s, "b", 4, 0, T0);
        assert!(
            s.may_read("b"),
            "received is enough: reads of pending paths wait"
        );
        assert_eq!(s.unconfirmed(), vec!["c".to_string()]);
    }

    #[test]
    fn a_learner_fed_in_batches_holds_no_commit_up_and_never_reads() {
        // Voters a and b (quorum 2); c is a learner.
        let mut s = set();
        s.set_quorum(Quorum::bootstrap(2), "a");
        ack(&mut s, "b", 4, 4, T0);
        ack(&mut s, "c", 4, 4, T0);
        assert!(s.may_read("c"));
        let voters: BTreeSet<String> = ["a", "b"].iter().map(|x| x.to_string()).collect();
        // c may hold permission: it is revoked and leaves once that has
        // surely run out; commits wait for it until then.
        assert!(!s.feed_in_batches(Some(&voters), T0));
        assert!(!s.may_read("c") && s.contains("c") && s.is_batched("c"));
        ack(&mut s, "b", 9, 9, T0);
        assert_eq!(s.commit_bound(9, 9), 4);
        ack(&mut s, "b", 9, 9, L + L);
        s.evict_silent(L + L);
        assert!(!s.contains("c") && s.contains("b"));
        assert_eq!(s.commit_bound(9, 9), 9, "the learner holds nothing up");
        // Caught up, it is still never admitted.
        ack(&mut s, "c", 9, 9, L + L);
        assert!(!s.admit_if_caught_up("c", 9) && !s.may_read("c"));
        assert!(s.caught_up("c", 9), "but it may be promoted");
        // Its feed: what it lacks, once; again only after `resend`.
        let due = s.batches_due(12, L + L, L);
        assert_eq!(due, vec![("c".to_string(), 9)]);
        assert!(s.batches_due(12, L + L, L).is_empty());
        assert_eq!(s.batches_due(12, L * 4, L), vec![("c".to_string(), 9)]);
        // Back in the voter set, it rejoins once caught up.
        assert!(!s.feed_in_batches(None, L * 4));
        ack(&mut s, "c", 12, 12, L * 4);
        assert!(s.admit_if_caught_up("c", 9) && s.may_read("c"));
    }

    #[test]
    fn commit_needs_every_member_to_receive_and_a_quorum_to_hold_it_durably() {
        let mut s = set();
        ack(&mut s, "b", 9, 9, T0);
        assert_eq!(s.commit_bound(9, 9), 0, "c has received nothing");
        ack(&mut s, "c", 7, 0, T0);
        assert_eq!(s.commit_bound(9, 9), 7, "c received through 7");
        assert_eq!(s.commit_bound(9, 0), 0, "only b durable: no quorum");
        ack(&mut s, "c", 9, 0, T0);
        assert_eq!(s.commit_bound(9, 0), 0, "received everywhere is not enough");
        assert_eq!(s.commit_bound(9, 8), 8, "the leader's flush makes two");
        ack(&mut s, "c", 9, 9, T0);
        assert_eq!(
            s.commit_bound(9, 0),
            9,
            "two followers durable are a quorum"
        );
    }

    #[test]
    fn answers_wait_for_their_commit() {
        let mut s = set();
        s.wait(5, "w5");
        s.wait(7, "w7");
        assert!(s.released(4).is_empty());
        assert_eq!(s.released(6), vec!["w5"]);
        assert_eq!(s.released(9), vec!["w7"]);
    }

    #[test]
    fn a_silent_follower_leaves_only_after_its_permission_surely_ran_out() {
        let mut s = set();
        ack(&mut s, "b", 3, 3, L);
        assert!(s.evict_silent(L).is_empty());
        assert_eq!(
            s.evict_silent(L + Duration::from_millis(1)),
            vec!["c".to_string()]
        );
        assert_eq!(
            s.commit_bound(3, 3),
            3,
            "b and the leader are a quorum and the whole set"
        );
        ack(&mut s, "c", 3, 3, L * 2);
        assert!(!s.contains("c"), "an ack alone does not bring it back");
        assert!(!s.admit_if_caught_up("c", 5), "behind what is committed");
        assert!(
            !s.admit_if_caught_up("c", 3),
            "behind the log end at election: revision 4 may have been acknowledged"
        );
        ack(&mut s, "c", 4, 4, L * 2);
        assert!(s.admit_if_caught_up("c", 3));
        assert!(s.may_read("c"));
    }

    #[test]
    fn a_restarted_follower_leaves_the_set_until_it_catches_up() {
        let mut s = set();
        ack(&mut s, "b", 9, 5, T0);
        ack(&mut s, "c", 9, 9, T0);
        assert!(s.may_read("b"));
        assert!(s.heard("b", 2, T0));
        assert!(!s.contains("b") && !s.may_read("b"));
        assert_eq!(s.commit_bound(9, 9), 9, "the leader and c");
        assert!(!s.heard("b", 1, T0), "a late word of the old incarnation");
        s.acked("b", 5, 5, T0);
        assert!(
            !s.admit_if_caught_up("b", 9),
            "what it received before is forgotten"
        );
        s.acked("b", 9, 5, T0);
        assert!(s.admit_if_caught_up("b", 9));
    }

    #[test]
    fn a_member_whose_receipt_stops_moving_behind_the_log_is_stalled() {
        let mut s = set();
        ack(&mut s, "b", 9, 9, T0);
        ack(&mut s, "c", 7, 7, T0);
        assert!(s.stalled(9, L / 2, L).is_empty(), "not for long yet");
        assert_eq!(s.stalled(9, L, L), vec!["c".to_string()]);
        ack(&mut s, "c", 8, 8, L);
        assert!(s.stalled(9, L, L).is_empty(), "it moved");
    }

    #[test]
    fn below_quorum_nothing_commits() {
        let mut s = set();
        s.wait(1, "w1");
        ack(&mut s, "b", 1, 1, T0);
        assert_eq!(s.evict_silent(L * 3).len(), 2);
        assert!(!s.has_quorum());
        assert_eq!(s.commit_bound(1, 1), 0);
        assert_eq!(s.drain(), vec!["w1"]);
    }

    #[test]
    fn a_member_that_stops_acknowledging_loses_permission_then_leaves_the_set() {
        let mut s = set();
        let ack_timeout = L / 2;
        ack(&mut s, "b", 4, 4, T0);
        ack(&mut s, "c", 4, 4, T0);
        assert!(s.may_read("c"));
        // Revision 5 went out at T0; b received it, c never acknowledges
        // it, while still saying it is alive.
        let sent_at = |received: u64| (received < 5).then_some(T0);
        ack(&mut s, "b", 5, 5, ack_timeout);
        assert!(
            s.revoke_lagging(sent_at, ack_timeout, ack_timeout)
                .is_empty()
        );
        let at = ack_timeout + Duration::from_millis(1);
        assert_eq!(
            s.revoke_lagging(sent_at, at, ack_timeout),
            vec![("c".to_string(), false)]
        );
        assert!(!s.may_read("c"), "no more grants");
        assert!(s.contains("c"), "its permission may still run");
        assert!(
            s.drop_silent_unconfirmed(at + L / 2, L / 4).is_empty(),
            "not confirmed any more, yet it may hold permission"
        );
        assert!(!s.remove_unconfirmed("c"));
        assert_eq!(s.commit_bound(5, 5), 4, "so commits still wait for it");
        ack(&mut s, "b", 5, 5, at + L);
        ack(&mut s, "c", 4, 4, at + L);
        assert!(!s.may_read("c"), "an ack does not confirm it again");
        assert!(
            s.evict_silent(at + L).is_empty(),
            "alive, and revoked L ago"
        );
        ack(&mut s, "c", 4, 4, at + L + L / 5);
        assert_eq!(s.evict_silent(at + L + L / 5), vec!["c".to_string()]);
        assert_eq!(s.commit_bound(5, 5), 5, "the leader and b");
        ack(&mut s, "c", 5, 5, at + L * 2);
        assert!(s.admit_if_caught_up("c", 5), "back once caught up");
        assert!(s.may_read("c"));
    }

    #[test]
    fn a_lagging_member_never_confirmed_leaves_at_once() {
        let mut s = set();
        ack(&mut s, "b", 5, 5, T0);
        ack(&mut s, "c", 3, 3, T0);
        assert!(!s.may_read("c"), "behind the log end at election");
        let sent_at = |received: u64| (received < 5).then_some(T0);
        assert_eq!(
            s.revoke_lagging(sent_at, L, L / 2),
            vec![("c".to_string(), true)],
            "it never had permission from this leader"
        );
        assert!(!s.contains("c"));
        assert_eq!(s.commit_bound(5, 5), 5);
    }

    #[test]
    fn a_silent_unconfirmed_member_leaves_after_a_quiet_time_a_confirmed_one_does_not() {
        let mut s = set();
        let quiet = L / 4;
        ack(&mut s, "b", 4, 4, T0);
        assert!(s.drop_silent_unconfirmed(quiet, quiet).is_empty());
        assert_eq!(
            s.drop_silent_unconfirmed(quiet * 2, quiet),
            vec!["c".to_string()],
            "c never answered this leader"
        );
        assert_eq!(s.commit_bound(4, 4), 4, "no longer waits for c");
        assert!(
            s.drop_silent_unconfirmed(L, quiet).is_empty(),
            "b is confirmed: only the eviction time takes it out"
        );
        ack(&mut s, "c", 4, 4, L);
        assert!(s.admit_if_caught_up("c", 4), "c rejoins once caught up");
    }

    #[test]
    fn an_unconfirmed_member_can_leave_at_once_a_confirmed_one_cannot() {
        let mut s = set();
        ack(&mut s, "b", 4, 4, T0);
        assert!(!s.remove_unconfirmed("b"));
        assert!(s.remove_unconfirmed("c"));
        assert!(!s.contains("c"));
    }
}
