//! The thread that drives a [`ReplicaCore`](super::ReplicaCore): ticks and
//! membership in, peer messages and log flush completions in, checkpoints
//! on a timer, outputs carried out.
//!
//! It runs on a thread of its own with a single-threaded runtime (its
//! timers and channels), not as a task of the node's runtime: a step holds
//! the core, which may block on the disk. As a task it had to hand its
//! worker to another thread for every step (`block_in_place`), about a
//! third of the leader's context switches per write; here a step blocks
//! nothing else. Work that may wait on the network or the disk for long
//! goes back to the node's runtime (`node`).
//!
//! Committed entries are written to redb on apply threads of their own
//! (`apply_threads`), one job at a time ([`ReplicaCore::begin_apply`]): a
//! job takes milliseconds, and on the protocol thread it held up every
//! `Diff`, ack and flush completion meanwhile (at 64 clients the cores
//! sat 17 % idle; `docs/benchmarks.md`, "Applies on a thread of their
//! own").
//!
//! [`ReplicaCore::begin_apply`]: super::ReplicaCore::begin_apply

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use pika_membership::{MemberState, Membership};
use tokio::sync::mpsc;

use super::apply_threads::ApplyThreads;
use super::core::Output;
use super::flush_placement::FlushPlacement;
use super::{Replica, lock, now_ms};
use crate::Format;
use crate::record::{Meta, Op};
use crate::store::StoreError;
use crate::wire::PeerMessage;

pub(crate) struct Driver {
    replica: Replica,
    membership: Arc<Membership>,
    /// The node's runtime: the lock record, checkpoints, disk probes and
    /// snapshot answers run there, off the protocol thread.
    node: tokio::runtime::Handle,
    /// Since when the oldest committed entry not applied yet has waited
    /// (`None`: nothing waits). It is due at [`Driver::apply_due`].
    unapplied_since: Cell<Option<tokio::time::Instant>>,
    /// A checkpoint (a durable redb transaction) runs on the node's
    /// runtime. redb takes one write transaction at a time, so an apply
    /// now would hold the protocol thread until the checkpoint's fsync is
    /// done: no acks, `Diff`s or answers meanwhile. Applies wait for it
    /// instead (reads of pending paths with them).
    checkpointing: Cell<bool>,
    /// A job is on an apply thread. Checkpoints wait for it, and it for
    /// them: redb takes one write transaction at a time.
    applying: Cell<bool>,
    /// When the last checkpoint started. Once the next is due, no new job
    /// starts until it has: jobs that follow each other without a break
    /// (a reader always waiting, or applies slower than commits) would
    /// otherwise keep the checkpoint out for good, and the log with it.
    checkpoint_started: Cell<tokio::time::Instant>,
    /// Where apply jobs go; `None` once the apply threads are gone.
    apply_jobs: Option<ApplyThreads>,
    /// Whether this thread runs the log's flushes itself.
    flush_placement: Cell<FlushPlacement>,
}

/// What an apply thread reports: the job's last revision, and how its
/// store write went.
pub(super) type Applied = (u64, Result<(), crate::store::ApplyError>);

/// How long committed entries may gather before one redb transaction
/// applies them all, while nobody watches this node's changes. Applying
/// costs a transaction whatever it holds (about 150 µs here, most of a
/// follower's protocol thread at one write at a time), and nothing waits
/// for it: answers and acks leave before it, a read of a pending path
/// asks for an apply at once (`SharedPending`), and the leader decides
/// ops against the state plus the pending entries. What it delays is what
/// follows the state: watches and blocking queries (hence
/// [`APPLY_DELAY_WATCHED`]), `revision` in the status and read headers,
/// and verification.
///
/// 20 ms rather than 5 ms: 10-15 % less CPU per write on a follower and
/// 5-10 % on the leader at one client, p50 1.2 -> 1.0 ms on 3 nodes
/// (`docs/benchmarks.md`, "Applies gather longer while nobody watches").
const APPLY_DELAY: Duration = Duration::from_millis(20);

