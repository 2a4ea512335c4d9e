//! A replica: the tokio shell around [`ReplicaCore`], the sans-IO protocol
//! (election, log replication and commit, read permission, catch-up,
//! snapshots, verification).
//!
//! - `core`, `leader`, `follower`, `apply`: the protocol itself; no
//!   clock, no tasks, no sockets. `apply` is the log's durable end and the
//!   state applied behind it; `status` and `config` are what the core
//!   shows and takes.
//! - `mod.rs`: the handle the HTTP layer writes and reads through.
//! - `policy`: the leader's commit policy (propose through the core,
//!   answer on commit, at most two batches awaiting their commit).
//! - `driver`: the task that feeds the core ticks, membership, peer
//!   messages and log flush completions, and carries out what it asks.
//! - `voters`: who votes: the voter set in the log, learners, promotion
//!   and replacement.

mod apply;
mod apply_threads;
mod config;
pub mod core;
mod driver;
mod flush_placement;
mod follower;
mod forwards;
mod leader;
mod policy;
mod serving;
mod snapshot;
mod status;
pub mod voters;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pika_membership::Membership;
use tokio::sync::oneshot;

pub use self::apply::ApplyJob;
use self::core::Output;
pub use self::core::{CoreConfig, LearnerFeed, ReplicaCore, ReplicaStatus, SyncRecord};
use self::policy::LeaderPolicy;
pub(crate) use self::policy::{answer, fail};
pub use self::serving::SnapshotAnswer;
use crate::commit::{BatchLimits, Reply, WriteError, WriteQueue};
use crate::log::{DiskLog, LogOptions};
use crate::path::ConfigPath;
use crate::peers::{Faults, Peers};
use crate::pending::SharedPending;
use crate::record::{Applied, Op};
use crate::store::Store;
use crate::wire::{ForwardResult, PeerMessage};

/// At most this much in one catch-up or snapshot frame, whatever
/// `max_frame_mb` allows: heartbeats share the peer stream and wait behind
/// a frame. With answers of half of 64 MiB, a returning follower heard no
/// heartbeat for longer than L while its snapshot streamed in, campaigned,
/// and refused the snapshot as coming from the deposed epoch (the rejoin
/// then moved the state twice).
const ANSWER_BYTES: usize = 1 << 20;

/// How a linearizable read was allowed ([`Replica::read_permission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPermission {
    /// Read permission: the read waits for its path's pending entry.
    Lease,
    /// Applied through the leader's commit index: served as it stands.
    ReadIndex,
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// L: `heartbeat_timeout`.
    pub lease: Duration,
    /// `cluster.ack_timeout` (see [`CoreConfig::ack_timeout`]).
    pub ack_timeout: Duration,
    pub forward_timeout: Duration,
    /// How often a follower runs a Merkle sync with the leader.
    pub sync_interval: Duration,
    /// Where the leader writes its lock record: `{prefix}/{lock_key}`.
    pub lock_path: ConfigPath,
    /// Where the voter set lives: `{prefix}/voters`.
    pub voters_path: ConfigPath,
    /// `cluster.dead_voter_timeout` (see [`CoreConfig::dead_voter_timeout`]).
    pub dead_voter_timeout: Duration,
    /// How the leader feeds learners (`cluster.learner_feed`).
    pub learner_feed: LearnerFeed,
    /// This node's HTTP address, for the lock record.
    pub http_addr: String,
    /// Where the replicated log lives (`{storage.bw.path}/log`).
    pub log_dir: std::path::PathBuf,
    /// How often the applied state is made durable (and the log purged
    /// behind it).
    pub checkpoint_interval: Duration,
    /// Log entries kept behind the checkpoint for followers to catch up
    /// from; one further behind gets a snapshot.
    pub log_retention: u64,
    /// The transport's frame limit; catch-up and snapshot frames stay
    /// under half of it.
    pub max_frame: usize,
    /// Batches the leader keeps awaiting their commit before the next one
    /// waits (`cluster.pipeline_depth`, at least 1).
    pub pipeline_depth: usize,
}

pub(crate) type Answers = Vec<(Reply, Result<Applied, WriteError>)>;

