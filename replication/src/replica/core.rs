//! The replica's protocol, sans IO: election, log replication and commit,
//! the state applied behind the log, read permission, catch-up, snapshot
//! install and verification (DESIGN.md, revision 2).
//!
//! [`ReplicaCore`] takes calls with the current time (its node's own clock)
//! and produces [`Output`]s. It owns the node's log through [`LogStore`]:
//! appends, truncations and reads are in-memory operations there, and a
//! flush is started here and reported back as [`ReplicaCore::flushed`] —
//! the log on disk in a real node, [`crate::log::MemLog`] in the
//! simulation, whose flushes complete when the schedule says and whose
//! crashes lose the unflushed tail. Nothing here reads a clock or spawns a
//! task, which is what lets `tests/replica_sim.rs` replay thousands of
//! seeded fault schedules exactly.
//!
//! The leader's half is in `leader.rs`, the follower's in `follower.rs`;
//! this file holds what both roles share: the log's durable end, the
//! commit index, applying, and the election.
//!
//! Invariants kept here:
//! - `applied ≤ commit` and `applied ≤ flushed`: the state holds committed
//!   entries only, and only entries durable in this node's own log (a
//!   crash then never leaves the state ahead of the log).
//! - The state only moves forward: applies continue it, and a snapshot
//!   install below it is refused.
//! - Every entry in the log above `applied` is in [`PendingPaths`]: a read
//!   of its path waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::dice::Dice;
use crate::election::{Action, Election, ElectionConfig, Position, Role};
use crate::fanout::ReplicationSet;
use crate::log::{GroupFlush, LogStore};
use crate::merkle::Digest;
use crate::pending::SharedPending;
use crate::store::{Snapshot, Store};
use crate::sync::SyncSession;
use crate::wire::PeerMessage;

/// Assumed bound on relative clock drift.
pub const DRIFT: f64 = 0.1;
/// Bytes of log entries applied per store transaction.
const APPLY_CHUNK: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// L: `heartbeat_timeout`.
    pub lease: Duration,
    /// A member of the replication set that has not received an entry
    /// this long after it was sent loses its read permission, and leaves
    /// the set once that has surely run out (`cluster.ack_timeout`).
    pub ack_timeout: Duration,
    /// How often the leader sends its Merkle root for verification.
    pub sync_interval: Duration,
    /// A snapshot session silent for this long is abandoned, and a
    /// catch-up request unanswered for this long is asked again.
    pub sync_timeout: Duration,
    /// Byte budget of one catch-up or snapshot frame (under the transport's
    /// `max_frame`).
    pub frame_bytes: usize,
    /// Where the voter set lives: `{prefix}/voters`.
    pub voters_path: String,
    /// A voter unheard of by membership this long is removed from the
    /// voter set (`cluster.dead_voter_timeout`), and a caught-up learner
    /// takes its place.
    pub dead_voter_timeout: Duration,
    /// How the leader feeds learners (`cluster.learner_feed`).
    pub learner_feed: LearnerFeed,
}

/// How the leader feeds learners, the followers outside the voter set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnerFeed {
    /// Like voters: each batch is sent at once and commits once every
    /// learner in the replication set has received it, so learners serve
    /// linearizable reads locally. Every write waits for the slowest.
    #[default]
    PerWrite,
    /// From the leader's tick (every `heartbeat_interval`): learners stay
    /// out of the replication set and no commit waits for them. A read on
    /// one asks the leader for its commit index (one round trip, which
    /// also sends it what it lacks) and is served once applied through it.
    /// For many read replicas, whose per-write fan-out would slow every
    /// write.
    Batched,
}

