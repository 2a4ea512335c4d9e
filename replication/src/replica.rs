//! A replica: the tokio side that runs [`Election`] and the
//! [`ReplicationSet`] over [`Peers`], applies diffs as a follower, ships them
//! as a leader, and forwards writes to whoever leads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pika_membership::{MemberState, Membership};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::Format;
use crate::commit::{BatchLimits, CommitPolicy, Reply, WriteError, WriteQueue};
use crate::election::{Action, Election, ElectionConfig, ElectionMessage, Role};
use crate::fanout::ReplicationSet;
use crate::path::ConfigPath;
use crate::peers::{Faults, Peers};
use crate::record::{Applied, Change, Meta, Op};
use crate::store::{ApplyError, Store};
use crate::wire::{ForwardResult, PeerMessage};

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// L: `heartbeat_timeout`.
    pub lease: Duration,
    pub forward_timeout: Duration,
    /// Where the leader writes its lock record: `{prefix}/{lock_key}`.
    pub lock_path: ConfigPath,
    /// This node's HTTP address, for the lock record.
    pub http_addr: String,
}

const DRIFT: f64 = 0.1;

type Answers = Vec<(Reply, Result<Applied, WriteError>)>;

/// What the status API shows of replication; refreshed by the driver.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStatus {
    pub role: String,
    pub is_leader: bool,
    pub leader_id: Option<String>,
    pub epoch: u64,
    pub promised_epoch: u64,
    /// The leader is known and its lease (or this follower's read lease) holds.
    pub leader_healthy: bool,
    /// Followers in the leader's replication set with what they acknowledged.
    pub replication_set: Vec<(String, u64)>,
    /// This follower found a gap and serves no reads until it is repaired.
    pub behind: bool,
    pub replicas_mismatch: bool,
}

struct Shared {
    origin: Instant,
    /// The epoch this node leads, 0 when it does not.
    leading: AtomicU64,
    set: Mutex<Option<ReplicationSet<Answers>>>,
    status: Mutex<ReplicaStatus>,
    /// Until when local reads are allowed (read lease), as time since origin.
    read_lease_until: Mutex<Option<Duration>>,
    forwards: Mutex<HashMap<u64, oneshot::Sender<ForwardResult>>>,
    next_forward: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The leader's commit policy: diffs go out before the local commit, and
/// writers are answered once the replication set has the batch.
struct LeaderPolicy {
    shared: Arc<Shared>,
    peers: Arc<Peers>,
    membership: Arc<Membership>,
}

impl CommitPolicy for LeaderPolicy {
    fn epoch(&self) -> Result<u64, WriteError> {
        let epoch = self.shared.leading.load(Ordering::Acquire);
        let quorate = lock(&self.shared.set)
            .as_ref()
            .is_some_and(|s| s.has_quorum());
        match (epoch, quorate) {
            (0, _) => Err(WriteError::Unavailable(
                "this node is not the leader".into(),
            )),
            (_, false) => Err(WriteError::Unavailable(
                "fewer than a quorum of replicas in the replication set".into(),
            )),
            (epoch, true) => Ok(epoch),
        }
    }

    fn before_commit(&self, epoch: u64, changes: &[Change]) {
        let message = PeerMessage::Diff {
            epoch,
            changes: changes.to_vec(),
        };
        for member in self.membership.members() {
            if !member.is_self && member.state != MemberState::Down {
                self.peers.send(&member.id.node_id, message.clone());
            }
        }
    }