pub(crate) struct Shared {
    pub(crate) origin: Instant,
    /// How fast this node's protocol clock runs: 1.0, or a test's drift.
    pub(crate) clock_rate: f64,
    /// Lock order: `core` first. Under it the core takes redb's write
    /// transaction (applies) and `pending`, and the driver takes `answers`
    /// and the other leaf mutexes below. Nothing takes `core` while holding
    /// any of those or a redb write transaction: the committer only
    /// proposes to the core (on a leader it opens no redb transaction), and
    /// checkpoints run on a blocking thread without `core` and report back
    /// through the driver's channel.
    pub(crate) core: Mutex<ReplicaCore<DiskLog>>,
    /// Paths with entries not applied yet: reads of them wait.
    pub(crate) pending: SharedPending,
    /// Writers' answers waiting on the core, by token: one per batch in
    /// flight on a leader.
    pub(crate) answers: Mutex<HashMap<u64, Answers>>,
    /// Signalled whenever `answers` shrinks (the committer waits on it for
    /// room in the pipeline).
    pub(crate) answered: Condvar,
    pub(crate) next_token: AtomicU64,
    /// What the driver last published, so HTTP handlers never wait on the core.
    pub(crate) status: Mutex<ReplicaStatus>,
    pub(crate) read_until: Mutex<Option<Duration>>,
    /// (leader node id, its HTTP address), kept by the driver so every HTTP
    /// response can name the leader without scanning membership.
    pub(crate) leader_http: Mutex<Option<(String, String)>>,
    pub(crate) forwards: Mutex<HashMap<u64, oneshot::Sender<ForwardResult>>>,
    /// Reads waiting for the leader's commit index, by read-index id (from
    /// `next_forward`'s sequence).
    pub(crate) read_indexes: Mutex<HashMap<u64, oneshot::Sender<Option<u64>>>>,
    pub(crate) next_forward: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed().mul_f64(self.clock_rate)
    }

    /// Carries out the outputs any caller of the core may produce: sends
    /// and writers' answers. Returns the rest for the driver.
    pub(crate) fn perform(&self, peers: &Arc<Peers>, outputs: Vec<Output>) -> Vec<Output> {
        let mut rest = Vec::new();
        for output in outputs {
            match output {
                Output::Send { to, message } => peers.send(&to, message),
                Output::Release(tokens) => {
                    for token in tokens {
                        if let Some(answers) = lock(&self.answers).remove(&token) {
                            answer(answers);
                        }
                    }
                    self.answered.notify_one();
                }
                Output::Fail(tokens, why) => {
                    for token in tokens {
                        if let Some(answers) = lock(&self.answers).remove(&token) {
                            fail(answers, why);
                        }
                    }
                    self.answered.notify_one();
                }
                Output::ReadIndexAnswered { id, commit } => {
                    if let Some(waiter) = lock(&self.read_indexes).remove(&id) {
                        let _ = waiter.send(commit);
                    }
                }
                other => rest.push(other),
            }
        }
        rest
    }
}

/// The background work of a replica, for an orderly stop.
pub struct ReplicaTasks {
    committer: std::thread::JoinHandle<()>,
    driver: driver::DriverThread,
    forwards: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    retention: u64,
}

