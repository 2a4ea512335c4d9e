//! The replica's protocol, sans IO: election, the leader's fan-out and
//! catch-up, the follower's ordered apply, read permission and Merkle sync.
//!
//! [`ReplicaCore`] takes calls with the current time (its node's own clock)
//! and produces [`Output`]s; durable state goes through [`Storage`], which
//! the real node implements with its redb [`Store`] and simulations with an
//! in-memory one. Nothing here reads a clock, spawns a task or opens a
//! socket, which is what lets `tests/replica_sim.rs` replay thousands of
//! seeded fault schedules exactly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::dice::Dice;
use crate::election::{Action, Election, ElectionConfig, Position, Role};
use crate::fanout::{RecentChanges, ReplicationSet};
use crate::merkle::MerkleBuckets;
use crate::record::{Change, Op};
use crate::store::{ApplyError, PathState, Snapshot, Store, StoreError};
use crate::sync::{self, SyncAnswer, SyncAsk, SyncSession, SyncStep};
use crate::wire::{ForwardResult, PeerMessage};

/// Assumed bound on relative clock drift.
pub const DRIFT: f64 = 0.1;
/// Changes a leader keeps in memory for followers that fall a little behind.
pub const RECENT_CHANGES: usize = 16 * 1024;
/// `Alive` send times kept to resolve the leader's echo.
const ALIVE_HISTORY: usize = 256;

/// The durable state a replica works on.
pub trait Storage {
    fn position(&self) -> Position;
    fn promised_epoch(&self) -> u64;
    /// Returns once the promise is durable.
    fn persist_promise(&self, epoch: u64) -> Result<(), StoreError>;
    fn apply(&self, changes: &[Change]) -> Result<(), ApplyError>;
    fn install(
        &self,
        buckets: &[u16],
        paths: &[PathState],
        revision: u64,
        epoch: u64,
    ) -> Result<(), StoreError>;
    fn merkle(&self) -> Result<MerkleBuckets, StoreError>;
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
}

/// The node's redb store. Simulations use the same type, opened in memory.
impl Storage for std::sync::Arc<Store> {
    fn position(&self) -> Position {
        Store::position(self)
    }
    fn promised_epoch(&self) -> u64 {
        Store::promised_epoch(self)
    }
    fn persist_promise(&self, epoch: u64) -> Result<(), StoreError> {
        self.set_promised_epoch(epoch)
    }
    fn apply(&self, changes: &[Change]) -> Result<(), ApplyError> {
        Store::apply(self, changes)
    }
    fn install(
        &self,
        buckets: &[u16],
        paths: &[PathState],
        revision: u64,
        epoch: u64,
    ) -> Result<(), StoreError> {
        Store::install(self, buckets, paths, revision, epoch)
    }
    fn merkle(&self) -> Result<MerkleBuckets, StoreError> {
        Store::merkle(self)
    }
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Store::snapshot(self)
    }
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// L: `heartbeat_timeout`.
    pub lease: Duration,
    pub sync_interval: Duration,
    /// A sync session silent for this long is abandoned, and a catch-up
    /// request unanswered for this long is asked again.
    pub sync_timeout: Duration,
}