    fn committed(&self, epoch: u64, waits_for: Option<u64>, answers: Answers) {
        let Some(revision) = waits_for else {
            answer(answers);
            return;
        };
        let mut set = lock(&self.shared.set);
        match set.as_mut() {
            Some(s) if self.shared.leading.load(Ordering::Acquire) == epoch => {
                s.wait(revision, answers);
                for ready in s.released() {
                    answer(ready);
                }
            }
            _ => fail(
                answers,
                "leadership lost before the write was acknowledged; it may or may not take effect",
            ),
        }
    }
}

fn answer(answers: Answers) {
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}

fn fail(answers: Answers, why: &str) {
    for (reply, _) in answers {
        let _ = reply.send(Err(WriteError::Unavailable(why.to_string())));
    }
}

/// The background work of a replica, for an orderly stop.
pub struct ReplicaTasks {
    committer: std::thread::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReplicaTasks {
    /// Stops the driver and applier, then waits for the committer to answer
    /// what is queued. Call after dropping every other [`Replica`] handle.
    pub async fn stop(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let committer = self.committer;
        let _ = tokio::task::spawn_blocking(move || committer.join()).await;
    }
}

/// The handle the HTTP layer uses. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    store: Arc<Store>,
    writes: WriteQueue,
    shared: Arc<Shared>,
    peers: Arc<Peers>,
    config: ReplicaConfig,
}

impl Replica {
    /// Starts the committer, the applier and the driver.
    pub fn start(
        store: Arc<Store>,
        membership: Arc<Membership>,
        config: ReplicaConfig,
    ) -> std::io::Result<(Replica, ReplicaTasks)> {
        let me = store.node_id().to_string();
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            leading: AtomicU64::new(0),
            set: Mutex::new(None),
            status: Mutex::new(ReplicaStatus::default()),
            read_lease_until: Mutex::new(None),
            forwards: Mutex::new(HashMap::new()),
            next_forward: AtomicU64::new(1),
        });
        let (peers, inbox) =
            Peers::start(me.clone(), membership.clone(), config.heartbeat_interval);
        let policy = Arc::new(LeaderPolicy {
            shared: shared.clone(),
            peers: peers.clone(),
            membership: membership.clone(),
        });
        let (writes, committer) =
            WriteQueue::start_with(store.clone(), BatchLimits::default(), policy)?;
        let election = Election::new(
            me,
            ElectionConfig {
                replicas: config.replicas,
                heartbeat_interval: config.heartbeat_interval,
                lease: config.lease,
                drift: DRIFT,
            },
            store.promised_epoch(),
            store.position(),
            seed(),
            shared.now(),
        );
        let replica = Replica {
            store: store.clone(),
            writes,
            shared: shared.clone(),
            peers: peers.clone(),
            config,
        };
        let (diffs, diff_rx) = mpsc::unbounded_channel();
        let applier = tokio::spawn(apply_loop(store, peers, shared, diff_rx));
        let driver = Driver {
            replica: replica.clone(),
            membership,
            election,
            diffs,
        };
        let driver = tokio::spawn(driver.run(inbox));
        Ok((
            replica,
            ReplicaTasks {
                committer,
                tasks: vec![driver, applier],
            },
        ))
    }

    pub fn status(&self) -> ReplicaStatus {
        lock(&self.shared.status).clone()
    }

    /// The fault switch for tests that partition real nodes.
    pub fn faults(&self) -> Arc<Faults> {
        self.peers.faults.clone()
    }

    /// Whether local reads may be served now: this node leads, or it has
    /// heard from the leader within L and has no known gap.
    pub fn may_read(&self) -> bool {
        let until = *lock(&self.shared.read_lease_until);
        until.is_some_and(|u| self.shared.now() < u) && !lock(&self.shared.status).behind
    }

    /// A client write: applied by the leader (here, or forwarded to it) and
    /// acknowledged by its replication set, or refused.
    pub async fn submit(&self, op: Op, request_id: String) -> Result<Applied, WriteError> {
        let deadline = Instant::now() + self.config.forward_timeout;
        loop {
            let status = self.status();
            if status.is_leader {
                return self.writes.submit_once(op, Some(request_id)).await;
            }
            if let Some(leader) = status.leader_id.filter(|_| status.leader_healthy) {
                match self
                    .forward(&leader, op.clone(), &request_id, deadline)
                    .await
                {
                    Ok(ForwardResult::Applied(a)) => return Ok(a),
                    Ok(ForwardResult::Rejected(e)) => return Err(WriteError::Rejected(e)),
                    Ok(ForwardResult::Unavailable(why)) if Instant::now() >= deadline => {
                        return Err(WriteError::Unavailable(why));
                    }
                    Ok(ForwardResult::Unavailable(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(WriteError::Unavailable(format!(
                    "no leader within forward_timeout ({:?})",
                    self.config.forward_timeout
                )));
            }
            tokio::time::sleep(self.config.heartbeat_interval / 4).await;
        }
    }

    async fn forward(
        &self,
        leader: &str,
        op: Op,
        request_id: &str,
        deadline: Instant,
    ) -> Result<ForwardResult, WriteError> {
        let id = self.shared.next_forward.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.forwards).insert(id, tx);
        self.peers.send(
            leader,
            PeerMessage::Forward {
                id,
                request_id: request_id.to_string(),
                op,
            },
        );
        metrics::counter!("pika_forwarded_ops_total").increment(1);
        // Wait a couple of heartbeats, then look again: the leader may have
        // changed, and resending the same request id to the same leader is
        // harmless (it answers the first result again).
        let attempt = deadline.min(Instant::now() + self.config.heartbeat_interval * 2);
        let result = tokio::time::timeout_at(attempt.into(), rx).await;
        lock(&self.shared.forwards).remove(&id);
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Ok(ForwardResult::Unavailable("forward dropped".into())),
            Err(_) if Instant::now() < deadline => Ok(ForwardResult::Unavailable(
                "no answer yet; asking again".into(),
            )),
            Err(_) => Err(WriteError::Unavailable(format!(
                "the leader did not answer within forward_timeout ({:?})",
                self.config.forward_timeout
            ))),
        }
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Applies diffs strictly in arrival order, one durable transaction each,
/// and acknowledges each after its commit.
async fn apply_loop(
    store: Arc<Store>,
    peers: Arc<Peers>,
    shared: Arc<Shared>,
    mut diffs: mpsc::UnboundedReceiver<(String, u64, Vec<Change>)>,
) {
    while let Some((from, epoch, changes)) = diffs.recv().await {
        if epoch < store.promised_epoch() {
            peers.send(
                &from,
                PeerMessage::DiffRefused {
                    epoch,
                    applied: store.revision(),
                    promised: store.promised_epoch(),
                },
            );
            continue;
        }
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || s.apply(&changes)).await;
        match result {
            Ok(Ok(())) => peers.send(
                &from,
                PeerMessage::DiffAck {
                    epoch,
                    revision: store.revision(),
                },
            ),
            Ok(Err(ApplyError::Gap { expected, got })) => {
                tracing::warn!(
                    expected,
                    got,
                    "gap in the leader's diffs: serving no reads until repaired"
                );
                lock(&shared.status).behind = true;
                peers.send(
                    &from,
                    PeerMessage::DiffRefused {
                        epoch,
                        applied: store.revision(),
                        promised: store.promised_epoch(),
                    },
                );
            }
            Ok(Err(ApplyError::Store(e))) => tracing::error!(error = %e, "applying a diff failed"),
            Err(e) => tracing::error!(error = %e, "the apply task panicked"),
        }
    }
}

struct Driver {
    replica: Replica,
    membership: Arc<Membership>,
    election: Election,
    diffs: mpsc::UnboundedSender<(String, u64, Vec<Change>)>,
}

impl Driver {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<(String, PeerMessage)>) {
        let mut tick = tokio::time::interval(
            (self.replica.config.heartbeat_interval / 4).max(Duration::from_millis(5)),
        );
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

    fn tick(&mut self) {
        let now = self.shared().now();
        let members = self.membership.members();
        let live = members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        let peers = members
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| m.id.node_id.clone());
        self.election.set_members(peers, live);
        self.election.set_last(self.replica.store.position());
        self.election.tick(now);
        if let Some(set) = lock(&self.shared().set).as_mut() {
            for gone in set.evict_silent(now) {
                tracing::warn!(follower = %gone, "follower left the replication set: silent past its read lease");
            }
            for ready in set.released() {
                answer(ready);
            }
        }
    }

    fn handle(&mut self, from: String, message: PeerMessage) {
        let now = self.shared().now();
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Election(m) => {
                if let ElectionMessage::HeartbeatAck { ok: true, .. } = &m
                    && let Some(set) = lock(&self.shared().set).as_mut()
                {
                    set.heard(&from, None, now);
                }
                self.election.handle(&from, m, now);
            }
            PeerMessage::Diff { epoch, changes } => {
                let _ = self.diffs.send((from, epoch, changes));
            }
            PeerMessage::DiffAck { epoch, revision } => {
                if self.shared().leading.load(Ordering::Acquire) == epoch
                    && let Some(set) = lock(&self.shared().set).as_mut()
                {
                    set.heard(&from, Some(revision), now);
                    for ready in set.released() {
                        answer(ready);
                    }
                }
            }
            PeerMessage::DiffRefused {
                epoch,
                applied,
                promised,
            } => {
                tracing::debug!(%from, epoch, applied, promised, "follower refused a diff");
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

    fn perform(&mut self) {
        for action in self.election.drain_actions() {
            match action {
                Action::Persist { promised_epoch } => {
                    let store = &self.replica.store;
                    // The grant or ack that follows must not leave before this is on disk.
                    if let Err(e) =
                        tokio::task::block_in_place(|| store.set_promised_epoch(promised_epoch))
                    {
                        tracing::error!(error = %e, "cannot persist the promised epoch; exiting the election");
                        return;
                    }
                }
                Action::Send { to, message } => {
                    self.replica.peers.send(&to, PeerMessage::Election(message))
                }
                Action::BecameLeader { epoch } => self.lead(epoch),
                Action::SteppedDown { epoch, reason } => {
                    metrics::counter!("pika_step_downs_total").increment(1);
                    tracing::warn!(epoch, reason, "no longer the leader");
                    self.shared().leading.store(0, Ordering::Release);
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
        *lock(&self.shared().set) = Some(ReplicationSet::new(
            config.replicas / 2 + 1,
            eviction,
            followers,
            now,
        ));
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
        let read_until = self.election.read_lease_until(now);
        *lock(&self.shared().read_lease_until) = read_until;
        let set = lock(&self.shared().set)
            .as_ref()
            .map(|s| s.followers().into_iter().map(|f| (f.id, f.acked)).collect())
            .unwrap_or_default();
        let mut status = lock(&self.shared().status);
        let role = self.election.role();
        status.role = match role {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
        }
        .into();
        status.is_leader =
            role == Role::Leader && self.shared().leading.load(Ordering::Acquire) != 0;
        status.epoch = leader.as_ref().map_or(0, |(_, e)| *e);
        status.leader_id = leader.map(|(id, _)| id);
        status.promised_epoch = self.election.promised();
        status.leader_healthy = read_until.is_some();
        status.replication_set = set;
        status.replicas_mismatch = self.election.replicas_mismatch();
    }
}