impl ReplicaTasks {
    /// Stops the driver, waits for the committer to answer what is queued,
    /// and checkpoints the state. Call after dropping every other
    /// [`Replica`] handle.
    pub async fn stop(self) {
        self.driver.stop().await;
        // It holds a write handle: the committer ends once it is gone.
        self.forwards.abort();
        let _ = self.forwards.await;
        let committer = self.committer;
        let _ = tokio::task::spawn_blocking(move || committer.join()).await;
        let shared = self.shared;
        let retention = self.retention;
        let _ = tokio::task::spawn_blocking(move || {
            // What committed while applies were gathering goes into the
            // last checkpoint too.
            let mut core = lock(&shared.core);
            core.apply();
            core.checkpoint(retention);
        })
        .await;
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
    /// Opens the log, replays it into the store, and starts the committer
    /// and the driver.
    pub fn start(
        store: Arc<Store>,
        membership: Arc<Membership>,
        config: ReplicaConfig,
    ) -> Result<(Replica, ReplicaTasks), String> {
        let me = store.node_id().to_string();
        let origin = Instant::now();
        let (flushes, flushed) = tokio::sync::mpsc::unbounded_channel();
        // Who runs a flush is the driver's and the committer's choice.
        let options = LogOptions {
            hold_flushes: true,
            ..LogOptions::default()
        };
        let sync_delay_ms = options.sync_delay_ms.clone();
        let log = DiskLog::open(&config.log_dir, &options, move |ticket, result| {
            let _ = flushes.send((ticket, result));
        })
        .map_err(|e| e.to_string())?;
        let pending = SharedPending::default();
        let core = ReplicaCore::new(
            me.clone(),
            CoreConfig {
                replicas: config.replicas,
                heartbeat_interval: config.heartbeat_interval,
                lease: config.lease,
                ack_timeout: config.ack_timeout,
                sync_interval: config.sync_interval,
                sync_timeout: config.forward_timeout.max(config.lease * 2),
                frame_bytes: (config.max_frame / 2).clamp(64 << 10, ANSWER_BYTES),
                max_answer_bytes: config.max_frame / 2,
                voters_path: config.voters_path.as_str().to_string(),
                dead_voter_timeout: config.dead_voter_timeout,
                learner_feed: config.learner_feed,
            },
            store.clone(),
            log,
            pending.clone(),
            store.generation(),
            seed(),
            Duration::ZERO,
        )?;
        let status = core.status(Duration::ZERO);
        let shared = Arc::new(Shared {
            origin,
            clock_rate: test_clock_rate(),
            core: Mutex::new(core),
            pending,
            answers: Mutex::new(HashMap::new()),
            answered: Condvar::new(),
            next_token: AtomicU64::new(1),
            status: Mutex::new(status),
            read_until: Mutex::new(None),
            leader_http: Mutex::new(None),
            forwards: Mutex::new(HashMap::new()),
            read_indexes: Mutex::new(HashMap::new()),
            // Numbered from a random point, as `alive_seq` is: the leader
            // answers forwards by id to whichever incarnation of this node
            // it reaches, and an answer meant for the previous one must
            // not match a waiter of ours.
            next_forward: AtomicU64::new(seed() >> 1),
        });
        let (peers, inboxes) = Peers::start(me, membership.clone(), config.heartbeat_interval);
        peers.faults.attach_sync_delay(sync_delay_ms);
        let policy = Arc::new(LeaderPolicy {
            shared: shared.clone(),
            peers: peers.clone(),
            depth: config.pipeline_depth.max(1),
        });
        let (writes, committer) =
            WriteQueue::start_with(store.clone(), BatchLimits::default(), policy)
                .map_err(|e| format!("starting the committer thread: {e}"))?;
        let replica = Replica {
            store,
            writes,
            shared,
            peers,
            config,
        };
        let driver = driver::Driver::new(replica.clone(), membership);
        let forwards = tokio::spawn(forwards::serve(replica.clone(), inboxes.forwards));
        let driver = driver
            .start(inboxes.protocol, flushed)
            .map_err(|e| format!("starting the protocol thread: {e}"))?;
        let retention = replica.config.log_retention;
        Ok((
            replica.clone(),
            ReplicaTasks {
                committer,
                driver,
                forwards,
                shared: replica.shared,
                retention,
            },
        ))
    }

    pub fn status(&self) -> ReplicaStatus {
        lock(&self.shared.status).clone()
    }

    /// How long ago this node last heard from the leader (zero on the
    /// leader); `None` while it knows no live leader. Consul's
    /// `X-Consul-LastContact`.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        let status = lock(&self.shared.status);
        if status.is_leader {
            return Some(Duration::ZERO);
        }
        let heard = status.leader_heard_at?;
        Some(self.shared.now().saturating_sub(heard))
    }

    /// The HTTP address of the leader this node knows of, once membership
    /// has gossiped it.
    pub fn leader_http_addr(&self) -> Option<String> {
        lock(&self.shared.leader_http)
            .as_ref()
            .map(|(_, http)| http.clone())
    }

    /// The fault switch for tests that partition real nodes.
    pub fn faults(&self) -> Arc<Faults> {
        self.peers.faults.clone()
    }

