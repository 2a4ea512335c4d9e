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
//! The leader's half is in `leader.rs`, the follower's in `follower.rs`,
//! the log's durable end and applying in `apply.rs` (with their
//! invariants), the status view in `status.rs` and the settings in
//! `config.rs`. This file holds the core's state, its start and recovery,
//! message dispatch and the election.
//!
//! Invariants kept here:
//! - The state only moves forward: applies continue it, and a snapshot
//!   install below it is refused.
//! - Every entry in the log above `applied` is in
//!   [`PendingPaths`](crate::pending::PendingPaths): a read of its path
//!   waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::config::election_config;
pub use super::config::{CoreConfig, DRIFT, LearnerFeed};
pub use super::status::{ReplicaStatus, SyncRecord};
use crate::dice::Dice;
use crate::election::{Action, Election, Position, Role};
use crate::fanout::ReplicationSet;
use crate::log::{GroupFlush, LogStore};
use crate::merkle::Digest;
use crate::pending::SharedPending;
use crate::store::{Snapshot, Store};
use crate::wire::PeerMessage;

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
    /// ([`super::serving::SnapshotAnswer::reply`]).
    AnswerSnapshot(super::serving::SnapshotAnswer),
    /// The leader's answer to a read index this node asked for: the commit
    /// index to apply through before serving the read, or `None` (ask
    /// again, or refuse the read).
    ReadIndexAnswered {
        id: u64,
        commit: Option<u64>,
    },
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
    /// A verification came due while the state was behind the commit
    /// index (under steady writes it always is: applies gather for up to
    /// 20 ms): the commit index then. Applies stop there, and the one that
    /// reaches it sends the root ([`ReplicaCore::verify_at_finish`]).
    /// Waiting for the state to equal the commit index at a tick starved
    /// verification for as long as writes kept coming.
    pub(super) verify_at: Option<u64>,
    /// A verification left at an apply's finish since the last tick: the
    /// tick starts the next interval.
    pub(super) verified_at_finish: bool,
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
    /// The last revision of the apply in flight (`apply.rs`).
    pub(super) applying: Option<u64>,
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
    pub(super) syncing: Option<super::snapshot::Syncing>,
    /// The latest time an event brought (`handle`, `tick`, `flushed`), for
    /// what the core hears of without one: an install's finish.
    pub(super) latest: Duration,
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
    /// Verifications whose roots differed.
    pub(super) mismatches: u64,
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
            applying: None,
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
            latest: now,
            needs_snapshot: false,
            repairing: false,
            verify: None,
            catch_up_asked: None,
            last_sync: None,
            verified: 0,
            mismatches: 0,
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
            // A snapshot installed just before a crash, over an old
            // leader's uncommitted suffix whose truncation had not reached
            // the disk: the state is committed through its position, so an
            // entry there that disagrees is not (a committed entry is the
            // same in every log), nor is any after it. The log starts at
            // the state, as above. With the log's commit record at or past
            // the state's position the two contradict each other.
            let committed = log.committed().revision;
            if committed >= applied.revision {
                return Err(format!(
                    "the state is at ({}, {}) but the log holds another entry there",
                    applied.epoch, applied.revision
                ));
            }
            log.truncate_after(committed.max(log.start().revision))
                .and_then(|()| log.purge_through(applied))
                .map_err(|e| {
                    format!("starting the log at the state's position after an install: {e}")
                })?;
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
        if self.applying.is_some() {
            // Its transaction may still be writing the state.
            return Err("an apply is still in flight".into());
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

    /// The revision of the log's last entry, committed or not.
    pub fn log_last(&self) -> u64 {
        self.log.last().revision
    }

    pub fn tick(&mut self, now: Duration) {
        self.latest = self.latest.max(now);
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
        self.latest = self.latest.max(now);
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
                // A vote compares the candidate's log with this node's log
                // as it is now: diffs, catch-up and installs move it
                // between ticks, and a grant against the end seen at the
                // last tick could elect a candidate without entries this
                // node has acknowledged durable (and counted in a commit).
                self.election.set_last(self.log.last());
                self.election.handle(&from, m, now);
                self.perform_election(now);
            }
            PeerMessage::Diff {
                epoch,
                prev,
                changes,
                commit,
                more,
            } => self.on_diff(&from, epoch, prev, &changes, commit, more, now),
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

    pub(super) fn perform_election(&mut self, now: Duration) {
        for action in self.election.drain_actions() {
            match action {
                Action::Persist { promised_epoch } => {
                    // Whatever follows must not leave before this is on disk.
                    // Not on disk, it is a failed disk (`disk_error`): what
                    // follows must not leave (its sends, a leadership it
                    // would take), but a step-down or a new leader to
                    // follow still happens. Dropped, a leader past its
                    // lease went on as one, proposing writes nobody would
                    // answer and ignoring the new leader's diffs.
                    if let Err(e) = self.store.set_promised_epoch(promised_epoch) {
                        self.disk_failed(format!("persisting the promised epoch: {e}"));
                    }
                }
                Action::Send { to, message } => {
                    if self.disk_error.is_none() {
                        self.send(&to, PeerMessage::Election(message));
                    }
                }
                Action::BecameLeader { .. } if self.disk_error.is_some() => {}
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
                    // A session asking the old leader ends; a planned
                    // install stays (`replica/snapshot.rs`).
                    if self.syncing.as_ref().is_some_and(|s| s.install.is_none()) {
                        self.syncing = None;
                    }
                    // A new leader (or our first): ask for what we miss.
                    self.request_catch_up(&leader, now);
                }
            }
        }
    }
}

pub(super) const LOST: &str =
    "leadership lost before the write was acknowledged; it may or may not take effect";
