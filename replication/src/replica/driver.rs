//! The task that owns a replica's [`Election`]: it feeds it time, membership
//! and messages, carries out its actions, and does the leader's and the
//! follower's side of everything else on the peer streams.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pika_membership::{MemberState, Membership};
use tokio::sync::mpsc;

use super::apply::Job;
use super::{DRIFT, Replica, Shared, answer, fail, lock, now_ms};
use crate::Format;
use crate::commit::WriteError;
use crate::election::{Action, Election, Role};
use crate::fanout::{RecentChanges, ReplicationSet};
use crate::record::{Meta, Op};
use crate::store::Snapshot;
use crate::sync::{self, SyncAnswer, SyncAsk, SyncSession, SyncStep};
use crate::wire::{ForwardResult, PeerMessage};

/// `Alive` send times kept to resolve the leader's echo.
const ALIVE_HISTORY: usize = 256;

/// A follower's sync session in progress.
struct Syncing {
    id: u64,
    leader: String,
    session: SyncSession,
    started: Duration,
}

pub(crate) struct Driver {
    replica: Replica,
    membership: Arc<Membership>,
    election: Election,
    jobs: mpsc::UnboundedSender<Job>,
    // Follower side.
    alive_seq: u64,
    alive_sent: VecDeque<(u64, Duration)>,
    /// Read permission from the leader's `SetStatus`, as time since origin.
    permission_until: Option<Duration>,
    followed_epoch: u64,
    syncing: Option<Syncing>,
    next_sync: Duration,
    // Leader side.
    echoes: HashMap<String, u64>,
    serving: BTreeMap<(String, u64), Snapshot>,
}