    /// Whether local reads may be served now: this node leads with a valid
    /// lease, or it follows with a read lease and permission from the leader
    /// and no known gap.
    pub fn may_read(&self) -> bool {
        let until = *lock(&self.shared.read_until);
        until.is_some_and(|u| self.shared.now() < u)
    }

    /// How a linearizable read may be served here, waiting for it if need
    /// be (bounded by `forward_timeout`):
    /// - [`ReadPermission::Lease`]: this node may read (it leads, or the
    ///   leader's set waits for it); the read still waits for its path's
    ///   pending entry ([`Self::read_barrier`]).
    /// - [`ReadPermission::ReadIndex`]: a learner without that permission
    ///   (fed in batches) asked the leader for its commit index and has
    ///   applied through it: its state holds every write acknowledged
    ///   before the read began, and the read needs no other wait.
    ///
    /// A voter without permission is refused at once, as before.
    pub async fn read_permission(&self) -> Result<ReadPermission, WriteError> {
        if self.may_read() {
            return Ok(ReadPermission::Lease);
        }
        let status = self.status();
        let no_lease = || {
            WriteError::Unavailable(
                "no read lease: this node has not heard from a leader within heartbeat_timeout \
                 (or is catching up)"
                    .into(),
            )
        };
        let leader = match (&status.leader_id, status.voter) {
            (Some(leader), Some(false)) if !status.is_leader => leader.clone(),
            _ => return Err(no_lease()),
        };
        // A learner waiting for a snapshot (behind the leader's log, or
        // found by verification to differ from the leader's state) reads
        // nothing: its state may hold the leader's commit index and still
        // be wrong.
        let repairing = || {
            WriteError::Unavailable(
                "this learner waits for a snapshot from the leader (behind its log, or its \
                 state was found to differ)"
                    .into(),
            )
        };
        if status.behind {
            return Err(repairing());
        }
        let deadline = tokio::time::Instant::now() + self.config.forward_timeout;
        let id = self.shared.next_forward.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.read_indexes).insert(id, tx);
        self.peers.send(&leader, PeerMessage::ReadIndex { id });
        let answer = tokio::time::timeout_at(deadline, rx).await;
        lock(&self.shared.read_indexes).remove(&id);
        let commit = match answer {
            Ok(Ok(Some(commit))) => commit,
            Ok(_) => return Err(no_lease()),
            Err(_) => {
                return Err(WriteError::Unavailable(format!(
                    "the leader did not confirm its commit index within forward_timeout ({:?})",
                    self.config.forward_timeout
                )));
            }
        };
        let store = self.store.clone();
        tokio::time::timeout_at(
            deadline,
            self.shared
                .pending
                .wait_until(move |_| store.revision() >= commit),
        )
        .await
        .ok()
        .filter(|_| self.store.revision() >= commit)
        .ok_or_else(|| {
            WriteError::Unavailable(format!(
                "this learner did not apply through the leader's commit index ({commit}) \
                 within forward_timeout ({:?})",
                self.config.forward_timeout
            ))
        })?;
        if self.status().behind {
            return Err(repairing());
        }
        metrics::counter!("pika_reads_by_read_index_total").increment(1);
        Ok(ReadPermission::ReadIndex)
    }

    /// Waits until `path` may be read here as a linearizable read: read
    /// permission ([`Self::read_permission`]), then, under a lease, its
    /// pending entry ([`Self::read_barrier`]). For reads made by handlers
    /// themselves, outside the HTTP envelope's check.
    pub async fn linearizable_read(&self, path: &str) -> Result<(), WriteError> {
        if self.read_permission().await? == ReadPermission::Lease {
            self.read_barrier(path).await?;
        }
        Ok(())
    }

    /// [`Self::linearizable_read`] of every path under `prefix` (a folder).
    pub async fn linearizable_folder(&self, prefix: &str) -> Result<(), WriteError> {
        if self.read_permission().await? == ReadPermission::Lease {
            self.folder_barrier(prefix).await?;
        }
        Ok(())
    }

    /// Waits until no entry of `path` that is pending now remains pending
    /// (applied or truncated), bounded by `forward_timeout`: a read that
    /// starts after a write was acknowledged then sees it (DESIGN.md,
    /// "Reads").
    pub async fn read_barrier(&self, path: &str) -> Result<(), WriteError> {
        let Some(revision) = self.shared.pending.lock().highest(path) else {
            return Ok(());
        };
        self.wait_pending(|p| !p.blocks(path, revision)).await
    }

    /// [`Self::read_barrier`] for every path under `prefix` (a folder).
    pub async fn folder_barrier(&self, prefix: &str) -> Result<(), WriteError> {
        let Some(revision) = self.shared.pending.lock().highest_under(prefix) else {
            return Ok(());
        };
        self.wait_pending(|p| !p.blocks_under(prefix, revision))
            .await
    }

    async fn wait_pending(
        &self,
        done: impl FnMut(&crate::pending::PendingPaths) -> bool,
    ) -> Result<(), WriteError> {
        metrics::counter!("pika_reads_waited_total").increment(1);
        tokio::time::timeout(
            self.config.forward_timeout,
            self.shared.pending.wait_until(done),
        )
        .await
        .map_err(|_| {
            WriteError::Unavailable(format!(
                "a write to this path is not committed yet after forward_timeout ({:?})",
                self.config.forward_timeout
            ))
        })
    }

    /// A client write: applied by the leader (here, or forwarded to it) and
    /// acknowledged by its replication set, or refused.
    pub async fn submit(&self, op: Op, request_id: String) -> Result<Applied, WriteError> {
        let deadline = Instant::now() + self.config.forward_timeout;
        loop {
            // What routing needs, not a clone of the whole status (its
            // strings, maps and lists) for every write.
            let (is_leader, leader) = {
                let status = lock(&self.shared.status);
                // A voter forwards while it may read (it hears the leader
                // and holds its log); a learner fed in batches never may,
                // and forwards to the leader it follows.
                let learner = status.voter == Some(false);
                let leader = status
                    .leader_id
                    .clone()
                    .filter(|_| status.leader_healthy || learner);
                (status.is_leader, leader)
            };
            if is_leader {
                // Bounded like a forwarded write: a commit held up (a
                // member that stopped acknowledging, until ack_timeout
                // takes it out) must not hold the client past
                // forward_timeout. The write may still commit: a retry with
                // the same request id gets its answer.
                let write = self.writes.submit_once(op, Some(request_id));
                return match tokio::time::timeout_at(deadline.into(), write).await {
                    Ok(result) => result,
                    Err(_) => Err(WriteError::Unavailable(format!(
                        "not acknowledged within forward_timeout ({:?}); the write may still \
                         take effect: retry with the same X-Request-Id to learn its outcome",
                        self.config.forward_timeout
                    ))),
                };
            }
            if let Some(leader) = leader {
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

/// Fault tests only, in builds with the `test-faults` feature:
/// `PIKA_TEST_CLOCK_RATE=1.03` makes this node's protocol clock (leases,
/// heartbeats, evictions) run 3 % fast, to test drift within the bound the
/// protocol assumes. `DRIFT` bounds how far two nodes' clocks may drift
/// apart, so each rate must stay within 1 ± DRIFT / (2 + DRIFT) (±4.76 %):
/// then the fastest runs at most 1 + DRIFT times the slowest. (Each within
/// 1 ± DRIFT allowed two nodes 22 % apart, where leases overlap.) Anything
/// unparsable or beyond that means 1, and so does every value in a build
/// without the feature.
pub const TEST_CLOCK_RATE_ENV: &str = "PIKA_TEST_CLOCK_RATE";

fn test_clock_rate() -> f64 {
    if !cfg!(feature = "test-faults") {
        return 1.0;
    }
    let spread = core::DRIFT / (2.0 + core::DRIFT);
    let bound = (1.0 - spread)..=(1.0 + spread);
    match std::env::var(TEST_CLOCK_RATE_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        Some(rate) if bound.contains(&rate) => {
            tracing::warn!(
                rate,
                "{TEST_CLOCK_RATE_ENV}: this node's protocol clock is skewed for a fault test"
            );
            rate
        }
        _ => 1.0,
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
