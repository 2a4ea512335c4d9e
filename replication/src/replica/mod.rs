//! A replica: the tokio side that runs [`Election`] and the
//! [`ReplicationSet`] over [`Peers`], applies diffs as a follower, ships them
//! as a leader, repairs drift with Merkle sync, and forwards writes to
//! whoever leads.
//!
//! - `mod.rs`: the handle the HTTP layer uses, and the leader's commit policy.
//! - `driver`: the task that owns the election and reacts to peer messages.
//! - `apply`: the follower's ordered application of diffs and sync installs.

mod apply;
mod driver;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pika_membership::{MemberState, Membership};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::commit::{BatchLimits, CommitPolicy, Reply, WriteError, WriteQueue};
use crate::election::{Election, ElectionConfig};
use crate::fanout::{RecentChanges, ReplicationSet};
use crate::path::ConfigPath;
use crate::peers::{Faults, Peers};
use crate::record::{Applied, Change, Op};
use crate::store::Store;
use crate::wire::{ForwardResult, PeerMessage};

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// L: `heartbeat_timeout`.
    pub lease: Duration,
    pub forward_timeout: Duration,
    /// How often a follower runs a Merkle sync with the leader.
    pub sync_interval: Duration,
    /// Where the leader writes its lock record: `{prefix}/{lock_key}`.
    pub lock_path: ConfigPath,
    /// This node's HTTP address, for the lock record.
    pub http_addr: String,
}

const DRIFT: f64 = 0.1;
/// Changes a leader keeps in memory for followers that fall a little behind.
const RECENT_CHANGES: usize = 16 * 1024;

pub(crate) type Answers = Vec<(Reply, Result<Applied, WriteError>)>;

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
    /// The last Merkle sync this node completed as a follower.
    pub last_sync: Option<SyncRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRecord {
    pub at_ms: u64,
    pub revision: u64,
    pub buckets: usize,
    pub paths: usize,
}

pub(crate) struct Shared {
    pub(crate) origin: Instant,
    /// The epoch this node leads, 0 when it does not.
    pub(crate) leading: AtomicU64,
    pub(crate) set: Mutex<Option<ReplicationSet<Answers>>>,
    pub(crate) status: Mutex<ReplicaStatus>,
    /// Until when local reads are allowed (read lease), as time since origin.
    pub(crate) read_lease_until: Mutex<Option<Duration>>,
    /// The leader's recent changes, for cheap catch-up.
    pub(crate) recent: Mutex<RecentChanges>,
    /// When each recent batch (by its last revision) went out, for the
    /// per-follower fan-out latency metric.
    pub(crate) sent: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    pub(crate) forwards: Mutex<HashMap<u64, oneshot::Sender<ForwardResult>>>,
    pub(crate) next_forward: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn now(&self) -> Duration {
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
        let prev = {
            let mut recent = lock(&self.shared.recent);
            let prev = recent.end();
            recent.push(changes);
            prev
        };
        if let Some(last) = changes.last() {
            let mut sent = lock(&self.shared.sent);
            sent.push_back((last.revision, Instant::now()));
            while sent.len() > 4096 {
                sent.pop_front();
            }
        }
        let message = PeerMessage::Diff {
            epoch,
            prev,
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

pub(crate) fn answer(answers: Answers) {
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}

pub(crate) fn fail(answers: Answers, why: &str) {
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
    pub(crate) store: Arc<Store>,
    pub(crate) writes: WriteQueue,
    pub(crate) shared: Arc<Shared>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) config: ReplicaConfig,
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
            // Every replica starts as a follower of nobody.
            status: Mutex::new(ReplicaStatus {
                role: "follower".into(),
                ..ReplicaStatus::default()
            }),
            read_lease_until: Mutex::new(None),
            recent: Mutex::new(RecentChanges::new(store.position(), RECENT_CHANGES)),
            sent: Mutex::new(std::collections::VecDeque::new()),
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
        let (jobs, job_rx) = mpsc::unbounded_channel();
        let catch_up_every = replica.config.heartbeat_interval;
        let applier = tokio::spawn(apply::run(store, peers, shared, catch_up_every, job_rx));
        let driver = driver::Driver::new(replica.clone(), membership, election, jobs);
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

pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