impl Driver {
    pub(crate) fn new(
        replica: Replica,
        membership: Arc<Membership>,
        election: Election,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> Driver {
        let next_sync = replica.shared.now() + replica.config.sync_interval;
        Driver {
            replica,
            membership,
            election,
            jobs,
            alive_seq: 0,
            alive_sent: VecDeque::new(),
            permission_until: None,
            followed_epoch: 0,
            syncing: None,
            next_sync,
            echoes: HashMap::new(),
            serving: BTreeMap::new(),
        }
    }

    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<(String, PeerMessage)>) {
        let period = (self.replica.config.heartbeat_interval / 4).max(Duration::from_millis(5));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                message = inbox.recv() => match message {
                    Some((from, message)) => self.handle(from, message),
                    None => return,
                },
            }
            self.perform();
            self.publish();
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.replica.shared
    }

    fn leading(&self) -> u64 {
        self.shared().leading.load(Ordering::Acquire)
    }

    fn send(&self, to: &str, message: PeerMessage) {
        self.replica.peers.send(to, message);
    }

    fn tick(&mut self) {
        let now = self.shared().now();
        let members = self.membership.members();
        let live = members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        let peers: Vec<String> = members
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| m.id.node_id.clone())
            .collect();
        self.election.set_members(peers.clone(), live);
        self.election.set_last(self.replica.store.position());
        self.election.tick(now);

        let epoch = self.leading();
        if epoch != 0 {
            self.leader_tick(epoch, now, &peers);
        } else if let Some((leader, _)) = self.election.leader(now).map(|(l, e)| (l.to_string(), e))
        {
            self.follower_tick(&leader, now);
        }
    }

    fn leader_tick(&mut self, epoch: u64, now: Duration, peers: &[String]) {
        let mut set = lock(&self.shared().set);
        let Some(set) = set.as_mut() else {
            return;
        };
        for gone in set.evict_silent(now) {
            tracing::warn!(follower = %gone, "follower left the replication set: silent past its read lease");
        }
        for ready in set.released() {
            answer(ready);
        }
        for peer in peers {
            let status = PeerMessage::SetStatus {
                epoch,
                in_set: set.contains(peer),
                echo: self.echoes.get(peer).copied().unwrap_or(0),
            };
            self.replica.peers.send(peer, status);
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
        let stuck = self
            .syncing
            .as_ref()
            .is_some_and(|s| now > s.started + self.replica.config.forward_timeout);
        if stuck {
            tracing::warn!("sync session timed out; starting over");
            self.syncing = None;
        }
        if now >= self.next_sync && self.syncing.is_none() {
            self.start_sync(leader, now);
        }
    }

    fn start_sync(&mut self, leader: &str, now: Duration) {
        self.next_sync = now + self.replica.config.sync_interval;
        let local = match self.replica.store.merkle() {
            Ok(m) => m,
            Err(e) => return tracing::error!(error = %e, "reading Merkle digests for a sync"),
        };
        let id = super::seed();
        self.syncing = Some(Syncing {
            id,
            leader: leader.to_string(),
            session: SyncSession::new(local),
            started: now,
        });
        tracing::debug!(%leader, "Merkle sync starting");
        self.send(
            leader,
            PeerMessage::SyncRequest {
                session: id,
                ask: SyncAsk::Start,
            },
        );
    }

    fn handle(&mut self, from: String, message: PeerMessage) {
        let now = self.shared().now();
        let epoch = self.leading();
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Election(m) => self.election.handle(&from, m, now),
            PeerMessage::Diff {
                epoch,
                prev,
                changes,
            } => {
                let _ = self.jobs.send(Job::Diff {
                    from,
                    epoch,
                    prev,
                    changes,
                });
            }
            PeerMessage::DiffAck { epoch: e, revision } if e == epoch && epoch != 0 => {
                let current = self.replica.store.revision();
                let batch_sent = lock(&self.shared().sent)
                    .iter()
                    .rev()
                    .find(|(r, _)| *r == revision)
                    .map(|(_, at)| at.elapsed());
                if let Some(latency) = batch_sent {
                    metrics::histogram!("pika_fanout_seconds", "follower" => from.clone())
                        .record(latency.as_secs_f64());
                }
                if let Some(set) = lock(&self.shared().set).as_mut() {
                    if !set.contains(&from) && revision >= current {
                        tracing::info!(follower = %from, revision, "follower caught up: back in the replication set");
                        set.admit(&from, revision, now);
                    }
                    set.heard(&from, Some(revision), now);
                    for ready in set.released() {
                        answer(ready);
                    }
                }
            }
            PeerMessage::DiffAck { .. } => {}
            PeerMessage::Fenced { epoch: e, promised } => {
                tracing::warn!(%from, epoch = e, promised, "a follower fenced off our diff");
            }
            PeerMessage::CatchUp { from: position, .. } if epoch != 0 => {
                let tail = lock(&self.shared().recent).after(position);
                match tail {
                    Some(changes) => self.send(
                        &from,
                        PeerMessage::Diff {
                            epoch,
                            prev: position,
                            changes,
                        },
                    ),
                    None => self.send(&from, PeerMessage::SyncNeeded { epoch }),
                }
            }
            PeerMessage::CatchUp { .. } => {}
            PeerMessage::SyncNeeded { .. } => {
                if self.syncing.is_none() {
                    self.start_sync(&from, now);
                }
            }
            PeerMessage::SyncRequest { session, ask } => self.serve_sync(from, session, ask),
            PeerMessage::SyncReply {
                session,
                revision,
                epoch: snapshot_epoch,
                answer,
            } => self.on_sync_reply(from, session, revision, snapshot_epoch, answer),
            PeerMessage::Alive { seq } => {
                self.echoes.insert(from.clone(), seq);
                if let Some(set) = lock(&self.shared().set).as_mut() {
                    set.heard(&from, None, now);
                }
            }
            PeerMessage::SetStatus {
                epoch: e,
                in_set,
                echo,
            } => {
                let follows = self
                    .election
                    .leader(now)
                    .is_some_and(|(l, le)| l == from && le == e);
                if !follows {
                    return;
                }
                let sent = self
                    .alive_sent
                    .iter()
                    .find(|(s, _)| *s == echo)
                    .map(|(_, t)| *t);
                self.permission_until = match (in_set, sent) {
                    (true, Some(sent)) => Some(sent + self.replica.config.lease),
                    _ => None,
                };
            }
            PeerMessage::Forward { id, request_id, op } => {
                let replica = self.replica.clone();
                tokio::spawn(async move {
                    let result = if replica.status().is_leader {
                        match replica.writes.submit_once(op, Some(request_id)).await {
                            Ok(a) => ForwardResult::Applied(a),
                            Err(WriteError::Rejected(e)) => ForwardResult::Rejected(e),
                            Err(e) => ForwardResult::Unavailable(e.to_string()),
                        }
                    } else {
                        ForwardResult::Unavailable("not the leader".into())
                    };
                    replica
                        .peers
                        .send(&from, PeerMessage::ForwardReply { id, result });
                });
            }
            PeerMessage::ForwardReply { id, result } => {
                if let Some(waiter) = lock(&self.shared().forwards).remove(&id) {
                    let _ = waiter.send(result);
                }
            }
        }
    }

    /// Leader: answers one step of a follower's sync from its session's
    /// snapshot (taken at the session's start).
    fn serve_sync(&mut self, from: String, session: u64, ask: SyncAsk) {
        let epoch = self.leading();
        let refuse = |why: &str| PeerMessage::SyncReply {
            session,
            revision: 0,
            epoch: 0,
            answer: SyncAnswer::Refused(why.to_string()),
        };
        if epoch == 0 {
            return self.send(&from, refuse("not the leader"));
        }
        let key = (from.clone(), session);
        if ask == SyncAsk::Start {
            // One session per follower at a time.
            self.serving.retain(|(f, _), _| *f != from);
            match self.replica.store.snapshot() {
                Ok(snapshot) => {
                    self.serving.insert(key.clone(), snapshot);
                }
                Err(e) => return self.send(&from, refuse(&e.to_string())),
            }
        }
        let Some(snapshot) = self.serving.get(&key) else {
            return self.send(&from, refuse("unknown sync session"));
        };
        let reply = match tokio::task::block_in_place(|| sync::answer(snapshot, &ask)) {
            Ok(answer) => PeerMessage::SyncReply {
                session,
                revision: snapshot.revision,
                epoch: snapshot.epoch,
                answer,
            },
            Err(e) => refuse(&e.to_string()),
        };
        if let SyncAsk::Buckets(buckets) = &ask {
            metrics::counter!("pika_sync_buckets_served_total").increment(buckets.len() as u64);
            self.serving.remove(&key);
        }
        self.send(&from, reply);
    }

    /// Follower: the next step of its own session.
    fn on_sync_reply(
        &mut self,
        from: String,
        session: u64,
        revision: u64,
        snapshot_epoch: u64,
        answer: SyncAnswer,
    ) {
        let Some(syncing) = self
            .syncing
            .as_mut()
            .filter(|s| s.id == session && s.leader == from)
        else {
            return;
        };
        match syncing.session.on_answer(revision, snapshot_epoch, answer) {
            SyncStep::Ask(ask) => self.send(&from, PeerMessage::SyncRequest { session, ask }),
            SyncStep::Install {
                buckets,
                paths,
                revision,
                epoch,
            } => {
                self.syncing = None;
                let _ = self.jobs.send(Job::Install {
                    from,
                    leader_epoch: self.followed_epoch,
                    buckets,
                    paths,
                    revision,
                    epoch,
                });
            }
            SyncStep::InSync { .. } => {
                self.syncing = None;
                lock(&self.shared().status).last_sync = Some(super::SyncRecord {
                    at_ms: now_ms(),
                    revision,
                    buckets: 0,
                    paths: 0,
                });
                // Equal at the snapshot; ask for anything committed since.
                let position = self.replica.store.position();
                self.send(
                    &from,
                    PeerMessage::CatchUp {
                        epoch: self.followed_epoch,
                        from: position,
                    },
                );
            }
            SyncStep::Failed(why) => {
                tracing::debug!(%why, "sync refused");
                self.syncing = None;
            }
        }
    }

    fn perform(&mut self) {
        for action in self.election.drain_actions() {
            match action {
                Action::Persist { promised_epoch } => {
                    let store = &self.replica.store;
                    // The grant or ack that follows must not leave before this is on disk.
                    if let Err(e) =
                        tokio::task::block_in_place(|| store.set_promised_epoch(promised_epoch))
                    {
                        tracing::error!(error = %e, "cannot persist the promised epoch; dropping the rest of this round");
                        return;
                    }
                }
                Action::Send { to, message } => self.send(&to, PeerMessage::Election(message)),
                Action::BecameLeader { epoch } => self.lead(epoch),
                Action::SteppedDown { epoch, reason } => {
                    metrics::counter!("pika_step_downs_total").increment(1);
                    tracing::warn!(epoch, reason, "no longer the leader");
                    self.shared().leading.store(0, Ordering::Release);
                    self.serving.clear();
                    if let Some(mut set) = lock(&self.shared().set).take() {
                        for answers in set.drain() {
                            fail(
                                answers,
                                "leadership lost before the write was acknowledged; it may or may not take effect",
                            );
                        }
                    }
                }
                Action::Following { leader, epoch } => {
                    tracing::info!(%leader, epoch, "following");
                    self.followed_epoch = epoch;
                    self.permission_until = None;
                    // A new leader (or our first): compare trees now.
                    let now = self.shared().now();
                    self.syncing = None;
                    self.start_sync(&leader, now);
                }
            }
        }
    }

    fn lead(&mut self, epoch: u64) {
        metrics::counter!("pika_elections_won_total").increment(1);
        let now = self.shared().now();
        let followers = self
            .membership
            .members()
            .into_iter()
            .filter(|m| !m.is_self && m.state == MemberState::Alive)
            .map(|m| m.id.node_id);
        let config = &self.replica.config;
        let eviction = config.lease.mul_f64(1.0 + DRIFT);
        *lock(&self.shared().recent) =
            RecentChanges::new(self.replica.store.position(), super::RECENT_CHANGES);
        *lock(&self.shared().set) = Some(ReplicationSet::new(
            config.replicas / 2 + 1,
            eviction,
            followers,
            now,
        ));
        self.echoes.clear();
        self.shared().leading.store(epoch, Ordering::Release);
        tracing::info!(epoch, "leading; writing the lock record");
        let record = serde_json::json!({
            "holder": self.replica.store.node_id(),
            "peer_addr": self.membership.me().addr.to_string(),
            "http_addr": config.http_addr,
            "epoch": epoch,
            "since_ms": now_ms(),
            "lease_ms": config.lease.as_millis() as u64,
        });
        let meta = Meta {
            format: Format::Json,
            description: "pika leader lock".into(),
        };
        let replica = self.replica.clone();
        let path = config.lock_path.clone();
        tokio::spawn(async move {
            let op = match Op::put(path, meta, record.to_string().into_bytes(), None) {
                Ok(op) => op,
                Err(e) => return tracing::error!(error = %e, "lock record"),
            };
            if let Err(e) = replica.writes.submit(op).await {
                tracing::warn!(epoch, error = %e, "writing the lock record failed");
            }
        });
    }

    fn publish(&self) {
        let now = self.shared().now();
        let leader = self
            .election
            .leader(now)
            .map(|(id, epoch)| (id.to_string(), epoch));
        let role = self.election.role();
        let is_leader = role == Role::Leader && self.leading() != 0;
        // A follower reads only with both the leader's heartbeat (election
        // read lease) and its word that we are in the replication set.
        let read_until = match (is_leader, self.election.read_lease_until(now)) {
            (true, until) => until,
            (false, Some(until)) => self.permission_until.map(|p| p.min(until)),
            (false, None) => None,
        };
        *lock(&self.shared().read_lease_until) = read_until;
        let set = lock(&self.shared().set)
            .as_ref()
            .map(|s| s.followers().into_iter().map(|f| (f.id, f.acked)).collect())
            .unwrap_or_default();
        let mut status = lock(&self.shared().status);
        status.role = match role {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
        }
        .into();
        status.is_leader = is_leader;
        status.epoch = leader.as_ref().map_or(0, |(_, e)| *e);
        status.leader_id = leader.map(|(id, _)| id);
        status.promised_epoch = self.election.promised();
        status.leader_healthy = read_until.is_some_and(|u| now < u);
        status.replication_set = set;
        status.replicas_mismatch = self.election.replicas_mismatch();
    }
}