/// What the node must do for the core.
#[derive(Debug)]
pub enum Output {
    Send {
        to: String,
        message: PeerMessage,
    },
    /// Writes waiting on these tokens are acknowledged.
    Release(Vec<u64>),
    /// Writes waiting on these tokens will not be acknowledged.
    Fail(Vec<u64>, &'static str),
    /// This node leads `epoch`: write the lock record as its first op.
    BecameLeader {
        epoch: u64,
    },
    SteppedDown {
        epoch: u64,
    },
    /// A follower's write to apply through the local write path.
    Forwarded {
        from: String,
        id: u64,
        request_id: String,
        op: Op,
    },
    /// The leader's answer to a write this node forwarded.
    ForwardAnswered {
        id: u64,
        result: ForwardResult,
    },
}

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
    /// Followers in the leader's replication set with what they acknowledged.
    pub replication_set: Vec<(String, u64)>,
    /// This follower found a gap and serves no reads until it is repaired.
    pub behind: bool,
    pub replicas_mismatch: bool,
    /// The last Merkle sync this node completed as a follower.
    pub last_sync: Option<SyncRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRecord {
    /// On this node's clock (time since its origin), in milliseconds.
    pub at_ms: u64,
    pub revision: u64,
    pub buckets: usize,
    pub paths: usize,
}

struct Syncing {
    id: u64,
    leader: String,
    session: SyncSession,
    started: Duration,
}

struct Leading {
    epoch: u64,
    set: ReplicationSet<u64>,
    recent: RecentChanges,
    /// Batch send times by last revision, for the fan-out latency metric.
    sent: VecDeque<(u64, Duration)>,
    echoes: HashMap<String, u64>,
    serving: BTreeMap<(String, u64), Snapshot>,
}

pub struct ReplicaCore<S: Storage> {
    me: String,
    config: CoreConfig,
    storage: S,
    election: Election,
    peers: Vec<String>,
    /// Peers membership reports alive: a new leader's replication set.
    alive: Vec<String>,
    leading: Option<Leading>,
    // Follower side.
    alive_seq: u64,
    alive_sent: VecDeque<(u64, Duration)>,
    permission_until: Option<Duration>,
    followed_epoch: u64,
    syncing: Option<Syncing>,
    next_sync: Duration,
    behind: bool,
    /// The last catch-up request: whom it asked, from which log end, and
    /// when.
    catch_up_asked: Option<(String, Position, Duration)>,
    last_sync: Option<SyncRecord>,
    dice: Dice,
    outputs: Vec<Output>,
}

impl<S: Storage> ReplicaCore<S> {
    pub fn new(
        me: impl Into<String>,
        config: CoreConfig,
        storage: S,
        seed: u64,
        now: Duration,
    ) -> Self {
        let me = me.into();
        let election = Election::new(
            me.clone(),
            ElectionConfig {
                replicas: config.replicas,
                heartbeat_interval: config.heartbeat_interval,
                lease: config.lease,
                drift: DRIFT,
            },
            storage.promised_epoch(),
            storage.position(),
            seed,
            now,
        );
        let next_sync = now + config.sync_interval;
        ReplicaCore {
            me,
            config,
            storage,
            election,
            peers: Vec::new(),
            alive: Vec::new(),
            leading: None,
            alive_seq: 0,
            alive_sent: VecDeque::new(),
            permission_until: None,
            followed_epoch: 0,
            syncing: None,
            next_sync,
            behind: false,
            catch_up_asked: None,
            last_sync: None,
            dice: Dice::new(seed.rotate_left(17)),
            outputs: Vec::new(),
        }
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The other members by node id, and which of them are alive.
    pub fn set_members(&mut self, peers: Vec<String>, alive: Vec<String>) {
        let me = self.me.clone();
        self.alive = alive.into_iter().filter(|p| *p != me).collect();
        self.election
            .set_members(peers.clone(), self.alive.len() + 1);
        self.peers = peers.into_iter().filter(|p| *p != me).collect();
    }

    /// The epoch a write may be committed in now, or why not.
    pub fn write_epoch(&self) -> Result<u64, &'static str> {
        match &self.leading {
            None => Err("this node is not the leader"),
            Some(l) if !l.set.has_quorum() => {
                Err("fewer than a quorum of replicas in the replication set")
            }
            Some(l) => Ok(l.epoch),
        }
    }

    /// The epoch this node leads with a valid lease, if any.
    pub fn lease(&self, now: Duration) -> Option<u64> {
        self.election.lease(now).map(|(e, _)| e)
    }

