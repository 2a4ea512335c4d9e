//! Campaigns: the pre-vote, the lease request and the grant rule, and the
//! [`Ballot`] that counts the answers (module docs of [`super`] for why
//! each rule is safe).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Action, Claim, Election, ElectionMessage, KnownLeader, LeaseAsk, State, Vote};
use crate::quorum::Quorum;

/// The answers to one round of asking for an epoch: a pre-vote or a
/// campaign.
#[derive(Debug)]
pub(super) struct Ballot {
    pub(super) epoch: u64,
    pub(super) started: Duration,
    pub(super) grants: BTreeSet<String>,
    pub(super) refusals: BTreeSet<String>,
}

/// Where a ballot stands after an answer.
pub(super) enum Tally {
    Open,
    /// A quorum granted.
    Won,
    /// The live members that have not refused can no longer make a quorum.
    Lost,
}

impl Ballot {
    /// A ballot for `epoch`, granted by the asking node itself.
    pub(super) fn new(epoch: u64, me: &str, now: Duration) -> Ballot {
        Ballot {
            epoch,
            started: now,
            grants: BTreeSet::from([me.to_string()]),
            refusals: BTreeSet::new(),
        }
    }

    /// Counts `from`'s answer; `live` are the live members, self included.
    pub(super) fn count(
        &mut self,
        from: &str,
        granted: bool,
        live: BTreeSet<String>,
        quorum: &Quorum,
    ) -> Tally {
        if granted {
            self.grants.insert(from.to_string());
            return if quorum.is_met(&self.grants) {
                Tally::Won
            } else {
                Tally::Open
            };
        }
        self.refusals.insert(from.to_string());
        let mut hopeful = live;
        hopeful.retain(|id| !self.refusals.contains(id));
        if quorum.is_met(&hopeful) {
            Tally::Open
        } else {
            Tally::Lost
        }
    }
}

impl Election {
    pub(super) fn may_campaign(&self, now: Duration) -> bool {
        self.leader(now).is_none()
            && !self.mismatched()
            && self.quorum.counts(&self.me)
            && self.quorum.is_met(&self.live_ids())
            && now >= self.quiet_until
            && now >= self.former_lease_until
    }

    /// What this node would claim in its own lease request.
    pub(super) fn own_claim(&self) -> Claim {
        Claim {
            last: self.last,
            replicas: self.replicas(),
            voters: self.voter_set_id,
        }
    }

    /// What this node asks for when it wants `epoch`.
    pub(super) fn own_ask(&self, epoch: u64) -> LeaseAsk {
        let claim = self.own_claim();
        LeaseAsk {
            epoch,
            candidate: self.me.clone(),
            last: claim.last,
            replicas: claim.replicas,
            voters: claim.voters,
        }
    }

    /// Whether this node may promise `epoch` to `candidate` now.
    pub(super) fn may_grant(
        &self,
        epoch: u64,
        candidate: &str,
        claim: Claim,
        now: Duration,
    ) -> bool {
        let lease = self.config.lease;
        let other_leader_live = self
            .leader
            .as_ref()
            .is_some_and(|l| l.id != candidate && now < l.heard_at + lease);
        let voted_for_another = self
            .voted
            .as_ref()
            .is_some_and(|v| v.candidate != candidate && now < v.at + lease);
        // A candidate without a voter set counts anyone's grant against its
        // own `replicas`: only a node as new as it, and agreeing on the
        // quorum size, may grant it (module docs).
        // More live members than `replicas` (`mismatched`) forbid only
        // bootstrap elections: a candidate with a set counts by its set.
        let bootstrap_refused = claim.voters == 0
            && (self.voter_set_id != 0
                || self.joined
                || self.mismatched()
                || claim.replicas != self.replicas());
        // A learner in its own log grants all the same: a candidate whose
        // log has promoted it counts its grant (one that has not, ignores
        // it), and its log may not have the promotion yet.
        epoch > self.promised
            && !bootstrap_refused
            && now >= self.quiet_until
            && !other_leader_live
            && !voted_for_another
            && self.lease(now).is_none()
            // Nodes that heard this one lead may still read under the lease
            // it held: it steps down early on a deposing ack or a failed
            // log, and its grant would let another lead meanwhile.
            && now >= self.former_lease_until
            && claim.last >= self.last
    }

    /// The epoch this node would ask for next, if it may ask at all: it
    /// counts in the quorum and would grant itself by the usual rule. Either
    /// way the back-off before asking starts again.
    pub(super) fn next_ask(&mut self, now: Duration) -> Option<u64> {
        let epoch = self.highest_seen.max(self.promised) + 1;
        self.campaign_at = None;
        (self.quorum.counts(&self.me)
            && self.may_grant(epoch, &self.me.clone(), self.own_claim(), now))
        .then_some(epoch)
    }

    /// Asks whether a quorum would grant this node the next epoch; the
    /// campaign itself starts once one would ([`Election::campaign`]).
    pub(super) fn pre_vote(&mut self, now: Duration) {
        let Some(epoch) = self.next_ask(now) else {
            return;
        };
        let ballot = Ballot::new(epoch, &self.me, now);
        if self.quorum.is_met(&ballot.grants) {
            // Alone in its quorum (one node): nobody else to ask.
            return self.campaign(now);
        }
        self.state = State::PreCandidate(ballot);
        tracing::debug!(epoch, "asking for pre-votes");
        self.broadcast(ElectionMessage::PreVote(self.own_ask(epoch)));
    }