impl CoreConfig {
    /// Quick timings for tests that drive a core by hand: heartbeats every
    /// 100 ms, L and `ack_timeout` 500 ms, verification every second, 1 MiB
    /// frames.
    pub fn quick(replicas: usize) -> CoreConfig {
        CoreConfig {
            replicas,
            heartbeat_interval: Duration::from_millis(100),
            lease: Duration::from_millis(500),
            ack_timeout: Duration::from_millis(500),
            sync_interval: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(1),
            frame_bytes: 1 << 20,
            voters_path: "pika/voters".into(),
            dead_voter_timeout: Duration::from_secs(5),
            learner_feed: LearnerFeed::PerWrite,
        }
    }
}

fn election_config(config: &CoreConfig) -> ElectionConfig {
    ElectionConfig {
        replicas: config.replicas,
        heartbeat_interval: config.heartbeat_interval,
        lease: config.lease,
        drift: DRIFT,
    }
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
    /// A snapshot answer to build off the protocol loop and send
    /// ([`SnapshotAnswer::reply`]).
    AnswerSnapshot(super::leader::SnapshotAnswer),
    /// The leader's answer to a read index this node asked for: the commit
    /// index to apply through before serving the read, or `None` (ask
    /// again, or refuse the read).
    ReadIndexAnswered {
        id: u64,
        commit: Option<u64>,
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
    /// Followers in the leader's replication set with what they received.
    pub replication_set: Vec<(String, u64)>,
    /// This follower needs a snapshot and serves no reads until installed.
    pub behind: bool,
    pub replicas_mismatch: bool,
    /// Members whose `replicas` differs from this node's, with theirs (from
    /// their lease requests, heartbeats and acks). Before a voter set
    /// exists, they and this node do not grant each other's campaigns.
    pub replicas_conflicts: BTreeMap<String, u64>,
    /// The log: its first and last revision, and the commit index.
    pub log_start: u64,
    pub log_last: u64,
    pub commit: u64,
    pub applied: u64,
    /// Entries received and not applied yet.
    pub pending: usize,
    /// Why this node stopped taking part, if its disk failed.
    pub disk_error: Option<String>,
    /// The voter set of this node's log (empty before a new cluster's
    /// first leader wrote one), and whether this node is in it (a voter)
    /// or not (a learner: it receives the log and serves reads, but does
    /// not vote).
    pub voters: Vec<String>,
    /// `None` while this node knows no voter set (a new cluster, or a
    /// wiped node that has not caught up).
    pub voter: Option<bool>,
    /// The cluster's id (see `voters`); `None` before a voter set names one.
    pub cluster_id: Option<String>,
    /// Verifications of this node's Merkle root that matched the leader's,
    /// and snapshots it installed, since it started.
    pub verified: u64,
    pub snapshots: u64,
    /// The last snapshot this node installed as a follower.
    pub last_sync: Option<SyncRecord>,
    /// When this node last heard from the leader, on the replica's clock
    /// (see [`crate::replica::Replica::since_leader_contact`]).
    #[serde(skip)]
    pub leader_heard_at: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRecord {
    /// On this node's clock (time since its origin), in milliseconds.
    pub at_ms: u64,
    pub revision: u64,
    pub buckets: usize,
    pub paths: usize,
}

pub(super) struct Syncing {
    pub(super) id: u64,
    pub(super) leader: String,
    pub(super) session: SyncSession,
    /// When the session last heard from the leader (it times out after
    /// `sync_timeout` of silence).
    pub(super) started: Duration,
}

pub(super) struct Leading {
    pub(super) epoch: u64,
    pub(super) set: ReplicationSet<u64>,
    /// The revision of this epoch's first entry: commits go through
    /// entries of the leader's own epoch only (an older entry held by a
    /// quorum can still be replaced; one of ours, committed, cannot).
    pub(super) epoch_start: Option<u64>,
    /// Batch send times by last revision, for the fan-out latency metric.
    pub(super) sent: VecDeque<(u64, Duration)>,
    pub(super) echoes: HashMap<String, u64>,
    /// Snapshot sessions being served, with when each was last asked.
    pub(super) serving: BTreeMap<(String, u64), (Arc<Snapshot>, Duration)>,
    pub(super) next_verify: Duration,
    /// When learners fed in batches are sent the next batch.
    pub(super) next_feed: Duration,
}

/// What a follower knows of the leader it follows.
#[derive(Default)]
pub(super) struct Follow {
    pub(super) epoch: u64,
    /// This log matches the epoch's leader's log through this revision.
    pub(super) matched: u64,
}

pub struct ReplicaCore<L: LogStore> {
    pub(super) me: String,
    pub(super) config: CoreConfig,
    pub(super) store: Arc<Store>,
    pub(super) log: L,
    pub(super) pending: SharedPending,
    pub(super) election: Election,
    pub(super) peers: Vec<String>,
    /// Peers membership reports alive: a new leader's replication set.
    pub(super) alive: Vec<String>,
    /// The voter-set records of the state and the log above it, oldest
    /// first: (revision, set); see `voters.rs`.
    pub(super) voter_records: Vec<(u64, Option<std::collections::BTreeSet<String>>)>,
    /// The cluster id of the newest voter-set record that names one.
    pub(super) cluster_id: String,
    /// Voters membership does not report alive, since when.
    pub(super) dead_since: HashMap<String, Duration>,
    /// This incarnation, told to the leader in every `Alive`.
    pub(super) boot: u64,
    /// The highest revision known committed (`applied` trails it).
    pub(super) commit: u64,
    /// The log's durable end.
    pub(super) flushed: Position,
    pub(super) flush: GroupFlush,
    pub(super) next_ticket: u64,
    /// Flush tickets of a log closed by [`Self::recover`]: their
    /// completions are ignored.
    pub(super) stale_tickets_below: u64,
    pub(super) disk_error: Option<String>,
    pub(super) leading: Option<Leading>,
    // Follower side.
    pub(super) follow: Follow,
    /// Who sent this epoch's entries: where acks go.
    pub(super) follow_leader: Option<String>,
    pub(super) alive_seq: u64,
    pub(super) alive_sent: VecDeque<(u64, Duration)>,
    pub(super) permission_until: Option<Duration>,
    pub(super) syncing: Option<Syncing>,
    pub(super) needs_snapshot: bool,
    /// The snapshot repairs a state that differed from the leader's (all
    /// of the differing buckets move), not one that is only behind.
    pub(super) repairing: bool,
    /// A verification waiting for the state to reach its revision.
    pub(super) verify: Option<(u64, Digest)>,
    /// The last catch-up request: whom it asked, from which log end, and
    /// when.
    pub(super) catch_up_asked: Option<(String, Position, Duration)>,
    pub(super) last_sync: Option<SyncRecord>,
    pub(super) verified: u64,
    pub(super) snapshots: u64,
    pub(super) dice: Dice,
    pub(super) outputs: Vec<Output>,
}

impl<L: LogStore> ReplicaCore<L> {
    /// Opens the core on a store (the state, at its last checkpoint) and
    /// the node's log: starts the log at the state's position when the log
    /// does not reach it (a fresh log, or a store written before the log
    /// existed), marks the uncommitted suffix pending, and replays what the
    /// log knows to be committed.
    /// `boot` is this incarnation's number, which grows with every start
    /// (the store's boot counter): a leader tells it from a restarted
    /// follower's earlier life.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: impl Into<String>,
        config: CoreConfig,
        store: Arc<Store>,
        mut log: L,
        pending: SharedPending,
        boot: u64,
        seed: u64,
        now: Duration,
    ) -> Result<Self, String> {
        let me = me.into();
        let commit = Self::open_log(&store, &mut log, &pending)?;
        let election = Election::new(
            me.clone(),
            election_config(&config),
            store.promised_epoch(),
            log.last(),
            seed,
            now,
        );
        let mut dice = Dice::new(seed.rotate_left(17));
        let flushed = log.last();
        let mut core = ReplicaCore {
            me,
            config,
            store,
            log,
            pending,
            election,
            peers: Vec::new(),
            alive: Vec::new(),
            voter_records: Vec::new(),
            cluster_id: String::new(),
            dead_since: HashMap::new(),
            boot,
            // Numbered from a random point: an echo of the previous
            // incarnation's `Alive` must not match one of ours.
            alive_seq: dice.next_u64() >> 1,
            commit,
            flushed,
            flush: GroupFlush::default(),
            next_ticket: 1,
            stale_tickets_below: 0,
            disk_error: None,
            leading: None,
            follow: Follow::default(),
            follow_leader: None,
            alive_sent: VecDeque::new(),
            permission_until: None,
            syncing: None,
            needs_snapshot: false,
            repairing: false,
            verify: None,
            catch_up_asked: None,
            last_sync: None,
            verified: 0,
            snapshots: 0,
            dice,
            outputs: Vec::new(),
        };
        core.load_voters();
        core.apply();
        Ok(core)
    }

    /// Sets the log up on the state: starts it at the state's position
    /// when it does not reach it, checks they agree, and marks what the
    /// log holds above the state pending. Returns the commit index the log
    /// knows of.
    fn open_log(store: &Store, log: &mut L, pending: &SharedPending) -> Result<u64, String> {
        let applied = store.position();
        if log.start().revision > applied.revision {
            return Err(format!(
                "the log starts after revision {} but the state is at {}: the state misses \
                 entries the log no longer has; move the data directory aside and let the \
                 node rejoin",
                log.start().revision,
                applied.revision
            ));
        }
        if log.last().revision < applied.revision {
            // The state is ahead of the log (a fresh log, a store written
            // before the log existed, or a snapshot installed just before a
            // crash): everything in it is committed and durable, so the log
            // starts there.
            log.purge_through(applied).map_err(|e| e.to_string())?;
        } else if !log.holds(applied) {
            return Err(format!(
                "the state is at ({}, {}) but the log holds another entry there",
                applied.epoch, applied.revision
            ));
        }
        let uncommitted = log
            .read(applied.revision + 1, log.last().revision, usize::MAX)
            .map_err(|e| e.to_string())?;
        pending.update(|p| {
            p.truncated_after(0);
            p.add(&uncommitted)
        });
        Ok(log.committed().revision.max(applied.revision))
    }

    /// After a disk error, once the shell saw the disk take a write again:
    /// reopens the log and the state as they are on disk (what was not
    /// flushed or checkpointed is gone, as after a crash) and takes part
    /// again as a new incarnation. The leader sees the new boot number and
    /// keeps this node out of its replication set until it has caught up;
    /// permission granted to the old incarnation is not honoured (its
    /// `Alive` echoes are forgotten). On an error the node stays out and
    /// the shell tries again later.
    pub fn recover(&mut self, now: Duration) -> Result<(), String> {
        if self.disk_error.is_none() {
            return Ok(());
        }
        // What a successful flush covered before the failure. The reopened
        // log may hold more, read back from the page cache after a failed
        // fsync: never made durable, and on Linux perhaps never to be (a
        // failed writeback can leave those pages clean). It goes, as a
        // crash would take it, so that no durable ack counts on it.
        let durable = self.flushed;
        self.log
            .reopen()
            .map_err(|e| format!("reopening the log: {e}"))?;
        if self.log.last().revision > durable.revision && self.log.holds(durable) {
            self.log
                .truncate_after(durable.revision)
                .map_err(|e| format!("dropping the log's unflushed tail: {e}"))?;
        }
        self.store
            .reopen()
            .map_err(|e| format!("reopening the state: {e}"))?;
        // As at a start: what the log knows committed. A higher index
        // learnt before would claim entries the reopened log lost (a
        // follower skips what it takes for committed and held).
        self.commit = Self::open_log(&self.store, &mut self.log, &self.pending)?;
        self.flushed = self.log.last();
        self.flush = GroupFlush::default();
        // Completions of the old log's flushes may still be on their way.
        self.stale_tickets_below = self.next_ticket;
        self.boot = self.store.generation();
        self.election = Election::new(
            self.me.clone(),
            election_config(&self.config),
            self.store.promised_epoch(),
            self.log.last(),
            self.dice.next_u64(),
            now,
        );
        self.follow.matched = 0;
        self.alive_sent.clear();
        self.permission_until = None;
        self.syncing = None;
        // `needs_snapshot` and `repairing` stay: a divergence found before
        // the failure is still there.
        self.verify = None;
        self.catch_up_asked = None;
        self.disk_error = None;
        self.load_voters();
        metrics::counter!("pika_disk_recoveries_total").increment(1);
        tracing::info!(
            boot = self.boot,
            applied = self.store.revision(),
            log_last = self.log.last().revision,
            "the disk works again: reopened the log and the state; catching up"
        );
        // The fresh election knows no leader yet: the first heartbeat
        // makes this node follow, and following asks to catch up.
        self.apply();
        Ok(())
    }

    /// A test's failing disk: the next apply of committed entries fails
    /// as a full disk would make it (nothing happens while nothing waits
    /// to be applied).
    pub fn fail_next_apply(&mut self, why: &str) {
        if self.disk_error.is_none()
            && self.store.revision() < self.commit.min(self.flushed.revision)
        {
            self.disk_failed(format!("applying committed entries: {why}"));
        }
    }

    /// Why this node stopped taking part, if its disk failed.
    pub fn disk_error(&self) -> Option<&str> {
        self.disk_error.as_deref()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn log(&self) -> &L {
        &self.log
    }

    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The other members by node id, and which of them are alive.
    pub fn set_members(&mut self, peers: Vec<String>, alive: Vec<String>) {
        let me = self.me.clone();
        self.alive = alive.into_iter().filter(|p| *p != me).collect();
        self.election.set_members(peers.clone(), self.alive.clone());
        self.peers = peers.into_iter().filter(|p| *p != me).collect();
    }

    /// The epoch a write may be proposed in now, or why not.
    pub fn write_epoch(&self) -> Result<u64, &'static str> {
        if self.disk_error.is_some() {
            return Err("this node's disk failed");
        }
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
        if self.disk_error.is_some() {
            return None;
        }
        let until = self.election.read_lease_until(now);
        if self.leading.is_some() && self.election.role() == Role::Leader {
            return until;
        }
        if self.needs_snapshot {
            return None;
        }
        until.and_then(|u| self.permission_until.map(|p| p.min(u)))
    }

    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// Entries committed and durable here that the state has not applied
    /// yet: what the next [`Self::apply`] would apply (none while a
    /// snapshot is installing or the disk failed).
    pub fn unapplied(&self) -> u64 {
        self.apply_target()
            .map_or(0, |target| target.saturating_sub(self.store.revision()))
    }

    /// How far [`Self::apply`] may go: what is committed and durable here;
    /// `None` while a snapshot is installing or the disk failed.
    fn apply_target(&self) -> Option<u64> {
        if self.syncing.is_some() || self.disk_error.is_some() {
            return None;
        }
        Some(self.commit.min(self.flushed.revision))
    }

    /// The revision of the log's last entry, committed or not.
    pub fn log_last(&self) -> u64 {
        self.log.last().revision
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
                        .filter(|f| f.in_set)
                        .map(|f| (f.id, f.received))
                        .collect()
                })
                .unwrap_or_default(),
            behind: self.needs_snapshot,
            replicas_mismatch: self.election.replicas_mismatch(),
            replicas_conflicts: self.election.replicas_conflicts().clone(),
            log_start: self.log.start().revision,
            log_last: self.log.last().revision,
            commit: self.commit,
            applied: self.store.revision(),
            pending: self.pending.lock().len(),
            disk_error: self.disk_error.clone(),
            voters: self
                .voters()
                .map(|v| v.iter().cloned().collect())
                .unwrap_or_default(),
            voter: self.voters().map(|v| v.contains(&self.me)),
            cluster_id: Some(self.cluster_id.clone()).filter(|c| !c.is_empty()),
            verified: self.verified,
            snapshots: self.snapshots,
            last_sync: self.last_sync.clone(),
            leader_heard_at: self.election.leader_heard_at(now),
        }
    }

    pub fn tick(&mut self, now: Duration) {
        // A node whose disk failed takes no part, as if it were down; its
        // election starts afresh at `recover`, as at a start.
        if self.disk_error.is_some() {
            return;
        }
        self.voters_alive(now);
        self.election.set_last(self.log.last());
        self.election.tick(now);
        self.perform_election(now);
        if let Some(epoch) = self.leading.as_ref().map(|l| l.epoch) {
            self.leader_tick(epoch, now);
            self.manage_voters(epoch, now);
        } else if let Some(leader) = self.election.leader(now).map(|(l, _)| l.to_string()) {
            self.follower_tick(&leader, now);
        }
    }

    pub fn handle(&mut self, from: String, message: PeerMessage, now: Duration) {
        // Invariant: no number the protocol adds to ever exceeds
        // wire::MAX_COUNTER, so `+ 1` never wraps. Our own counters start
        // at 0 and grow by one; a peer's are checked here, before anything
        // is compared with or derived from them.
        if message.dropped_as_malformed(&from) {
            return;
        }
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Election(_) if self.disk_error.is_some() => {}
            PeerMessage::Election(m) => {
                self.election.handle(&from, m, now);
                self.perform_election(now);
            }
            PeerMessage::Diff {
                epoch,
                prev,
                changes,
                commit,
                more,
            } => self.on_diff(&from, epoch, prev, changes, commit, more, now),
            PeerMessage::Ack {
                epoch,
                received,
                durable,
                boot,
            } => self.on_ack(&from, epoch, received, durable, boot, now),
            PeerMessage::Commit { epoch, revision } => self.on_commit(&from, epoch, revision, now),
            PeerMessage::Fenced { epoch, promised } => {
                tracing::warn!(%from, epoch, promised, "a follower fenced off our diff");
            }
            PeerMessage::CatchUp {
                from: position,
                committed,
                ..
            } => self.serve_catch_up(&from, position, committed),
            PeerMessage::SyncNeeded { epoch } => self.on_sync_needed(&from, epoch, now),
            PeerMessage::SyncRequest { session, ask } => self.serve_sync(from, session, ask, now),
            PeerMessage::SyncReply {
                session,
                leader_epoch,
                revision,
                epoch,
                answer,
            } => self.on_sync_reply(from, session, leader_epoch, revision, epoch, answer, now),
            PeerMessage::Verify {
                epoch,
                revision,
                root,
            } => self.on_verify(&from, epoch, revision, root, now),
            PeerMessage::Alive { seq, boot } => {
                if let Some(leading) = self.leading.as_mut() {
                    if leading.set.heard(&from, boot, now) {
                        leading.echoes.insert(from.clone(), seq);
                    }
                }
            }
            PeerMessage::SetStatus {
                epoch,
                in_set,
                echo,
                lease_left,
                commit,
            } => self.on_set_status(&from, epoch, in_set, echo, lease_left, commit, now),
            // `Peers` hands these to `forwards`, not to the core.
            PeerMessage::Forward { .. } | PeerMessage::ForwardReply { .. } => {}
            PeerMessage::ReadIndex { id } => self.serve_read_index(&from, id, now),
            PeerMessage::ReadIndexReply { id, epoch, commit } => {
                self.on_read_index_reply(&from, id, epoch, commit)
            }
        }
    }

    pub(super) fn send(&mut self, to: &str, message: PeerMessage) {
        self.outputs.push(Output::Send {
            to: to.to_string(),
            message,
        });
    }

    /// Starts a flush of the log unless one is running (then the next one,
    /// started when it completes, covers what was appended meanwhile).
    pub(super) fn request_flush(&mut self) {
        if self.disk_error.is_some() || !self.flush.request() {
            return;
        }
        self.save_commit();
        let upto = self.log.last();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        match self.log.flush(ticket) {
            Ok(()) => self.flush.started(upto),
            Err(e) => self.disk_failed(format!("starting a log flush: {e}")),
        }
    }

    /// A flush completed (or failed).
    pub fn flushed(&mut self, ticket: u64, result: std::io::Result<()>, now: Duration) {
        if ticket < self.stale_tickets_below {
            return;
        }
        if let Err(e) = result {
            return self.disk_failed(format!("log flush: {e}"));
        }
        let (done, again) = self.flush.completed();
        if let Some(done) = done
            && done.revision > self.flushed.revision
            && self.log.holds(done)
        {
            self.flushed = done;
        }
        if again {
            self.request_flush();
        }
        if self.leading.is_some() {
            self.advance_commit(now);
        } else {
            self.send_ack();
        }
    }

    /// This node's disk failed: it stops acknowledging, voting, sending
    /// `Alive` and serving reads; a leader steps down, failing what waits
    /// with "outcome unknown". Silent, it leaves the leader's replication
    /// set once its read permission has surely run out, and the others go
    /// on. It takes part again after [`Self::recover`] or a restart.
    pub(super) fn disk_failed(&mut self, why: String) {
        if self.disk_error.is_none() {
            metrics::counter!("pika_disk_failures_total").increment(1);
            tracing::error!(error = %why, "the disk failed: this node stops taking part until the disk takes writes again");
        }
        self.disk_error = Some(why);
        self.election.resign("this node's disk failed");
        // Only the step-down follows from resigning, and it needs no clock.
        self.perform_election(Duration::ZERO);
    }

    /// The log dropped every entry after `revision`: so do the pending
    /// paths and the durable end.
    pub(super) fn truncate_after(&mut self, revision: u64) -> Result<(), String> {
        self.log
            .truncate_after(revision)
            .map_err(|e| e.to_string())?;
        let at = Position {
            epoch: self.log.epoch_at(revision).unwrap_or_default(),
            revision,
        };
        if self.flushed.revision > revision {
            self.flushed = at;
        }
        self.flush.truncated(at);
        self.pending.update(|p| p.truncated_after(revision));
        if self
            .voter_records
            .last()
            .is_some_and(|(r, _)| *r > revision)
        {
            self.load_voters();
        }
        Ok(())
    }

    /// Applies what is committed and durable here, in order; stops at a
    /// pending verification's revision to compare roots there.
    ///
    /// No handler applies on its own: the shell calls this after carrying
    /// out a call's outputs, so answers, acks and `Commit` never wait for a
    /// redb transaction, and it may let committed entries gather first
    /// (one transaction for many). Nothing needs the apply sooner: reads of
    /// a path wait while it has an entry not applied yet (`PendingPaths`
    /// keeps it until then, and a waiting reader asks the shell to apply),
    /// and the leader decides ops against the state plus those entries.
    pub fn apply(&mut self) {
        let Some(target) = self.apply_target() else {
            return;
        };
        loop {
            let applied = self.store.revision();
            let mut upto = target;
            if let Some((at, _)) = self.verify
                && at > applied
                && at < upto
            {
                upto = at;
            }
            if upto <= applied {
                break;
            }
            let changes = match self.log.read(applied + 1, upto, APPLY_CHUNK) {
                Ok(changes) if !changes.is_empty() => changes,
                Ok(_) => {
                    return self
                        .disk_failed(format!("the log has no entry {} to apply", applied + 1));
                }
                Err(e) => return self.disk_failed(format!("reading the log to apply: {e}")),
            };
            let last = changes.last().map_or(applied, |c| c.revision);
            if let Err(e) = self.store.apply_behind_log(&changes) {
                return self.disk_failed(format!("applying committed entries: {e}"));
            }
            self.pending.update(|p| p.applied_through(last));
            self.check_verification();
        }
        metrics::gauge!("pika_revision").set(self.store.revision() as f64);
    }

    /// Records in the log what is committed and durable here (what
    /// [`Self::apply`] may apply), durable with the next flush. Called just
    /// before each flush and after each checkpoint, never on its own: a
    /// record after every commit woke the log's flush thread once more per
    /// write. The log's commit is a lower bound a restart replays to (the
    /// leader tells the rest), so a late one loses nothing; but a restart
    /// that knows less than it could starts further behind, and a node
    /// that rejoins by snapshot then receives buckets it had in its log.
    /// It is the apply target, not the applied state, since applies gather
    /// for up to 20 ms: dozens of entries at one writer.
    ///
    /// Invariant: only an entry of this log that is committed and flushed
    /// is recorded, so a crash cannot leave a commit record ahead of the
    /// entries it names, and a truncation never meets one.
    fn save_commit(&mut self) {
        let Some(target) = self.apply_target() else {
            return;
        };
        if target <= self.log.committed().revision {
            return;
        }
        let Some(epoch) = self.log.epoch_at(target) else {
            return;
        };
        let upto = Position {
            epoch,
            revision: target,
        };
        if let Err(e) = self.log.save_commit(upto) {
            tracing::warn!(error = %e, "recording the commit index in the log");
        }
    }

    /// Makes the applied state durable, and purges log entries that are
    /// both checkpointed and older than `retain` entries.
    pub fn checkpoint(&mut self, retain: u64) {
        let position = self.store.checkpoint();
        self.checkpointed(position, retain);
    }

    /// A checkpoint the shell made off the protocol loop (a durable redb
    /// commit, which must not hold up acks and answers) completed: purge
    /// the log behind it, or stop on a disk error.
    pub fn checkpointed(
        &mut self,
        position: Result<Position, crate::store::StoreError>,
        retain: u64,
    ) {
        let position = match position {
            Ok(p) => p,
            Err(e) => return self.disk_failed(format!("checkpoint: {e}")),
        };
        // An idle node flushes nothing: the commit goes to the log here,
        // and to disk with the next flush (a restart replays the log to it).
        self.save_commit();
        let upto = position.revision.saturating_sub(retain);
        if upto <= self.log.start().revision {
            return;
        }
        if let Some(epoch) = self.log.epoch_at(upto)
            && let Err(e) = self.log.purge_through(Position {
                epoch,
                revision: upto,
            })
        {
            tracing::warn!(error = %e, "purging the log");
        }
    }

    pub(super) fn perform_election(&mut self, now: Duration) {
        for action in self.election.drain_actions() {
            match action {
                Action::Persist { promised_epoch } => {
                    // Whatever follows must not leave before this is on disk.
                    if let Err(e) = self.store.set_promised_epoch(promised_epoch) {
                        tracing::error!(error = %e, "cannot persist the promised epoch; dropping the rest of this round");
                        return;
                    }
                }
                Action::Send { to, message } => {
                    if self.disk_error.is_none() {
                        self.send(&to, PeerMessage::Election(message));
                    }
                }
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
                    if epoch != self.follow.epoch {
                        self.follow = Follow { epoch, matched: 0 };
                    }
                    self.follow_leader = Some(leader.clone());
                    self.permission_until = None;
                    self.syncing = None;
                    // A new leader (or our first): ask for what we miss.
                    self.request_catch_up(&leader, now);
                }
            }
        }
    }
}

pub(super) const LOST: &str =
    "leadership lost before the write was acknowledged; it may or may not take effect";