    /// Until when local reads may be served.
    pub fn read_until(&self, now: Duration) -> Option<Duration> {
        let until = self.election.read_lease_until(now);
        if self.leading.is_some() && self.election.role() == Role::Leader {
            return until;
        }
        if self.behind {
            return None;
        }
        until.and_then(|u| self.permission_until.map(|p| p.min(u)))
    }

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
                        .map(|f| (f.id, f.acked))
                        .collect()
                })
                .unwrap_or_default(),
            behind: self.behind,
            replicas_mismatch: self.election.replicas_mismatch(),
            last_sync: self.last_sync.clone(),
        }
    }

    /// Leader: a batch's changes are decided; ship them to every peer before
    /// the local fsync.
    pub fn ship(&mut self, epoch: u64, changes: &[Change], now: Duration) {
        let Some(leading) = self.leading.as_mut().filter(|l| l.epoch == epoch) else {
            return;
        };
        let prev = leading.recent.end();
        leading.recent.push(changes);
        if let Some(last) = changes.last() {
            leading.sent.push_back((last.revision, now));
            while leading.sent.len() > 4096 {
                leading.sent.pop_front();
            }
        }
        let message = PeerMessage::Diff {
            epoch,
            prev,
            changes: changes.to_vec(),
        };
        for peer in self.peers.clone() {
            self.send(&peer, message.clone());
        }
    }

    /// Leader: the batch is durable here; answer `token` once the set has
    /// `revision`.
    pub fn wait(&mut self, epoch: u64, revision: u64, token: u64, now: Duration) {
        match self.leading.as_mut().filter(|l| l.epoch == epoch) {
            Some(leading) => {
                leading.set.wait(revision, token);
                self.release_ready(now);
            }
            None => self.outputs.push(Output::Fail(vec![token], LOST)),
        }
    }

    /// Acknowledges what the set has, but only inside this node's lease: a
    /// leader never acknowledges while another may hold a lease. What waits
    /// when the lease runs out is failed at step-down.
    fn release_ready(&mut self, now: Duration) {
        if self.election.lease(now).is_none() {
            return;
        }
        if let Some(leading) = self.leading.as_mut() {
            let ready = leading.set.released();
            if !ready.is_empty() {
                self.outputs.push(Output::Release(ready));
            }
        }
    }

    pub fn tick(&mut self, now: Duration) {
        self.election.set_last(self.storage.position());
        self.election.tick(now);
        self.perform_election(now);
        if let Some(epoch) = self.leading.as_ref().map(|l| l.epoch) {
            self.leader_tick(epoch, now);
        } else if let Some(leader) = self.election.leader(now).map(|(l, _)| l.to_string()) {
            self.follower_tick(&leader, now);
        }
    }

    pub fn handle(&mut self, from: String, message: PeerMessage, now: Duration) {
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Election(m) => {
                self.election.handle(&from, m, now);
                self.perform_election(now);
            }
            PeerMessage::Diff {
                epoch,
                prev,
                changes,
            } => self.on_diff(&from, epoch, prev, changes, now),
            PeerMessage::DiffAck { epoch, revision } => self.on_ack(&from, epoch, revision, now),
            PeerMessage::Fenced { epoch, promised } => {
                tracing::warn!(%from, epoch, promised, "a follower fenced off our diff");
            }
            PeerMessage::CatchUp { from: position, .. } => {
                let Some(leading) = &self.leading else { return };
                let epoch = leading.epoch;
                let reply = match leading.recent.after(position) {
                    Some(changes) => PeerMessage::Diff {
                        epoch,
                        prev: position,
                        changes,
                    },
                    None => PeerMessage::SyncNeeded { epoch },
                };
                self.send(&from, reply);
            }
            PeerMessage::SyncNeeded { .. } => {
                if self.syncing.is_none() {
                    self.start_sync(&from, now);
                }
            }
            PeerMessage::SyncRequest { session, ask } => self.serve_sync(from, session, ask),
            PeerMessage::SyncReply {
                session,
                revision,
                epoch,
                answer,
            } => self.on_sync_reply(from, session, revision, epoch, answer, now),
            PeerMessage::Alive { seq } => {
                if let Some(leading) = self.leading.as_mut() {
                    leading.echoes.insert(from.clone(), seq);
                    leading.set.heard(&from, None, now);
                }
            }
            PeerMessage::SetStatus {
                epoch,
                in_set,
                echo,
                lease_left,
            } => {
                let follows = self
                    .election
                    .leader(now)
                    .is_some_and(|(l, e)| l == from && e == epoch);
                if follows {
                    let sent = self
                        .alive_sent
                        .iter()
                        .find(|(s, _)| *s == echo)
                        .map(|(_, t)| *t);
                    // Permission runs from when we sent the echoed `Alive`
                    // (before the leader wrote this), for L but never past
                    // the leader's own lease, read on its clock and
                    // shortened for drift: a new leader can be elected once
                    // that lease is over, and it acknowledges without us.
                    let left = lease_left.mul_f64(1.0 - DRIFT).min(self.config.lease);
                    self.permission_until = match (in_set, sent) {
                        (true, Some(sent)) => Some(sent + left),
                        _ => None,
                    };
                }
            }
            PeerMessage::Forward { id, request_id, op } => {
                if self.leading.is_some() {
                    self.outputs.push(Output::Forwarded {
                        from,
                        id,
                        request_id,
                        op,
                    });
                } else {
                    let result = ForwardResult::Unavailable("not the leader".into());
                    self.send(&from, PeerMessage::ForwardReply { id, result });
                }
            }
            PeerMessage::ForwardReply { id, result } => {
                self.outputs.push(Output::ForwardAnswered { id, result })
            }
        }
    }

    fn send(&mut self, to: &str, message: PeerMessage) {
        self.outputs.push(Output::Send {
            to: to.to_string(),
            message,
        });
    }

    fn leader_tick(&mut self, epoch: u64, now: Duration) {
        // What is left of this node's lease bounds the followers' read
        // permission: with no lease left, no follower may read on our word.
        let lease_left = self
            .election
            .lease(now)
            .map_or(Duration::ZERO, |(_, until)| until.saturating_sub(now));
        let Some(leading) = self.leading.as_mut() else {
            return;
        };
        for gone in leading.set.evict_silent(now) {
            tracing::warn!(follower = %gone, "follower left the replication set: silent past its read lease");
        }
        let mut messages: Vec<(String, PeerMessage)> = self
            .peers
            .iter()
            .map(|peer| {
                let message = PeerMessage::SetStatus {
                    epoch,
                    in_set: leading.set.may_read(peer),
                    echo: leading.echoes.get(peer).copied().unwrap_or(0),
                    lease_left,
                };
                (peer.clone(), message)
            })
            .collect();
        // An empty diff at our log end: a follower that already holds it
        // acknowledges (and is confirmed) without waiting for a write; one
        // that does not asks to catch up.
        let probe = PeerMessage::Diff {
            epoch,
            prev: leading.recent.end(),
            changes: Vec::new(),
        };
        for peer in leading.set.unconfirmed() {
            messages.push((peer, probe.clone()));
        }
        self.release_ready(now);
        for (to, message) in messages {
            self.send(&to, message);
        }
    }

    fn follower_tick(&mut self, leader: &str, now: Duration) {
        self.alive_seq += 1;
        self.alive_sent.push_back((self.alive_seq, now));
        while self.alive_sent.len() > ALIVE_HISTORY {
            self.alive_sent.pop_front();
        }
        self.send(
            leader,
            PeerMessage::Alive {
                seq: self.alive_seq,
            },
        );
        if self
            .syncing
            .as_ref()
            .is_some_and(|s| now > s.started + self.config.sync_timeout)
        {
            tracing::warn!("sync session timed out; starting over");
            self.syncing = None;
        }
        if now >= self.next_sync && self.syncing.is_none() {
            self.start_sync(leader, now);
        }
        // Without leave to read we are out of the set or not confirmed yet:
        // keep asking to catch up (a lost request must not leave us out
        // until the next write or sync).
        let may_read = self.permission_until.is_some_and(|p| now < p);
        if !may_read && self.syncing.is_none() {
            self.request_catch_up(leader, now);
        }
    }

    fn on_diff(
        &mut self,
        from: &str,
        epoch: u64,
        prev: Position,
        changes: Vec<Change>,
        now: Duration,
    ) {
        let promised = self.storage.promised_epoch();
        if epoch < promised {
            metrics::counter!("pika_diffs_fenced_total").increment(1);
            tracing::info!(%from, epoch, promised, "diff from a deposed epoch refused");
            return self.send(from, PeerMessage::Fenced { epoch, promised });
        }
        let pos = self.storage.position();
        if changes.last().is_some_and(|c| c.revision <= pos.revision) && prev != pos {
            return; // a resent diff this log already holds
        }
        let todo = if prev == pos {
            Some(changes)
        } else {
            changes
                .iter()
                .position(|c| c.revision == pos.revision && c.epoch == pos.epoch)
                .map(|at| changes[at + 1..].to_vec())
        };
        let Some(todo) = todo else {
            self.behind = true;
            tracing::debug!(?pos, ?prev, "diff does not continue this log: catching up");
            return self.request_catch_up(from, now);
        };
        match self.storage.apply(&todo) {
            Ok(()) => {
                self.behind = false;
                self.catch_up_asked = None;
                let revision = self.storage.position().revision;
                self.send(from, PeerMessage::DiffAck { epoch, revision });
            }
            Err(ApplyError::Gap { .. }) => self.behind = true,
            Err(ApplyError::Store(e)) => tracing::error!(error = %e, "applying a diff failed"),
        }
    }

    fn on_ack(&mut self, from: &str, epoch: u64, revision: u64, now: Duration) {
        let current = self.storage.position().revision;
        let Some(leading) = self.leading.as_mut().filter(|l| l.epoch == epoch) else {
            return;
        };
        if let Some((_, at)) = leading.sent.iter().rev().find(|(r, _)| *r == revision) {
            metrics::histogram!("pika_fanout_seconds", "follower" => from.to_string())
                .record(now.saturating_sub(*at).as_secs_f64());
        }
        if !leading.set.contains(from) && revision >= current {
            tracing::info!(follower = %from, revision, "follower caught up: back in the replication set");
            leading.set.admit(from, revision, now);
        }
        leading.set.heard(from, Some(revision), now);
        self.release_ready(now);
    }

    fn start_sync(&mut self, leader: &str, now: Duration) {
        self.next_sync = now + self.config.sync_interval;
        let local = match self.storage.merkle() {
            Ok(m) => m,
            Err(e) => return tracing::error!(error = %e, "reading Merkle digests for a sync"),
        };
        let id = self.dice.next_u64();
        self.syncing = Some(Syncing {
            id,
            leader: leader.to_string(),
            session: SyncSession::new(local),
            started: now,
        });
        self.send(
            leader,
            PeerMessage::SyncRequest {
                session: id,
                ask: SyncAsk::Start,
            },
        );
    }

    /// Leader: one step of a follower's sync, from the session's snapshot.
    fn serve_sync(&mut self, from: String, session: u64, ask: SyncAsk) {
        let refuse = |why: String| PeerMessage::SyncReply {
            session,
            revision: 0,
            epoch: 0,
            answer: SyncAnswer::Refused(why),
        };
        let Some(leading) = self.leading.as_mut() else {
            return self.send(&from, refuse("not the leader".into()));
        };
        let key = (from.clone(), session);
        if ask == SyncAsk::Start {
            leading.serving.retain(|(f, _), _| *f != from);
            match self.storage.snapshot() {
                Ok(snapshot) => {
                    leading.serving.insert(key.clone(), snapshot);
                }
                Err(e) => return self.send(&from, refuse(e.to_string())),
            }
        }
        let reply = match leading.serving.get(&key) {
            None => refuse("unknown sync session".into()),
            Some(snapshot) => match sync::answer(snapshot, &ask) {
                Ok(answer) => PeerMessage::SyncReply {
                    session,
                    revision: snapshot.revision,
                    epoch: snapshot.epoch,
                    answer,
                },
                Err(e) => refuse(e.to_string()),
            },
        };
        if let SyncAsk::Buckets(buckets) = &ask {
            metrics::counter!("pika_sync_buckets_served_total").increment(buckets.len() as u64);
            leading.serving.remove(&key);
        }
        self.send(&from, reply);
    }

    /// Follower: the next step of its own session.
    fn on_sync_reply(
        &mut self,
        from: String,
        session: u64,
        revision: u64,
        epoch: u64,
        answer: SyncAnswer,
        now: Duration,
    ) {
        let Some(syncing) = self
            .syncing
            .as_mut()
            .filter(|s| s.id == session && s.leader == from)
        else {
            return;
        };
        let record = |buckets: usize, paths: usize| SyncRecord {
            at_ms: now.as_millis() as u64,
            revision,
            buckets,
            paths,
        };
        match syncing.session.on_answer(revision, epoch, answer) {
            SyncStep::Ask(ask) => self.send(&from, PeerMessage::SyncRequest { session, ask }),
            SyncStep::Install {
                buckets,
                paths,
                revision,
                epoch,
            } => {
                self.syncing = None;
                match self.storage.install(&buckets, &paths, revision, epoch) {
                    Ok(()) => {
                        metrics::counter!("pika_syncs_total").increment(1);
                        metrics::counter!("pika_sync_buckets_transferred_total")
                            .increment(buckets.len() as u64);
                        tracing::info!(
                            buckets = buckets.len(),
                            paths = paths.len(),
                            revision,
                            "Merkle sync installed"
                        );
                        self.last_sync = Some(record(buckets.len(), paths.len()));
                        self.catch_up(&from, now);
                    }
                    Err(e) => tracing::error!(error = %e, "installing sync buckets failed"),
                }
            }
            SyncStep::InSync { revision, epoch } => {
                self.syncing = None;
                self.last_sync = Some(record(0, 0));
                // Same content, but our log may end at another position
                // (changes that cancelled out, or an older label): take
                // the snapshot's, or catching up from ours finds no point
                // in the leader's log and asks for a sync forever.
                let here = self.storage.position();
                if here != (Position { epoch, revision })
                    && let Err(e) = self.storage.install(&[], &[], revision, epoch)
                {
                    return tracing::error!(error = %e, "adopting the leader's position failed");
                }
                self.catch_up(&from, now);
            }
            SyncStep::Failed(why) => {
                tracing::debug!(%why, "sync refused");
                self.syncing = None;
            }
        }
    }

    /// Asks the leader for whatever it committed after this log's end.
    fn catch_up(&mut self, leader: &str, now: Duration) {
        let from = self.storage.position();
        self.catch_up_asked = Some((leader.to_string(), from, now));
        let epoch = self.followed_epoch;
        self.send(leader, PeerMessage::CatchUp { epoch, from });
    }

    /// [`Self::catch_up`], at most once per heartbeat interval, and from
    /// the same log end only once per `sync_timeout`: the answer to that
    /// very request may still be on its way (thousands of changes take a
    /// while to send and apply), and asking again would ship them twice.
    fn request_catch_up(&mut self, leader: &str, now: Duration) {
        let from = self.storage.position();
        let due = match &self.catch_up_asked {
            None => true,
            Some((to, _, _)) if to != leader => true,
            Some((_, asked, at)) if *asked == from => now >= *at + self.config.sync_timeout,
            Some((_, _, at)) => now >= *at + self.config.heartbeat_interval,
        };
        if due {
            self.catch_up(leader, now);
        }
    }

    fn perform_election(&mut self, now: Duration) {
        for action in self.election.drain_actions() {
            match action {
                Action::Persist { promised_epoch } => {
                    // Whatever follows must not leave before this is on disk.
                    if let Err(e) = self.storage.persist_promise(promised_epoch) {
                        tracing::error!(error = %e, "cannot persist the promised epoch; dropping the rest of this round");
                        return;
                    }
                }
                Action::Send { to, message } => self.send(&to, PeerMessage::Election(message)),
                Action::BecameLeader { epoch } => self.lead(epoch, now),
                Action::SteppedDown { epoch, reason } => {
                    metrics::counter!("pika_step_downs_total").increment(1);
                    tracing::warn!(epoch, reason, "no longer the leader");
                    if let Some(mut leading) = self.leading.take() {
                        let waiting = leading.set.drain();
                        if !waiting.is_empty() {
                            self.outputs.push(Output::Fail(waiting, LOST));
                        }
                    }
                    self.outputs.push(Output::SteppedDown { epoch });
                }
                Action::Following { leader, epoch } => {
                    tracing::info!(%leader, epoch, "following");
                    self.followed_epoch = epoch;
                    self.permission_until = None;
                    self.syncing = None;
                    // A new leader (or our first): ask for what we miss.
                    // The leader answers from its recent changes when it
                    // can, so a short absence costs what changed; it says
                    // `SyncNeeded` (a Merkle sync) when it cannot. A request
                    // already on its way to this leader (its diffs can come
                    // before its heartbeat) is not repeated.
                    self.request_catch_up(&leader, now);
                }
            }
        }
    }

    fn lead(&mut self, epoch: u64, now: Duration) {
        metrics::counter!("pika_elections_won_total").increment(1);
        let eviction = self.config.lease.mul_f64(1.0 + DRIFT);
        let quorum = self.config.replicas / 2 + 1;
        self.leading = Some(Leading {
            epoch,
            set: ReplicationSet::new(
                quorum,
                eviction,
                self.storage.position().revision,
                self.alive.clone(),
                now,
            ),
            recent: RecentChanges::new(self.storage.position(), RECENT_CHANGES),
            sent: VecDeque::new(),
            echoes: HashMap::new(),
            serving: BTreeMap::new(),
        });
        tracing::info!(epoch, "leading");
        self.outputs.push(Output::BecameLeader { epoch });
    }
}

const LOST: &str =
    "leadership lost before the write was acknowledged; it may or may not take effect";