    pub(super) fn on_pre_vote_reply(
        &mut self,
        from: &str,
        epoch: u64,
        granted: bool,
        now: Duration,
    ) {
        let live = self.live_ids();
        let State::PreCandidate(ballot) = &mut self.state else {
            return;
        };
        if ballot.epoch != epoch {
            return;
        }
        match ballot.count(from, granted, live, &self.quorum) {
            // A quorum would grant: campaign for real (which checks
            // everything again, on this node's state now).
            Tally::Won => {
                self.state = State::Follower;
                self.campaign(now);
            }
            Tally::Lost => self.end_pre_vote(),
            Tally::Open => {}
        }
    }

    /// Pre-votes that did not gather a quorum: back to following, with a
    /// new back-off before the next try. Nobody is bound, so nobody is told.
    pub(super) fn end_pre_vote(&mut self) {
        if matches!(self.state, State::PreCandidate(_)) {
            self.state = State::Follower;
            self.campaign_at = None;
        }
    }

    pub(super) fn campaign(&mut self, now: Duration) {
        let Some(epoch) = self.next_ask(now) else {
            return;
        };
        // The self-vote is not recorded in `voted`: it binds only while
        // the campaign lasts, and granting a newer epoch ends the campaign
        // (`on_request`), after which no reply can make it win. Were it
        // binding, a candidate that is behind and so can never win would
        // refuse the one that can, campaign after campaign.
        self.promise(epoch);
        self.state = State::Candidate(Ballot::new(epoch, &self.me, now));
        tracing::debug!(epoch, "campaigning");
        self.broadcast(ElectionMessage::LeaseRequest(self.own_ask(epoch)));
        self.maybe_win(now);
    }

    pub(super) fn on_request(&mut self, epoch: u64, candidate: &str, claim: Claim, now: Duration) {
        self.highest_seen = self.highest_seen.max(epoch);
        let granted = self.may_grant(epoch, candidate, claim, now);
        if granted {
            self.promise(epoch);
            self.voted = Some(Vote {
                candidate: candidate.to_string(),
                epoch,
                at: now,
            });
            // Promising a newer epoch ends any campaign or leadership of ours.
            match self.state {
                State::Leader { epoch: mine, .. } => self.step_down(mine, "granted a newer epoch"),
                State::Candidate(_) => self.end_campaign(),
                State::PreCandidate(_) => self.end_pre_vote(),
                State::Follower => {}
            }
        }
        self.send(
            candidate,
            ElectionMessage::LeaseReply {
                epoch,
                granted,
                promised: self.promised,
            },
        );
    }

    pub(super) fn on_reply(
        &mut self,
        from: &str,
        epoch: u64,
        granted: bool,
        promised: u64,
        now: Duration,
    ) {
        self.highest_seen = self.highest_seen.max(promised);
        let live = self.live_ids();
        let State::Candidate(ballot) = &mut self.state else {
            return;
        };
        if ballot.epoch != epoch {
            return;
        }
        match ballot.count(from, granted, live, &self.quorum) {
            Tally::Won => self.maybe_win(now),
            // Give up now and free the voters that granted, rather than
            // holding their grants until the campaign times out.
            Tally::Lost => self.end_campaign(),
            Tally::Open => {}
        }
    }

    /// A campaign ends without a lease: back to following, and tell the
    /// voters that nothing rests on their grants. Safe because replies are
    /// only counted by a candidate of that epoch, which this node no longer
    /// is, and epochs are never reused.
    pub(super) fn end_campaign(&mut self) {
        let State::Candidate(Ballot { epoch, .. }) = self.state else {
            return;
        };
        self.state = State::Follower;
        self.campaign_at = None;
        self.broadcast(ElectionMessage::Withdrawn { epoch });
    }

    pub(super) fn maybe_win(&mut self, now: Duration) {
        let State::Candidate(Ballot {
            epoch,
            started,
            grants,
            ..
        }) = &self.state
        else {
            return;
        };
        if !self.quorum.is_met(grants) {
            return;
        }
        self.won_with = grants.clone();
        let (epoch, lease_until) = (*epoch, *started + self.config.safe_lease());
        if now >= lease_until {
            self.end_campaign();
            return;
        }
        tracing::info!(epoch, "elected leader");
        self.state = State::Leader {
            epoch,
            lease_until,
            next_round: 1,
            last_round_at: now,
            rounds: BTreeMap::from([(0, (now, BTreeSet::from([self.me.clone()])))]),
        };
        self.leader = Some(KnownLeader {
            id: self.me.clone(),
            epoch,
            heard_at: now,
        });
        self.actions.push(Action::BecameLeader { epoch });
        // Round 0 tells every member at once who leads.
        self.broadcast(ElectionMessage::Heartbeat {
            epoch,
            leader: self.me.clone(),
            round: 0,
            replicas: self.replicas(),
            voters: self.voter_set_id,
        });
    }
}
