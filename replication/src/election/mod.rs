//! Leader election by lease, sans IO (DESIGN.md, "Leader election").
//!
//! [`Election`] is a plain state machine: the driver feeds it messages,
//! clock readings and membership counts, and carries out the [`Action`]s it
//! returns, in order. Time is the node's own monotonic clock as a
//! `Duration` since an arbitrary origin; clocks of different nodes may run at
//! different rates within the drift bound.
//!
//! The rules, and why they are safe:
//! - A voter grants epoch e only if e > its promised epoch, it has heard from
//!   no other leader within the lease L, and the candidate's (epoch,
//!   revision) is at least its own. It persists the promise before replying
//!   ([`Action::Persist`] comes before the reply).
//! - A candidate starts its lease clock before asking, and with a quorum of
//!   grants leads until start + L·(1 − drift).
//! - The leader renews with heartbeat rounds; a round acked by a quorum
//!   extends the lease to that round's send time + L·(1 − drift). A voter
//!   that acked refuses other candidates for L after the ack, on its own
//!   clock, so with bounded drift the old lease ends before any new leader
//!   can be elected.
//! - A grant binds like an ack: for L after granting, a voter grants no
//!   other candidate and does not campaign, since the candidate it granted
//!   may be leading on that grant before its first heartbeat arrives.
//!   A candidate's vote for itself binds only while it campaigns: granting
//!   a newer epoch ends the campaign, so it can no longer win the old one.
//! - A campaign that ends without a lease (timed out, refused by more live
//!   members than the quorum can spare, or overtaken) is announced with
//!   [`ElectionMessage::Withdrawn`], which frees its voters at once. Without
//!   it, each failed round of a split vote binds its voters for a lease, and
//!   with 3 of 5 members up (every grant needed) elections took seconds.
//! - Voters that heard a leader refuse only *other* candidates, so a leader
//!   fenced off before its lease ran out does not campaign until it would
//!   have: its followers may still be reading on that lease.
//! - A campaign starts with a pre-vote ([`ElectionMessage::PreVote`]): the
//!   node asks whether a quorum would grant it the epoch, and promises it
//!   (to itself, durably, fencing the leader it knew) only if so. A pre-vote
//!   is answered by the grant rule above and changes nothing at the voter.
//!   Without it, a node that alone stopped hearing a live leader (a one-way
//!   partition, a pause past the lease, a restart whose connections had
//!   not come back yet) campaigned, and its own promise answered the
//!   leader's next heartbeat with a refusal: the leader stepped down
//!   though everyone else still followed it. Safety does not rest on the
//!   pre-vote: it only keeps a campaign that could not win from starting.
//! - After a boot a node grants nothing (not even to itself) for L
//!   (DESIGN.md, election step 6). It cannot know whom it promised before a
//!   crash, and a node whose data directory was wiped or restored from a
//!   backup does not even know that it promised: its promise reads 0, or
//!   an older value than it gave. A grant it gave before it went down binds
//!   for at most L, so after L none can still be in force.
//! - A candidate names its voter-set id (the revision of the newest voter
//!   set in its log, 0 for none) and its `replicas`. A candidate without a
//!   voter set counts the grants of anyone against its own `replicas`
//!   (the bootstrap rule, [`Quorum::bootstrap`]), so a voter grants it
//!   only if it knows no voter set either and has the same `replicas`:
//!   then two candidates' quorums are drawn from nodes that agree on the
//!   quorum size, and any two of them meet. (With `replicas: 3` on one
//!   node of five, that node would otherwise lead with one grant while
//!   three others elect their own leader.) Once a candidate knows a set,
//!   `replicas` only sets the size the leader grows the set to, and
//!   grants do not look at it. Every message that carries `replicas`
//!   records a difference for the status page.
//!
//! This file holds the state and what the driver calls; `message.rs` what
//! nodes say to each other and what the driver is asked to do;
//! `campaign.rs` the pre-vote, the request and the grant rule; `lease.rs`
//! the heartbeat rounds that keep a leader's lease.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

mod campaign;
mod lease;
mod message;

use crate::dice::Dice;
use crate::quorum::Quorum;
use campaign::Ballot;
pub use message::{Action, ElectionMessage, LeaseAsk, Position};

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// R: the cluster size the operator configured.
    pub replicas: usize,
    /// Heartbeat period, and the upper end of the random campaign back-off.
    pub heartbeat_interval: Duration,
    /// L: the lease (`heartbeat_timeout`).
    pub lease: Duration,
    /// Assumed bound on relative clock drift; leases are shortened by it.
    pub drift: f64,
}