/// ... while a watch or a blocking query waits on this node's state: its
/// next event is late by at most this much.
const APPLY_DELAY_WATCHED: Duration = Duration::from_millis(5);

/// ... or until this many have gathered.
const APPLY_BATCH: u64 = 256;

/// The protocol thread, for an orderly stop.
pub(crate) struct DriverThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl DriverThread {
    /// Ends the loop after the step it is in and waits for the thread.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Driver {
    /// Call inside the node's runtime.
    pub(crate) fn new(replica: Replica, membership: Arc<Membership>) -> Driver {
        Driver {
            replica,
            membership,
            node: tokio::runtime::Handle::current(),
            unapplied_since: Cell::new(None),
            checkpointing: Cell::new(false),
            applying: Cell::new(false),
            checkpoint_started: Cell::new(tokio::time::Instant::now()),
            apply_jobs: None,
            flush_placement: Cell::new(FlushPlacement::default()),
        }
    }

    /// Starts the protocol thread. It ends when [`DriverThread::stop`] is
    /// called or the handle dropped, or when the peer inbox closes.
    pub(crate) fn start(
        mut self,
        inbox: mpsc::Receiver<(String, PeerMessage)>,
        flushed: mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
    ) -> std::io::Result<DriverThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let (applied_tx, applied) = mpsc::unbounded_channel();
        let (apply_jobs, apply_threads) = ApplyThreads::start(&self.replica.store, &applied_tx)?;
        self.apply_jobs = Some(apply_jobs);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("pika-protocol".into())
            .spawn(move || {
                runtime.block_on(self.run(inbox, flushed, applied, apply_threads, stopped))
            })?;
        Ok(DriverThread { stop, thread })
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<(String, PeerMessage)>,
        mut flushed: mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
        mut applied: mpsc::UnboundedReceiver<Applied>,
        apply_threads: [std::thread::JoinHandle<()>; 2],
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        self.drive(&mut inbox, &mut flushed, &mut applied, &mut stopped)
            .await;
        // The apply threads end after the job they are on (one at most
        // between them); its result goes to the core, so that the
        // shutdown's own apply and checkpoint continue from there (a step
        // without the threads applies in place).
        self.apply_jobs = None;
        for thread in apply_threads {
            let _ = thread.join();
        }
        if let Ok((last, result)) = applied.try_recv() {
            self.applying.set(false);
            self.step(|core, _| core.finish_apply(last, result));
        }
    }

    async fn drive(
        &self,
        inbox: &mut mpsc::Receiver<(String, PeerMessage)>,
        flushed: &mut mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
        applied: &mut mpsc::UnboundedReceiver<Applied>,
        stopped: &mut tokio::sync::oneshot::Receiver<()>,
    ) {
        let period = (self.replica.config.heartbeat_interval / 4).max(Duration::from_millis(5));
        // After a stall (or while a branch is disabled), ticks resume at the
        // period instead of firing in a burst for every one missed.
        let delay = tokio::time::MissedTickBehavior::Delay;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(delay);
        let mut checkpoint = tokio::time::interval(self.replica.config.checkpoint_interval);
        checkpoint.set_missed_tick_behavior(delay);
        let retention = self.replica.config.log_retention;
        let (checkpointed_tx, mut checkpointed_rx) = mpsc::unbounded_channel();
        // After a disk error: a probe write every `PROBE_EVERY`, and a
        // recovery once one succeeds.
        let (probed_tx, mut probed_rx) = mpsc::unbounded_channel();
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(delay);
        let mut probing = false;
        let pending = self.replica.shared.pending.clone();
        loop {
            if let Some(pause) = self.replica.peers.faults.take_pause() {
                self.pause(pause, inbox, flushed);
            }
            let idle = !self.checkpointing.get() && !self.applying.get();
            tokio::select! {
                // A stop, or the handle dropped.
                _ = &mut *stopped => return,
                // A reader waits for a pending path, or entries have
                // gathered for long enough. (A ping while a job or a
                // checkpoint runs starts nothing: their completion's step
                // sees the waiting reader.)
                _ = pending.apply_wanted() => self.apply_now(),
                // The deadline is computed again at every turn of the loop,
                // so a watcher that arrives meanwhile shortens it from the
                // next event on.
                _ = sleep_until(self.apply_due()), if self.unapplied_since.get().is_some() && idle => self.apply_now(),
                Some((last, result)) = applied.recv() => {
                    self.applying.set(false);
                    self.step(|core, _| core.finish_apply(last, result));
                }
                Some((ticket, result)) = flushed.recv() => {
                    self.step(|core, now| core.flushed(ticket, result, now));
                }
                // Off the loop: a durable redb commit takes milliseconds,
                // and acks, answers and `Commit` go on meanwhile. One at a
                // time; a tick while one runs is skipped.
                _ = checkpoint.tick(), if idle && lock(&self.replica.shared.status).disk_error.is_none() => {
                    self.checkpointing.set(true);
                    self.checkpoint_started.set(tokio::time::Instant::now());
                    let store = self.replica.store.clone();
                    let done = checkpointed_tx.clone();
                    self.node.spawn_blocking(move || {
                        let reopens = store.reopens();
                        let started = std::time::Instant::now();
                        // Applies wait for the answer: it must come even
                        // from a checkpoint that panicked.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.checkpoint()))
                            .unwrap_or_else(|panic| Err(StoreError::Panicked(panic_message(panic.as_ref()))));
                        // Applies (and reads of paths written just before)
                        // wait this long.
                        metrics::histogram!("pika_checkpoint_seconds").record(started.elapsed().as_secs_f64());
                        let _ = done.send((reopens, result));
                    });
                }
                Some((reopens, position)) = checkpointed_rx.recv() => {
                    self.checkpointing.set(false);
                    // One begun before a reopen speaks of the old state.
                    if reopens == self.replica.store.reopens() {
                        self.step(|core, _| core.checkpointed(position, retention));
                    }
                }
                _ = probe.tick(), if !probing && lock(&self.replica.shared.status).disk_error.is_some() => {
                    probing = true;
                    let dir = self.replica.config.log_dir.clone();
                    let done = probed_tx.clone();
                    self.node.spawn_blocking(move || {
                        let _ = done.send(probe_disk(&dir));
                    });
                }
                Some(result) = probed_rx.recv() => {
                    probing = false;
                    match result {
                        Ok(()) => self.step(|core, now| {
                            if let Err(e) = core.recover(now) {
                                tracing::warn!(error = %e, "the disk takes writes again, but reopening failed; trying again");
                            }
                        }),
                        Err(e) => tracing::debug!(error = %e, "the disk still fails a probe write"),
                    }
                }
                _ = tick.tick() => {
                    let members = self.membership.members();
                    let peers = members.iter().filter(|m| !m.is_self).map(|m| m.id.node_id.clone()).collect();
                    let alive = members
                        .iter()
                        .filter(|m| !m.is_self && m.state == MemberState::Alive)
                        .map(|m| m.id.node_id.clone())
                        .collect();
                    self.step(|core, now| {
                        core.set_members(peers, alive);
                        core.tick(now);
                    });
                }
                message = inbox.recv() => match message {
                    Some((from, message)) => self.step(|core, now| core.handle(from, message, now)),
                    None => return,
                },
            }
        }
    }

    /// A test's pause (`Faults::pause_protocol`): hold the core for `d`,
    /// then hand it everything that arrived meanwhile, in order, before
    /// any tick: a resumed process reads its queued messages first, and
    /// the core must not act on them as if no time had passed.
    fn pause(
        &self,
        d: Duration,
        inbox: &mut mpsc::Receiver<(String, PeerMessage)>,
        flushed: &mut mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
    ) {
        tracing::warn!(?d, "test fault: the protocol pauses");
        {
            let _core = lock(&self.replica.shared.core);
            std::thread::sleep(d);
        }
        while let Ok((ticket, result)) = flushed.try_recv() {
            self.step(|core, now| core.flushed(ticket, result, now));
        }
        while let Ok((from, message)) = inbox.try_recv() {
            self.step(|core, now| core.handle(from, message, now));
        }
    }

    /// Runs one core call (which may write the store: checkpoints,
    /// installs), publishes what readers need, carries out the sends and
    /// answers, and only then starts an apply of what is committed, once
    /// it is due: [`APPLY_DELAY`] after the oldest, at [`APPLY_BATCH`]
    /// entries, or while a reader waits.
    fn step(&self, call: impl FnOnce(&mut super::ReplicaCore<crate::log::DiskLog>, Duration)) {
        self.step_and_apply(call, false);
    }

    /// When what is committed and not applied must be applied:
    /// [`APPLY_DELAY`] after the oldest of it, or [`APPLY_DELAY_WATCHED`]
    /// while someone waits on this node's changes.
    fn apply_due(&self) -> Option<tokio::time::Instant> {
        let delay = if self.replica.store.watchers() > 0 {
            APPLY_DELAY_WATCHED
        } else {
            APPLY_DELAY
        };
        self.unapplied_since.get().map(|since| since + delay)
    }

    /// A step that only applies what is committed.
    fn apply_now(&self) {
        self.step_and_apply(|_, _| {}, true);
    }

    fn step_and_apply(
        &self,
        call: impl FnOnce(&mut super::ReplicaCore<crate::log::DiskLog>, Duration),
        apply_now: bool,
    ) {
        let shared = &self.replica.shared;
        let (rest, leader, held, following) = {
            let now = shared.now();
            let mut core = lock(&shared.core);
            call(&mut core, now);
            // Before any send: a stream opened below says it in its hello.
            self.replica.peers.set_cluster(core.cluster_id());
            // Sends and answers are queue pushes: done under the lock, so
            // that they leave before the apply below.
            let mut rest = shared.perform(&self.replica.peers, core.drain());
            let unapplied = core.unapplied();
            let due = apply_now
                || unapplied >= APPLY_BATCH
                || shared.pending.readers_waiting()
                || self
                    .apply_due()
                    .is_some_and(|at| at <= tokio::time::Instant::now());
            let checkpoint_due = self.checkpoint_started.get()
                + self.replica.config.checkpoint_interval
                < tokio::time::Instant::now();
            let checkpoint_waits = checkpoint_due && core.disk_error().is_none();
            // A snapshot's install goes as soon as it is planned: the
            // node is out of the set until it is in.
            let install = core.install_waiting();
            if (unapplied > 0 && due || install)
                && !self.checkpointing.get()
                && !self.applying.get()
                && !checkpoint_waits
            {
                if self.replica.peers.faults.applies_fail() {
                    core.fail_next_apply("test fault: applies fail");
                }
                if let Some(job) = core.begin_apply() {
                    let someone_waits = job.is_install()
                        || shared.pending.readers_waiting()
                        || self.replica.store.watchers() > 0;
                    let left = match self.apply_jobs.as_ref() {
                        Some(jobs) => jobs.send(job, someone_waits).err(),
                        None => Some(job),
                    };
                    match left {
                        None => self.applying.set(true),
                        // No apply threads (they are gone): apply here.
                        Some(job) => {
                            let result = job.write(&self.replica.store);
                            core.finish_apply(job.last, result);
                        }
                    }
                }
            }
            if core.unapplied() == 0 {
                self.unapplied_since.set(None);
            } else if self.unapplied_since.get().is_none() {
                self.unapplied_since.set(Some(tokio::time::Instant::now()));
            }
            // Published once, after the apply, where it was published
            // before answers moved ahead of the apply.
            let status = core.status(now);
            let leader = status.leader_id.clone();
            *lock(&shared.status) = status;
            *lock(&shared.read_until) = core.read_until(now);
            rest.extend(shared.perform(&self.replica.peers, core.drain()));
            let following = core.election.role() != crate::election::Role::Leader;
            (rest, leader, core.log_mut().take_held(), following)
        };
        // Outside the lock, after the sends above are queued: a follower
        // syncs its log here, a leader on the log's sync thread (its
        // protocol thread takes the followers' acks meanwhile); see
        // `flush_placement`.
        if let Some(held) = held {
            let mut placement = self.flush_placement.get();
            let started = std::time::Instant::now();
            if placement.here(following, started) {
                held.run_here();
                let ended = std::time::Instant::now();
                let took = ended.duration_since(started);
                if placement.ran(took, ended) {
                    tracing::warn!(
                        ?took,
                        backoff = ?super::flush_placement::SLOW_SYNC_BACKOFF,
                        "log syncs stall; the log's sync thread runs this follower's flushes for a while, so that its receipts keep flowing"
                    );
                }
                self.flush_placement.set(placement);
            } else {
                held.hand_off();
            }
        }
        self.remember_leader_http(leader);
        for output in rest {
            match output {
                Output::BecameLeader { epoch } => self.write_lock_record(epoch),
                Output::AnswerSnapshot(job) => {
                    let peers = self.replica.peers.clone();
                    self.node
                        .spawn_blocking(move || peers.send(&job.to, job.reply()));
                }
                Output::SteppedDown { .. } => {}
                // Handled by `perform`.
                Output::Send { .. }
                | Output::Release(_)
                | Output::Fail(..)
                | Output::ReadIndexAnswered { .. } => {}
            }
        }
    }

    /// Looks the leader's HTTP address up in membership when the leader
    /// changes (or until its metadata has arrived), not on every response.
    fn remember_leader_http(&self, leader: Option<String>) {
        let mut cached = lock(&self.replica.shared.leader_http);
        let Some(leader) = leader else {
            *cached = None;
            return;
        };
        if cached.as_ref().is_some_and(|(id, _)| *id == leader) {
            return;
        }
        *cached = self
            .membership
            .members()
            .into_iter()
            .find(|m| m.id.node_id == leader)
            .and_then(|m| m.meta)
            .map(|meta| meta.http_addr)
            .filter(|http| !http.is_empty())
            .map(|http| (leader, http));
    }

    /// The leader's first op of its epoch: the lock record under
    /// `{prefix}/{lock_key}`, replicated like any write.
    fn write_lock_record(&self, epoch: u64) {
        let config = &self.replica.config;
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
            flags: 0,
        };
        let replica = self.replica.clone();
        let path = config.lock_path.clone();
        self.node.spawn(async move {
            let op = match Op::put(path, meta, record.to_string().into_bytes(), None) {
                Ok(op) => op,
                Err(e) => return tracing::error!(error = %e, "lock record"),
            };
            // Until an entry of this epoch commits, nothing the previous
            // leaders left uncommitted does either (and reads of those paths
            // wait): try again while this node still leads the epoch.
            let retry = replica.config.heartbeat_interval;
            for _ in 0..50 {
                match replica.writes.submit(op.clone()).await {
                    Ok(_) => return,
                    Err(e) => tracing::warn!(epoch, error = %e, "writing the lock record failed"),
                }
                tokio::time::sleep(retry).await;
                let status = replica.status();
                if !status.is_leader || status.epoch != epoch {
                    return;
                }
            }
        });
    }
}

/// How often a node whose disk failed tries a probe write.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The probe's size: a disk with less room than this would fail again at
/// once.
const PROBE_BYTES: usize = 1 << 20;

/// Writes, syncs and removes a file in the log's directory and in the
/// data directory above it (the state's file lives there).
fn probe_disk(log_dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let dirs = [Some(log_dir), log_dir.parent()];
    for dir in dirs.into_iter().flatten() {
        let path = dir.join(".pika-disk-probe");
        let result = (|| {
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&vec![0u8; PROBE_BYTES])?;
            file.sync_all()
        })();
        let _ = std::fs::remove_file(&path);
        result?;
    }
    Ok(())
}

/// Sleeps until `at`; never completes for `None` (its branch is off then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a caught panic said, if it said it as a string.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "without a message".into())
}