impl ElectionConfig {
    fn safe_lease(&self) -> Duration {
        self.lease.mul_f64((1.0 - self.drift).clamp(0.0, 1.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Debug)]
enum State {
    Follower,
    /// Asking for pre-votes; nothing promised yet.
    PreCandidate(Ballot),
    /// Campaigning, its epoch promised to itself.
    Candidate(Ballot),
    Leader {
        epoch: u64,
        lease_until: Duration,
        next_round: u64,
        last_round_at: Duration,
        /// Rounds not yet acked by a quorum: send time and ackers.
        rounds: BTreeMap<u64, (Duration, BTreeSet<String>)>,
    },
}

/// What a candidate says of itself in a lease request.
#[derive(Debug, Clone, Copy)]
struct Claim {
    last: Position,
    replicas: u64,
    voters: u64,
}

/// A grant to another node, which binds this voter until `at + L`.
#[derive(Debug, Clone)]
struct Vote {
    candidate: String,
    epoch: u64,
    at: Duration,
}

#[derive(Debug, Clone)]
struct KnownLeader {
    id: String,
    epoch: u64,
    heard_at: Duration,
}

pub struct Election {
    me: String,
    config: ElectionConfig,
    peers: BTreeSet<String>,
    live: usize,
    mismatch: bool,
    promised: u64,
    /// The highest epoch seen anywhere, to outbid on the next campaign.
    highest_seen: u64,
    last: Position,
    state: State,
    leader: Option<KnownLeader>,
    /// The last grant to another node: until `at + L` that candidate may
    /// hold a lease that rests on it, so no other candidate (this node
    /// included) gets one, unless the candidate withdraws first.
    voted: Option<Vote>,
    /// No grants (self included) before this: see the module docs.
    quiet_until: Duration,
    /// Whose grants and acks are enough (DESIGN.md, "Who votes"; see
    /// [`Quorum`]): from the voter sets in this node's log.
    quorum: Quorum,
    /// This node's voter-set id: the revision of the newest voter set in
    /// its log, 0 while it knows none.
    voter_set_id: u64,
    /// Heard a leader whose log holds a voter set, since boot: a cluster
    /// exists, so this node takes no part in a bootstrap election, even
    /// with no set in its own log yet. Without this, two new nodes beyond
    /// `replicas` (a StatefulSet scaled up) cut off from the cluster before
    /// its log reached them elected each other by the bootstrap rule, a
    /// second cluster beside the first (the replica simulation's 5-node
    /// schedules with `replicas: 3`). If that leader's log is lost for good
    /// before its set reached anyone else, a restart clears this.
    joined: bool,
    /// Members whose `replicas` differs from this node's, with theirs, as
    /// last heard (a lease request, a heartbeat or its ack).
    conflicts: BTreeMap<String, u64>,
    /// Live members by id, self excluded.
    alive: BTreeSet<String>,
    /// Who granted this node's winning campaign: a new cluster's first
    /// leader writes them (and itself) as the voter set.
    won_with: BTreeSet<String>,
    /// When the lease of this node's last leadership would have ended. A
    /// leader can step down early (fenced by a newer promise); its
    /// followers may still read on that lease, and voters that heard it
    /// refuse only *other* candidates, so it must not lead again before
    /// then.
    former_lease_until: Duration,
    campaign_at: Option<Duration>,
    dice: Dice,
    actions: Vec<Action>,
}

impl Election {
    /// `promised` and `last` come from the store; `seed` drives the
    /// campaign back-off.
    pub fn new(
        me: impl Into<String>,
        config: ElectionConfig,
        promised: u64,
        last: Position,
        seed: u64,
        now: Duration,
    ) -> Election {
        // Whatever `promised` says: see the module doc.
        let quiet_until = now + config.lease;
        let replicas = config.replicas;
        Election {
            me: me.into(),
            config,
            peers: BTreeSet::new(),
            live: 1,
            mismatch: false,
            promised,
            highest_seen: promised.max(last.epoch),
            last,
            state: State::Follower,
            leader: None,
            voted: None,
            quiet_until,
            quorum: Quorum::bootstrap(replicas),
            voter_set_id: 0,
            joined: false,
            conflicts: BTreeMap::new(),
            alive: BTreeSet::new(),
            won_with: BTreeSet::new(),
            former_lease_until: Duration::ZERO,
            campaign_at: None,
            dice: Dice::new(seed),
            actions: Vec::new(),
        }
    }

    /// Whose grants and acks are enough, from the voter sets in this
    /// node's log. With a voter set, only its members campaign, and more
    /// live members than `replicas` are learners, not a mismatch.
    /// `voter_set_id` is the revision of the newest voter-set record in
    /// the log (0: none).
    pub fn set_quorum(&mut self, quorum: Quorum, voter_set_id: u64) {
        self.voter_set_id = if quorum.is_bootstrap() {
            0
        } else {
            voter_set_id
        };
        self.quorum = quorum;
    }

    /// Members whose `replicas` differs from this node's, with theirs.
    pub fn replicas_conflicts(&self) -> &BTreeMap<String, u64> {
        &self.conflicts
    }

    fn replicas(&self) -> u64 {
        self.config.replicas as u64
    }

    /// Notes the `replicas` a member said it has.
    fn heard_replicas(&mut self, from: &str, theirs: u64) {
        if theirs == self.replicas() {
            self.conflicts.remove(from);
        } else if self.conflicts.insert(from.to_string(), theirs) != Some(theirs) {
            tracing::warn!(
                node = from,
                theirs,
                ours = self.replicas(),
                "a member has a different `replicas`: set the same on every node"
            );
        }
    }

    /// The claim a lease request or pre-vote makes, noting its `replicas`.
    fn heard_ask(&mut self, from: &str, ask: &LeaseAsk) -> Claim {
        self.heard_replicas(from, ask.replicas);
        Claim {
            last: ask.last,
            replicas: ask.replicas,
            voters: ask.voters,
        }
    }

    /// The live members and self.
    fn live_ids(&self) -> BTreeSet<String> {
        let mut ids = self.alive.clone();
        ids.insert(self.me.clone());
        ids
    }

    /// A mismatch of live members and `replicas` matters only before
    /// there is a voter set.
    fn mismatched(&self) -> bool {
        self.mismatch && self.quorum.is_bootstrap()
    }

    /// Who granted the campaign this node won (itself included).
    pub fn won_with(&self) -> &BTreeSet<String> {
        &self.won_with
    }

    /// The other members, and the ones membership currently sees alive,
    /// by node id.
    pub fn set_members(
        &mut self,
        peers: impl IntoIterator<Item = String>,
        alive: impl IntoIterator<Item = String>,
    ) {
        self.peers = peers.into_iter().filter(|p| *p != self.me).collect();
        self.alive = alive.into_iter().filter(|a| *a != self.me).collect();
        self.live = self.alive.len() + 1;
        self.mismatch = self.live > self.config.replicas;
    }

    /// The end of this node's log moved (a diff or sync was applied).
    pub fn set_last(&mut self, last: Position) {
        self.last = last;
        self.highest_seen = self.highest_seen.max(last.epoch);
    }

    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn role(&self) -> Role {
        match self.state {
            State::Follower | State::PreCandidate(_) => Role::Follower,
            State::Candidate(_) => Role::Candidate,
            State::Leader { .. } => Role::Leader,
        }
    }

    pub fn promised(&self) -> u64 {
        self.promised
    }

    /// More live members than `replicas` and no voter set yet: no
    /// campaigns, no grants.
    pub fn replicas_mismatch(&self) -> bool {
        self.mismatched()
    }

    /// The epoch this node leads and until when its lease holds, if it leads.
    pub fn lease(&self, now: Duration) -> Option<(u64, Duration)> {
        match &self.state {
            State::Leader {
                epoch, lease_until, ..
            } if now < *lease_until => Some((*epoch, *lease_until)),
            _ => None,
        }
    }

    /// The leader this node knows of with a live lease (itself included):
    /// a follower serves reads only while this is `Some`.
    pub fn leader(&self, now: Duration) -> Option<(&str, u64)> {
        if let Some((epoch, _)) = self.lease(now) {
            return Some((&self.me, epoch));
        }
        self.leader
            .as_ref()
            .filter(|l| now < l.heard_at + self.config.lease)
            .map(|l| (l.id.as_str(), l.epoch))
    }

    /// When this node last heard from the leader it knows (`now` while it
    /// leads itself); `None` without a live leader.
    pub fn leader_heard_at(&self, now: Duration) -> Option<Duration> {
        if self.lease(now).is_some() {
            return Some(now);
        }
        self.leader
            .as_ref()
            .filter(|l| now < l.heard_at + self.config.lease)
            .map(|l| l.heard_at)
    }

    /// Until when this node may serve local reads: its own lease if it
    /// leads, else L after it last heard from the leader.
    ///
    /// A leader whose lease ran out reads no more, though it steps down
    /// only at its next tick: until then it is still the leader it knows,
    /// heard when it won, and "L after that" would outlast its lease (which
    /// is shortened for clock drift) by up to a tenth of L.
    pub fn read_lease_until(&self, now: Duration) -> Option<Duration> {
        if let State::Leader { .. } = self.state {
            return self.lease(now).map(|(_, until)| until);
        }
        self.leader
            .as_ref()
            .filter(|l| l.id != self.me)
            .map(|l| l.heard_at + self.config.lease)
            .filter(|until| now < *until)
    }

    pub fn tick(&mut self, now: Duration) {
        match &mut self.state {
            State::Leader {
                epoch,
                lease_until,
                next_round,
                last_round_at,
                rounds,
            } => {
                if now >= *lease_until {
                    let epoch = *epoch;
                    self.step_down(epoch, "lease not renewed by a quorum in time");
                } else if now >= *last_round_at + self.config.heartbeat_interval {
                    let (epoch, round) = (*epoch, *next_round);
                    *next_round += 1;
                    *last_round_at = now;
                    rounds.insert(round, (now, BTreeSet::from([self.me.clone()])));
                    self.extend_lease(round);
                    self.broadcast(ElectionMessage::Heartbeat {
                        epoch,
                        leader: self.me.clone(),
                        round,
                        replicas: self.replicas(),
                        voters: self.voter_set_id,
                    });
                }
            }
            State::Candidate(ballot) => {
                if now >= ballot.started + self.config.heartbeat_interval * 2 {
                    self.end_campaign();
                }
            }
            State::PreCandidate(ballot) => {
                if now >= ballot.started + self.config.heartbeat_interval * 2 {
                    self.end_pre_vote();
                }
            }
            State::Follower => {
                if self.may_campaign(now) {
                    let at = *self.campaign_at.get_or_insert_with(|| {
                        let backoff = self.config.heartbeat_interval.mul_f64(self.dice.unit());
                        now + backoff
                    });
                    if now >= at {
                        self.pre_vote(now);
                    }
                } else {
                    self.campaign_at = None;
                }
            }
        }
    }

    pub fn handle(&mut self, from: &str, message: ElectionMessage, now: Duration) {
        match message {
            ElectionMessage::LeaseRequest(ask) => {
                let claim = self.heard_ask(from, &ask);
                self.on_request(ask.epoch, &ask.candidate, claim, now)
            }
            ElectionMessage::LeaseReply {
                epoch,
                granted,
                promised,
            } => self.on_reply(from, epoch, granted, promised, now),
            ElectionMessage::Heartbeat {
                epoch,
                leader,
                round,
                replicas,
                voters,
            } => {
                self.heard_replicas(from, replicas);
                self.on_heartbeat(&leader, epoch, round, voters, now)
            }
            ElectionMessage::HeartbeatAck {
                epoch,
                round,
                ok,
                promised,
                replicas,
            } => {
                self.heard_replicas(from, replicas);
                self.on_ack(from, epoch, round, ok, promised)
            }
            ElectionMessage::PreVote(ask) => {
                let claim = self.heard_ask(from, &ask);
                let (epoch, candidate) = (ask.epoch, ask.candidate);
                let granted = self.may_grant(epoch, &candidate, claim, now);
                let promised = self.promised;
                self.send(
                    &candidate,
                    ElectionMessage::PreVoteReply {
                        epoch,
                        granted,
                        promised,
                    },
                );
            }
            ElectionMessage::PreVoteReply {
                epoch,
                granted,
                promised,
            } => {
                self.highest_seen = self.highest_seen.max(promised);
                self.on_pre_vote_reply(from, epoch, granted, now)
            }
            ElectionMessage::Withdrawn { epoch } => {
                if self
                    .voted
                    .as_ref()
                    .is_some_and(|v| v.candidate == from && v.epoch == epoch)
                {
                    self.voted = None;
                }
            }
        }
    }

    /// A leader that cannot go on (its own log failed) gives up its
    /// leadership now; it still waits out its lease before campaigning.
    pub fn resign(&mut self, reason: &'static str) {
        if let State::Leader { epoch, .. } = self.state {
            self.step_down(epoch, reason);
        }
    }

    fn step_down(&mut self, epoch: u64, reason: &'static str) {
        tracing::warn!(epoch, reason, "stepping down");
        if let State::Leader { lease_until, .. } = self.state {
            self.former_lease_until = self.former_lease_until.max(lease_until);
        }
        self.state = State::Follower;
        if self.leader.as_ref().is_some_and(|l| l.id == self.me) {
            self.leader = None;
        }
        self.actions.push(Action::SteppedDown { epoch, reason });
    }

    fn promise(&mut self, epoch: u64) {
        self.promised = epoch;
        self.highest_seen = self.highest_seen.max(epoch);
        self.actions.push(Action::Persist {
            promised_epoch: epoch,
        });
    }

    fn send(&mut self, to: &str, message: ElectionMessage) {
        self.actions.push(Action::Send {
            to: to.to_string(),
            message,
        });
    }

    fn broadcast(&mut self, message: ElectionMessage) {
        let peers: Vec<String> = self.peers.iter().cloned().collect();
        for to in peers {
            self.send(&to, message.clone());
        }
    }
}
