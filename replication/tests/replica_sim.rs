//! Deterministic simulation of the whole replica protocol: [`ReplicaCore`]s
//! of 3 and 5 nodes on in-memory redb stores and in-memory logs
//! ([`MemLog`]) whose flushes complete some steps later and whose crashes
//! lose the unflushed tail, a simulated network and clocks, client writes
//! (puts and compare-and-set on 8 shared paths) at whoever leads, and 1200
//! seeded schedules of loss, reordering, duplication, partitions, crashes
//! with restart, disks that fail every flush for a while (the node then
//! recovers in place, as a new incarnation), a node's data wiped (it
//! restarts on an empty store and log under a new id, as on a new
//! Kubernetes volume: a learner, until a dead voter's place is given to
//! it), one node per schedule booting now and then with a `replicas` other
//! than the cluster size, and clock drift within the assumed bound.
//! Verification roots go out every few heartbeats, and in half the
//! schedules, once healed, one follower's state is changed behind the
//! protocol's back (a path's latest version rewritten, as a bug that applied
//! another value would leave it). In a third of the 5-node
//! schedules the cluster's `replicas` is 3, and the other two nodes join
//! one at a time as learners once it runs; in half of all schedules leaders
//! feed learners in batches (`cluster.learner_feed: batched`), so no commit
//! waits for them and they must never be allowed to read.
//!
//! Checked at every step: at most one leader per epoch, never two nodes
//! holding a valid lease at the same real instant, and acknowledgements only
//! inside the acknowledging node's lease; on every node that may serve
//! local reads, a read of any path is either held back (the path is
//! pending) or returns a version no older than the latest acknowledged
//! write of that path. Reads served are recorded, and at the end each must
//! be a committed version (no dirty reads). A node whose verification found
//! its state differing must not read until a snapshot repaired it. Checked
//! after healing: every
//! acknowledged write is on every node, and all Merkle roots are equal. Before healing, with a minority down (the
//! leader among them), the rest must elect and acknowledge writes within
//! a few seconds. A failing seed is printed; replay it alone with
//! `PIKA_SIM_SEED=<seed> PIKA_SIM_NODES=<n>`, and add `PIKA_SIM_TRACE=1`
//! (with `--nocapture`) to print its messages and acknowledgements;
//! `PIKA_SIM_SEEDS=601..3000` runs a longer range than the suite's 1..600.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pika_replication::dice::Dice;
use pika_replication::log::{LogStore, MemDisk, MemLog};
use pika_replication::pending::SharedPending;
use pika_replication::replica::ApplyJob;
use pika_replication::replica::core::{CoreConfig, LearnerFeed, Output, ReplicaCore};
use pika_replication::store::ApplyError;
use pika_replication::wire::PeerMessage;
use pika_replication::{ChangeKind, ConfigPath, Format, Meta, Op, Store};

const STEP: Duration = Duration::from_millis(5);
const INTERVAL: Duration = Duration::from_millis(100);
const LEASE: Duration = Duration::from_millis(500);
const RATE_SPREAD: f64 = 0.03;
/// Paths the clients share.
const PATHS: u64 = 8;
/// Versions kept per path in seven schedules of eight: all of them, so
/// every acknowledged version can be checked at the end.
const HISTORY: u64 = 100_000;
/// ... and in the eighth two, so that a snapshot install often comes
/// from a leader whose history dropped the versions of acknowledged
/// writes: their request ids must travel all the same (a node that caught
/// up that way and then leads would otherwise apply a retry again).
const SHORT_HISTORY: u64 = 2;
/// Log entries kept behind a checkpoint: few, so that a follower down for
/// a while comes back behind the leader's log and needs a snapshot.
const RETAIN: u64 = 4;

struct Node {
    id: String,
    store: Arc<Store>,
    disk: MemDisk,
    pending: SharedPending,
    core: Option<ReplicaCore<MemLog>>,
    rate: f64,
    offset: Duration,
    next_tick: Duration,
    boots: u64,
    /// The disk fails every flush (full, say) until it heals; the node
    /// then recovers in place ([`ReplicaCore::recover`]).
    disk_failing: bool,
    /// This node's `replicas` since its last boot.
    replicas: usize,
    /// The apply in flight, as the driver's apply thread has it: handed
    /// out by [`ReplicaCore::begin_apply`], then written to the store (the
    /// result kept), then reported with [`ReplicaCore::finish_apply`],
    /// each a step of its own, with anything happening in between.
    job: Option<(ApplyJob, Option<Result<(), ApplyError>>)>,
    /// A path whose latest version this node's state holds with other
    /// data than every other node's ([`DIVERGED`], put there behind the
    /// protocol's back), that version, and the verifications that had
    /// differed on this node before. Cleared once the path holds other
    /// data again.
    diverged: Option<(String, u64, u64)>,
}

/// What a diverged path holds (`Store::diverge`), as a bug that applied
/// another value would leave it.
const DIVERGED: &[u8] = b"diverged behind the protocol";

struct Sim {
    seed: u64,
    real: Duration,
    nodes: Vec<Node>,
    side: Vec<u8>,
    net: BTreeMap<(Duration, u64), (usize, usize, PeerMessage)>,
    seq: u64,
    dice: Dice,
    loss: f64,
    max_delay: Duration,
    leaders: BTreeMap<u64, usize>,
    /// (node, token) → the write waiting for its ack.
    pending: HashMap<(usize, u64), Write>,
    acked: Vec<Write>,
    /// The latest acknowledged version of each path.
    latest: HashMap<String, u64>,
    /// Reads served: (node, path, version, value).
    reads: Vec<(usize, String, u64, Option<Vec<u8>>)>,
    /// Chance per step that a node's oldest flush in flight completes.
    flush_speed: f64,
    /// Chance per step that a node applies what it has committed (the
    /// shell applies after carrying out each call's outputs, so the state
    /// may lag the commit index while reads go on).
    apply_speed: f64,
    /// Applies go through the three steps of the driver's apply thread
    /// (`Node::job`), in half the schedules; at once in the others.
    split_applies: bool,
    /// Versions each store keeps per path ([`HISTORY`] or
    /// [`SHORT_HISTORY`]).
    history: u64,
    /// Verifications that matched, and snapshots installed, by all nodes.
    verified: u64,
    /// Verifications that differed: none in a schedule that changes no
    /// state behind the protocol's back.
    mismatches: u64,
    /// The same, by node: only a node whose state was changed may have any.
    mismatches_by_node: Vec<u64>,
    /// States changed behind the protocol's back ([`Sim::diverge`]), and
    /// those repaired after a verification found them.
    divergences: u64,
    repairs: u64,
    /// Every divergence made, by (node, path, version). Once a later write
    /// replaced the path's entry, the version's record may stay diverged
    /// in the history: verification compares the entries' Merkle leaves,
    /// not the versions kept behind them.
    injected: Vec<(usize, String, u64)>,
    snapshots: u64,
    /// Recoveries in place after a disk error.
    recoveries: u64,
    /// Nodes whose data was wiped.
    wipes: u64,
    /// The one node of this schedule that may boot with a `replicas` other
    /// than the cluster size (an operator's mistake, or a change rolled
    /// out to one node), and how many boots did.
    odd: usize,
    odd_boots: u64,
    /// The odd node's configuration was fixed (healing).
    fixed: bool,
    /// Leaders that have not written their lock record yet: (node, epoch).
    /// The node's driver writes it as the epoch's first entry (and retries);
    /// until an entry of the epoch commits, nothing earlier does.
    lock_due: Vec<(usize, u64)>,
    next_token: u64,
    writes: u64,
    /// No client writes: an idle cluster must still let followers read.
    quiet: bool,
    /// The cluster's `replicas`: the node count, or in a third of the
    /// 5-node schedules 3, so that two nodes stay learners for good.
    size: usize,
    /// How leaders feed learners: in batches in half the schedules.
    feed: LearnerFeed,
    /// Reads on learners without read permission, by (node, id): the path
    /// and the latest version acknowledged when the read began, and once
    /// the leader answered, the commit index to apply through first.
    read_indexes: HashMap<(usize, u64), IndexRead>,
    /// Reads served that way.
    index_reads: u64,
    /// How many of the nodes beyond `size` have started. They join a
    /// running cluster one at a time, each once every node started so far
    /// stores a voter set, as a StatefulSet scaled past `replicas` one pod
    /// at a time does. (A new cluster's bootstrap election counts
    /// `replicas`/2 + 1 of anyone: two new nodes that never reached the
    /// cluster could elect each other, which no node can tell from a new
    /// cluster; README, "Learners".)
    extras: usize,
}

/// A read on a learner by the leader's commit index (a read index).
struct IndexRead {
    path: String,
    acked: u64,
    began: Duration,
    boots: u64,
    commit: Option<u64>,
}

#[derive(Debug, Clone)]
struct Write {
    path: String,
    version: u64,
    revision: u64,
    value: String,
    /// The client's request id, if it sent one: after heal each node must
    /// answer it with this write's version and revision.
    request_id: Option<String>,
}

fn config(replicas: usize, learner_feed: LearnerFeed) -> CoreConfig {
    CoreConfig {
        replicas,
        heartbeat_interval: INTERVAL,
        lease: LEASE,
        ack_timeout: LEASE,
        sync_interval: INTERVAL * 3,
        sync_timeout: Duration::from_secs(1),
        frame_bytes: 4 << 10,
        // No bucket here comes near it: installs keep every version, which
        // the history checks rely on (`sync::answer` for what goes over).
        max_answer_bytes: 1 << 30,
        voters_path: "pika/voters".into(),
        dead_voter_timeout: LEASE * 4,
        learner_feed,
    }
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        // One schedule in eight, by the seed rather than a draw, so that
        // the others run the schedules they ran before short histories
        // came in (docs/architecture.md names seeds at which deliberate
        // bugs fail; none is a multiple of 8).
        let history = if seed % 8 == 0 {
            SHORT_HISTORY
        } else {
            HISTORY
        };
        let mut dice = Dice::new(seed);
        let loss = 0.15 * dice.unit();
        let max_delay = Duration::from_millis(1 + dice.below(30) as u64);
        let flush_speed = 0.05 + 0.75 * dice.unit();
        // Most schedules apply right after each step, as the driver does;
        // a quarter lag. (Lagging applies keep paths pending longer, and a
        // read of a pending path waits: with every schedule lagging, the
        // reads that would expose a commit without the set's receipt were
        // mostly waiting, and that deliberate bug went unseen.)
        let apply_speed = if dice.chance(0.75) {
            1.0
        } else {
            0.1 + 0.9 * dice.unit()
        };
        let nodes = (0..n)
            .map(|i| Node {
                id: format!("n{i}"),
                store: Arc::new(Store::open_in_memory(history).expect("in-memory store")),
                disk: MemDisk::default(),
                pending: SharedPending::default(),
                core: None,
                rate: 1.0 - RATE_SPREAD + 2.0 * RATE_SPREAD * dice.unit(),
                offset: Duration::from_millis(dice.below(10_000) as u64),
                next_tick: Duration::ZERO,
                boots: 0,
                disk_failing: false,
                replicas: n,
                job: None,
                diverged: None,
            })
            .collect();
        let odd = dice.below(n);
        let size = if n == 5 && dice.chance(1.0 / 3.0) {
            3
        } else {
            n
        };
        let feed = if dice.chance(0.5) {
            LearnerFeed::Batched
        } else {
            LearnerFeed::PerWrite
        };
        let mut sim = Sim {
            seed,
            real: Duration::ZERO,
            nodes,
            side: vec![0; n],
            net: BTreeMap::new(),
            seq: 0,
            dice,
            loss,
            max_delay,
            leaders: BTreeMap::new(),
            pending: HashMap::new(),
            acked: Vec::new(),
            latest: HashMap::new(),
            reads: Vec::new(),
            flush_speed,
            apply_speed,
            split_applies: false,
            history,
            verified: 0,
            mismatches: 0,
            mismatches_by_node: Vec::new(),
            divergences: 0,
            repairs: 0,
            injected: Vec::new(),
            snapshots: 0,
            recoveries: 0,
            wipes: 0,
            odd,
            odd_boots: 0,
            fixed: false,
            lock_due: Vec::new(),
            next_token: 1,
            writes: 0,
            quiet: false,
            size,
            feed,
            extras: 0,
            read_indexes: HashMap::new(),
            index_reads: 0,
        };
        sim.split_applies = sim.dice.chance(0.5);
        for i in 0..size {
            sim.boot(i);
        }
        sim
    }

    fn local(&self, i: usize) -> Duration {
        self.nodes[i].offset + self.real.mul_f64(self.nodes[i].rate)
    }

    /// Node `i`'s `replicas` for its next boot. Every node but one has
    /// the cluster size. The odd one sometimes has a value near it: from
    /// n - 2 (never below 2: a node told it is a cluster of one leads
    /// alone, whatever the others say) to n + 2. Only one node differs at
    /// a time: two nodes sharing a wrong `replicas` below the cluster size
    /// can elect each other in a new cluster while the rest elect theirs,
    /// which no check of grants can tell from a cluster of that size
    /// (README, "Configuration").
    fn replicas_at_boot(&mut self, i: usize) -> usize {
        let n = self.size;
        if i != self.odd || self.fixed || self.dice.chance(0.5) {
            return n;
        }
        let choices: Vec<usize> = (n.saturating_sub(2).max(2)..=n + 2)
            .filter(|r| *r != n)
            .collect();
        self.odd_boots += 1;
        choices[self.dice.below(choices.len())]
    }

    fn boot(&mut self, i: usize) {
        self.boot_with(i, None);
    }

    /// Boots node `i`, with the given `replicas` or one drawn for it.
    fn boot_with(&mut self, i: usize, replicas: Option<usize>) {
        let now = self.local(i);
        let replicas = match replicas {
            Some(r) => r,
            None => self.replicas_at_boot(i),
        };
        let node = &mut self.nodes[i];
        node.replicas = replicas;
        node.boots += 1;
        let seed = self.seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407) ^ node.boots;
        // A restart keeps the store (as if just checkpointed: it only ever
        // holds entries durable in the log) and what the log flushed.
        node.pending = SharedPending::default();
        node.disk_failing = false;
        // Each start is a new generation of the store, as on disk.
        node.store.reopen().expect("an in-memory store reopens");
        node.core = Some(
            ReplicaCore::new(
                node.id.clone(),
                config(replicas, self.feed),
                node.store.clone(),
                MemLog::open(node.disk.clone()),
                node.pending.clone(),
                node.store.generation(),
                seed,
                now,
            )
            .expect("the core opens on its own store and log"),
        );
    }

    /// Node `i` loses its data directory: it restarts on an empty store
    /// and log, under a new node id (the id lives in the store).
    fn wipe(&mut self, i: usize) {
        if self.up(i) {
            self.crash(i);
        }
        self.wipes += 1;
        // What the old incarnation sent or was sent went over connections
        // bound to its id: none of it reaches or speaks for the new one.
        self.net.retain(|_, (from, to, _)| *from != i && *to != i);
        let node = &mut self.nodes[i];
        node.store = Arc::new(Store::open_in_memory(self.history).expect("in-memory store"));
        node.disk = MemDisk::default();
        node.diverged = None;
        node.id = format!("n{i}w{}", self.wipes);
        self.boot(i);
    }

    fn crash(&mut self, i: usize) {
        self.count(i);
        self.nodes[i].core = None;
        // The apply thread dies with the process; a store write it made
        // stays (the store here is as if checkpointed).
        self.nodes[i].job = None;
        // Writers at a crashed leader never learn their outcome: not acked.
        self.pending.retain(|(node, _), _| *node != i);
    }

    /// Adds what node `i`'s current incarnation verified and installed.
    fn count(&mut self, i: usize) {
        if let Some(core) = self.nodes[i].core.as_ref() {
            let status = core.status(self.local(i));
            self.verified += status.verified;
            self.mismatches += status.mismatches;
            if self.mismatches_by_node.len() <= i {
                self.mismatches_by_node.resize(i + 1, 0);
            }
            self.mismatches_by_node[i] += status.mismatches;
            self.snapshots += status.snapshots;
        }
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn can_talk(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b] && self.up(a) && self.up(b)
    }

    fn outputs(&mut self, i: usize) -> Result<(), String> {
        let now = self.local(i);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return Ok(());
        };
        let holds_lease = core.lease(now).is_some();
        for output in core.drain() {
            // Built off the protocol loop in a node; here at once, and
            // delivered with the network's delays like any message.
            let output = match output {
                Output::AnswerSnapshot(job) => Output::Send {
                    to: job.to.clone(),
                    message: job.reply(),
                },
                other => other,
            };
            match output {
                Output::Send { to, message } => {
                    let Some(j) = self.nodes.iter().position(|n| n.id == to) else {
                        continue;
                    };
                    let copies = 1 + usize::from(self.dice.chance(0.03));
                    for _ in 0..copies {
                        if self.dice.chance(self.loss) {
                            continue;
                        }
                        let delay =
                            Duration::from_micros(200) + self.max_delay.mul_f64(self.dice.unit());
                        self.seq += 1;
                        self.net
                            .insert((self.real + delay, self.seq), (i, j, message.clone()));
                    }
                }
                Output::Release(tokens) => {
                    // Acknowledgements only inside the node's own lease, so
                    // (with one lease at a time, checked every step) no two
                    // nodes ever acknowledge in overlapping lease periods.
                    if !holds_lease {
                        return Err(format!("n{i} acknowledged writes outside its lease"));
                    }
                    for t in tokens {
                        if std::env::var_os("PIKA_SIM_TRACE").is_some() {
                            eprintln!("{:?} n{i} acks {:?}", self.real, self.pending.get(&(i, t)));
                        }
                        if let Some(write) = self.pending.remove(&(i, t)) {
                            let latest = self.latest.entry(write.path.clone()).or_default();
                            *latest = (*latest).max(write.version);
                            self.acked.push(write);
                        }
                    }
                }
                Output::Fail(tokens, _) => {
                    for t in tokens {
                        self.pending.remove(&(i, t));
                    }
                }
                Output::BecameLeader { epoch } => {
                    if let Some(other) = self.leaders.insert(epoch, i)
                        && other != i
                    {
                        return Err(format!("two leaders in epoch {epoch}: n{other} and n{i}"));
                    }
                    self.lock_due.push((i, epoch));
                }
                Output::ReadIndexAnswered { id, commit } => match commit {
                    Some(c) => {
                        if let Some(read) = self.read_indexes.get_mut(&(i, id)) {
                            read.commit = Some(c);
                        }
                    }
                    None => {
                        self.read_indexes.remove(&(i, id));
                    }
                },
                Output::SteppedDown { .. } | Output::AnswerSnapshot(_) => {}
            }
        }
        Ok(())
    }

    /// A client write at node `i`, done the way the committer does it:
    /// propose (decide, append, send), then wait for the commit. Half are
    /// compare-and-set on the latest acknowledged version, which may be
    /// stale (then refused, like a 409).
    fn write(&mut self, i: usize) {
        let now = self.local(i);
        self.writes += 1;
        let path = format!("w/{}", self.dice.below(PATHS as usize));
        let value = format!("v{}", self.writes);
        let expected = self
            .dice
            .chance(0.5)
            .then(|| self.latest.get(&path).copied().unwrap_or(0));
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let Ok(epoch) = core.write_epoch() else {
            return;
        };
        let meta = Meta {
            format: Format::Text,
            description: String::new(),
            flags: 0,
        };
        // Request ids where the history is short (see SHORT_HISTORY);
        // with all versions kept, they travel with them.
        let request_id = (self.history == SHORT_HISTORY).then(|| format!("r{}", self.writes));
        let op = match Op::put(
            ConfigPath::new(path.clone()).expect("path"),
            meta,
            value.clone().into_bytes(),
            expected,
        ) {
            Ok(op) => op.with_request_id(request_id.clone()),
            Err(e) => panic!("bad test op: {e}"),
        };
        let Ok((results, _)) = core.propose(epoch, &[op], 0, now) else {
            return;
        };
        let Some(Ok(applied)) = results.first() else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(
            (i, token),
            Write {
                path,
                version: applied.version,
                revision: applied.revision,
                value,
                request_id,
            },
        );
        core.wait(epoch, applied.revision, token, now);
    }

    /// The lock records leaders owe, as their drivers write them.
    fn lock_records(&mut self) {
        let due = std::mem::take(&mut self.lock_due);
        for (i, epoch) in due {
            let now = self.local(i);
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            match core.write_epoch() {
                Ok(e) if e == epoch => {}
                Ok(_) => continue,
                Err(_) if core.lease(now) == Some(epoch) => {
                    self.lock_due.push((i, epoch));
                    continue;
                }
                Err(_) => continue,
            }
            let meta = Meta {
                format: Format::Text,
                description: String::new(),
                flags: 0,
            };
            let op = Op::put(
                ConfigPath::new("pika/pika-leader").expect("path"),
                meta,
                format!("n{i} leads {epoch}").into_bytes(),
                None,
            )
            .expect("a text value");
            if core.propose(epoch, &[op], 0, now).is_err() {
                self.lock_due.push((i, epoch));
            }
        }
    }

    /// Completes flushes in flight, each node's oldest first, at this
    /// schedule's disk speed.
    fn flushes(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if !self.dice.chance(self.flush_speed) {
                continue;
            }
            let now = self.local(i);
            let failing = self.nodes[i].disk_failing;
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            if failing {
                if let Some(ticket) = core.log_mut().fail_flush() {
                    let full = std::io::Error::other("no space left on device");
                    core.flushed(ticket, Err(full), now);
                }
            } else if let Some(ticket) = core.log_mut().complete_flush() {
                core.flushed(ticket, Ok(()), now);
            }
            self.outputs(i)?;
        }
        Ok(())
    }

    /// A node whose disk failed and works again recovers in place, some
    /// steps later (the shell probes the disk now and then).
    fn recoveries(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let now = self.local(i);
            let failing = self.nodes[i].disk_failing;
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            if core.disk_error().is_none() || failing || !self.dice.chance(0.05) {
                continue;
            }
            // The shell tries again later while an apply is in flight.
            if core.applying().is_some() {
                if core.recover(now).is_ok() {
                    return Err(format!("n{i} recovered with an apply in flight"));
                }
                continue;
            }
            core.recover(now)?;
            self.recoveries += 1;
            if std::env::var_os("PIKA_SIM_TRACE").is_some() {
                eprintln!("{:?} n{i} recovered from a disk error", self.real);
            }
            self.outputs(i)?;
        }
        Ok(())
    }

    /// Applies committed entries on some nodes, at this schedule's speed.
    fn applies(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if !self.dice.chance(self.apply_speed) {
                continue;
            }
            let node = &mut self.nodes[i];
            let Some(core) = node.core.as_mut() else {
                continue;
            };
            if !self.split_applies {
                core.apply();
            } else {
                match node.job.take() {
                    None => node.job = core.begin_apply().map(|job| (job, None)),
                    Some((job, None)) => {
                        let result = job.write(&node.store);
                        node.job = Some((job, Some(result)));
                    }
                    Some((job, Some(result))) => core.finish_apply(job.last, result),
                }
            }
            self.outputs(i)?;
        }
        Ok(())
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.real += STEP;
        let n = self.nodes.len();
        self.start_extras();
        if faults {
            if self.dice.chance(0.004) {
                self.side = if self.side.iter().all(|s| *s == 0) {
                    (0..n).map(|_| u8::from(self.dice.chance(0.5))).collect()
                } else {
                    vec![0; n]
                };
            }
            if self.dice.chance(0.003) {
                let i = self.dice.below(n);
                if self.up(i) {
                    self.crash(i);
                } else if self.started(i) {
                    self.boot(i);
                }
            }
            // A disk fills up (every flush fails until it heals), or heals.
            if self.dice.chance(0.002) {
                let i = self.dice.below(n);
                self.nodes[i].disk_failing = !self.nodes[i].disk_failing;
            }
            // A data directory is lost. One failure at a time: only while
            // every node's state (durable, unlike the log's unflushed
            // tail) holds a voter set of every current node: a wiped node
            // was replaced, and no node is still to store the set. Two
            // lost disks of three are beyond what any quorum survives; and
            // a node whose disk never held the set boots as a new node
            // (DESIGN.md, "Who votes"), so with one disk lost it would be
            // the second. Every node up and every log's newest set the same
            // full one, too: a set that dropped a dead voter, appended but
            // not applied yet, would make this wipe a second lost voter.
            if self.dice.chance(0.0015) && self.voters_durable() && self.voters_complete() {
                let i = self.dice.below(n);
                self.wipe(i);
            }
            // A power cut: every node loses what it had not flushed.
            if self.dice.chance(0.0008) {
                for i in 0..n {
                    if self.up(i) {
                        self.crash(i);
                    }
                    if self.started(i) {
                        self.boot(i);
                    }
                }
            }
        }
        self.lock_records();
        self.recoveries()?;
        for i in 0..n {
            self.outputs(i)?;
        }
        self.flushes()?;
        self.applies()?;
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.real {
                break;
            }
            let (from, to, message) = entry.remove();
            if !self.can_talk(from, to) {
                continue;
            }
            let now = self.local(to);
            if std::env::var_os("PIKA_SIM_TRACE").is_some()
                && !matches!(message, PeerMessage::Diff { .. })
            {
                eprintln!("{:?} n{from}->n{to} {:?}", self.real, message);
            }
            let from_id = self.nodes[from].id.clone();
            let diff = matches!(message, PeerMessage::Diff { .. });
            let before = if diff {
                self.uncommitted(to)
            } else {
                Vec::new()
            };
            if let Some(core) = self.nodes[to].core.as_mut() {
                core.handle(from_id, message, now);
            }
            if diff {
                self.check_kept(to, from, &before)?;
            }
            self.outputs(to)?;
        }
        for i in 0..n {
            let now = self.local(i);
            if !self.up(i) || now < self.nodes[i].next_tick {
                continue;
            }
            // Now and then a node's protocol stalls for up to half a lease
            // while messages still reach it: whatever a tick refreshes
            // (the log end an election compares with, say) is then stale.
            let stall = if self.dice.chance(0.01) {
                LEASE.mul_f64(0.5 * self.dice.unit())
            } else {
                Duration::ZERO
            };
            self.nodes[i].next_tick = now + INTERVAL / 4 + stall;
            let peers: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| self.nodes[j].id.clone())
                .collect();
            let alive: Vec<String> = (0..n)
                .filter(|j| *j != i && self.can_talk(i, *j))
                .map(|j| self.nodes[j].id.clone())
                .collect();
            let checkpoint = self.dice.chance(0.05);
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.set_members(peers, alive);
                core.tick(now);
                if checkpoint {
                    core.checkpoint(RETAIN);
                }
            }
            self.outputs(i)?;
        }
        if !self.quiet && self.dice.chance(0.08) {
            let i = self.dice.below(n);
            self.write(i);
            self.outputs(i)?;
        }
        if self.dice.chance(0.05) {
            let i = self.dice.below(n);
            self.begin_index_read(i);
        }
        self.serve_index_reads()?;
        let holders: Vec<(usize, u64)> = (0..n)
            .filter_map(|i| Some((i, self.nodes[i].core.as_ref()?.lease(self.local(i))?)))
            .collect();
        if holders.len() > 1 {
            return Err(format!(
                "overlapping valid leases at real {:?}: {holders:?}",
                self.real
            ));
        }
        self.check_core_invariants()?;
        self.check_divergence()?;
        self.check_reads()
    }

    /// Node `i`'s log entries above its commit index: (revision, epoch).
    fn uncommitted(&self, i: usize) -> Vec<(u64, u64)> {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return Vec::new();
        };
        (core.commit_index() + 1..=core.log_last())
            .filter_map(|r| Some((r, core.log().epoch_at(r)?)))
            .collect()
    }

    /// A diff makes a follower drop only entries its sender's log does not
    /// hold (a conflicting or stale suffix): dropping one the leader holds
    /// loses a durable copy of what may be committed already.
    fn check_kept(&self, to: usize, from: usize, before: &[(u64, u64)]) -> Result<(), String> {
        let (Some(follower), Some(sender)) =
            (self.nodes[to].core.as_ref(), self.nodes[from].core.as_ref())
        else {
            return Ok(());
        };
        for &(revision, epoch) in before {
            if follower.log().epoch_at(revision) != Some(epoch)
                && sender.log().epoch_at(revision) == Some(epoch)
            {
                return Err(format!(
                    "n{to} dropped its entry ({epoch}, {revision}) on a diff from n{from}, \
                     whose log holds it, at real {:?}",
                    self.real
                ));
            }
        }
        Ok(())
    }

    /// What every node's core keeps at every step (`replica/apply.rs`):
    /// the state holds committed entries only, and only entries durable
    /// in the node's own log (`applied ≤ commit`, `applied ≤ flushed`),
    /// and the durable end is an entry of the log.
    fn check_core_invariants(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            let applied = node.store.revision();
            let (commit, durable, last) = (
                core.commit_index(),
                core.durable_end().revision,
                core.log_last(),
            );
            // A snapshot install on the apply thread moves the state to
            // the leader's committed S before the core hears of it
            // (`replica/snapshot.rs`): no further, and the thread holds it.
            if let Some(at) = core.installing() {
                let job = node.job.as_ref().map(|(job, _)| job.last);
                if (self.split_applies && job != Some(at)) || applied > at || durable > last {
                    return Err(format!(
                        "n{i} at real {:?}: an install at {at} in flight (the thread holds {job:?}), \
                         applied {applied}, durable end {durable}, log last {last}",
                        self.real
                    ));
                }
                continue;
            }
            if applied > commit || applied > durable || durable > last {
                return Err(format!(
                    "n{i} at real {:?}: applied {applied}, commit {commit}, durable end {durable}, log last {last}: \
                     the state must hold only committed entries durable in its log",
                    self.real
                ));
            }
            // An apply in flight holds committed entries durable here, and
            // is the one the sim's apply thread holds.
            let job = node.job.as_ref().map(|(job, _)| job.last);
            if let Some(last) = core.applying()
                && (last > commit || last > durable || job != Some(last))
            {
                return Err(format!(
                    "n{i} at real {:?}: an apply through {last} in flight (the thread holds {job:?}), \
                     commit {commit}, durable end {durable}",
                    self.real
                ));
            }
        }
        Ok(())
    }

    /// DESIGN.md, "Reads": on a node that may serve local reads, a read
    /// of a path either waits (an entry of the path is pending) or returns
    /// a version no older than the latest acknowledged write of the path.
    /// One read per node per step is recorded for the dirty-read check.
    /// A client read on a learner that holds no read permission (fed in
    /// batches), the way `Replica::read_permission` does it: it begins
    /// now, asks the leader it follows for the commit index, and is served
    /// once the learner applied through it ([`Self::serve_index_reads`]).
    fn begin_index_read(&mut self, i: usize) {
        let now = self.local(i);
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let status = core.status(now);
        if status.voter != Some(false)
            || status.is_leader
            || core.read_until(now).is_some_and(|u| now < u)
        {
            return;
        }
        let Some(j) = status
            .leader_id
            .and_then(|l| self.nodes.iter().position(|n| n.id == l))
        else {
            return;
        };
        let path = format!("w/{}", self.dice.below(PATHS as usize));
        let acked = self.latest.get(&path).copied().unwrap_or(0);
        self.next_token += 1;
        let id = self.next_token;
        self.read_indexes.insert(
            (i, id),
            IndexRead {
                path,
                acked,
                began: self.real,
                boots: self.nodes[i].boots,
                commit: None,
            },
        );
        if !self.dice.chance(self.loss) {
            self.seq += 1;
            let delay = Duration::from_micros(200) + self.max_delay.mul_f64(self.dice.unit());
            self.net.insert(
                (self.real + delay, self.seq),
                (i, j, PeerMessage::ReadIndex { id }),
            );
        }
    }

    /// Serves the reads whose learner applied through the leader's commit
    /// index: each must return its path at a version no older than the one
    /// acknowledged when it began. Reads of a node that restarted, or
    /// older than the shell's `forward_timeout`, are dropped (a 503).
    fn serve_index_reads(&mut self) -> Result<(), String> {
        let mut done = Vec::new();
        for (&(i, id), read) in &self.read_indexes {
            let node = &self.nodes[i];
            if node.core.is_none()
                || node.boots != read.boots
                || self.real > read.began + Duration::from_secs(2)
            {
                done.push((i, id));
                continue;
            }
            let Some(commit) = read.commit else {
                continue;
            };
            if node.store.revision() < commit {
                continue;
            }
            // Nor while it waits for a snapshot (`Replica::read_permission`
            // refuses it): a state found to differ may hold the commit index.
            let now = self.local(i);
            if node.core.as_ref().is_some_and(|c| c.status(now).behind) {
                continue;
            }
            done.push((i, id));
            let stored = node
                .store
                .get(&read.path, None)
                .map_err(|e| e.to_string())?;
            let version = stored.as_ref().map_or(0, |c| c.version);
            if version < read.acked {
                return Err(format!(
                    "n{i} served a read by the leader's commit index {commit} at real {:?} (begun {:?}) with {} v{version}, older than the acknowledged v{}",
                    self.real, read.began, read.path, read.acked
                ));
            }
            if version > 0 {
                let value = stored.and_then(|c| match c.kind {
                    ChangeKind::Put { data, .. } => Some(data),
                    ChangeKind::Delete => None,
                });
                self.reads.push((i, read.path.clone(), version, value));
            }
            self.index_reads += 1;
        }
        for key in done {
            self.read_indexes.remove(&key);
        }
        Ok(())
    }

    /// Changes one follower's state behind the protocol's back: the data
    /// of one path's latest version, as a bug that applied another value
    /// would leave it (`Store::diverge`). A follower that may read, so
    /// that a leader's state, the reference verification compares with,
    /// stays right.
    fn diverge(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        let i = self.dice.below(n);
        let path = format!("w/{}", self.dice.below(PATHS as usize));
        let now = self.local(i);
        let Some(core) = self.nodes[i].core.as_ref() else {
            return Ok(());
        };
        let status = core.status(now);
        if status.is_leader || core.read_until(now).is_none_or(|u| now >= u) {
            return Ok(());
        }
        let node = &mut self.nodes[i];
        let version = match node.store.entry(&path).map_err(|e| e.to_string())? {
            Some(entry) => entry.version,
            None => return Ok(()),
        };
        if node
            .store
            .diverge(&path, DIVERGED.to_vec())
            .map_err(|e| e.to_string())?
        {
            node.diverged = Some((path.clone(), version, status.mismatches));
            self.injected.push((i, path, version));
            self.divergences += 1;
        }
        Ok(())
    }

    /// A node whose verification found its state differs from the
    /// leader's serves no read from then until a snapshot of the differing
    /// buckets repairs it (DESIGN.md, "Catch-up, snapshots and
    /// verification").
    fn check_divergence(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let Some((path, _, mismatches_before)) = self.nodes[i].diverged.clone() else {
                continue;
            };
            let now = self.local(i);
            let node = &self.nodes[i];
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            let status = core.status(now);
            let found = status.mismatches > mismatches_before;
            let holds = node
                .store
                .get(&path, None)
                .map_err(|e| e.to_string())?
                .is_some_and(
                    |c| matches!(c.kind, ChangeKind::Put { ref data, .. } if data == DIVERGED),
                );
            if !holds {
                self.repairs += u64::from(found);
                self.nodes[i].diverged = None;
                continue;
            }
            if found && core.read_until(now).is_some_and(|until| now < until) {
                return Err(format!(
                    "n{i} may serve reads at real {:?} though a verification found its state \
                     differs from the leader's ({path}) and no snapshot repaired it: {status:?}",
                    self.real
                ));
            }
        }
        Ok(())
    }

    fn check_reads(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let now = self.local(i);
            let node = &self.nodes[i];
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            if core.read_until(now).is_none_or(|until| now >= until) {
                continue;
            }
            let sample = self.dice.below(PATHS as usize);
            for k in 0..PATHS {
                let path = format!("w/{k}");
                if node.pending.lock().highest(&path).is_some() {
                    continue; // the read waits
                }
                let stored = node.store.get(&path, None).map_err(|e| e.to_string())?;
                let version = stored.as_ref().map_or(0, |c| c.version);
                if let Some(&acked) = self.latest.get(&path)
                    && version < acked
                {
                    return Err(format!(
                        "n{i} may serve reads at real {:?} but returns {path} v{version}, older than the acknowledged v{acked} ({:?}; leaders by epoch {:?})",
                        self.real,
                        core.status(now),
                        self.leaders
                    ));
                }
                if k == sample as u64 && version > 0 {
                    let value = stored.and_then(|c| match c.kind {
                        ChangeKind::Put { data, .. } => Some(data),
                        ChangeKind::Delete => None,
                    });
                    // Before a verification finds it, a diverged state is
                    // read like any other: nothing can tell (after, it
                    // must not be, `check_divergence`).
                    if value.as_deref() != Some(DIVERGED) {
                        self.reads.push((i, path, version, value));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `store`'s history no longer keeps `version` of `path` by
    /// design: a short history's window has moved past it.
    fn dropped(&self, store: &Store, path: &str, version: u64) -> Result<bool, String> {
        let latest = store
            .entry(path)
            .map_err(|e| e.to_string())?
            .map_or(0, |e| e.version);
        Ok(version + self.history <= latest)
    }

    /// Whether node `i` keeps `version` of `path` as a divergence left it,
    /// behind a later entry: out of verification's reach (see
    /// [`Sim::injected`]). A diverged entry itself must be repaired.
    fn history_diverged(&self, i: usize, path: &str, version: u64) -> Result<bool, String> {
        if !self
            .injected
            .iter()
            .any(|(n, p, v)| *n == i && p == path && *v == version)
        {
            return Ok(false);
        }
        let store = &self.nodes[i].store;
        let latest = store
            .entry(path)
            .map_err(|e| e.to_string())?
            .map_or(0, |e| e.version);
        let kept = store.get(path, Some(version)).map_err(|e| e.to_string())?;
        Ok(latest > version
            && kept.is_some_and(
                |c| matches!(c.kind, ChangeKind::Put { ref data, .. } if data == DIVERGED),
            ))
    }

    /// No dirty reads: every version a read returned is the committed one
    /// (what every node holds under that version once healed).
    fn check_reads_were_committed(&self) -> Result<(), String> {
        let reference = &self.nodes[0].store;
        for (i, path, version, value) in &self.reads {
            if self.dropped(reference, path, *version)?
                || self.history_diverged(0, path, *version)?
            {
                // Not checkable here (the schedules that keep every
                // version check them all).
                continue;
            }
            let committed = reference
                .get(path, Some(*version))
                .map_err(|e| e.to_string())?
                .and_then(|c| match c.kind {
                    ChangeKind::Put { data, .. } => Some(data),
                    ChangeKind::Delete => None,
                });
            if committed != *value {
                return Err(format!(
                    "n{i} served {path} v{version} = {:?}, but the committed v{version} is {:?}",
                    value.as_deref().map(String::from_utf8_lossy),
                    committed.as_deref().map(String::from_utf8_lossy)
                ));
            }
        }
        Ok(())
    }

    /// Node `i` has started before (it may be down now).
    fn started(&self, i: usize) -> bool {
        i < self.size + self.extras
    }

    /// Starts the next node beyond `size` once every node started so far
    /// stores a voter set.
    fn start_extras(&mut self) {
        let next = self.size + self.extras;
        if next >= self.nodes.len() {
            return;
        }
        let stored = self.nodes[..next]
            .iter()
            .all(|n| n.store.get("pika/voters", None).ok().flatten().is_some());
        if stored {
            self.extras += 1;
            self.boot(next);
        }
    }

    fn run(&mut self, d: Duration, faults: bool) -> Result<(), String> {
        let end = self.real + d;
        while self.real < end {
            self.step(faults)?;
        }
        Ok(())
    }

    /// DESIGN.md, "Failure model": with a minority down, the rest must
    /// elect a leader and acknowledge writes. Down go the leader, if there
    /// is one, and random others: the survivors then often differ in how
    /// far their logs reach, and the one behind must not hold up the
    /// election.
    /// Whether every node's log holds a voter set of all `n` nodes (the
    /// first leader writes the nodes that elected it; the others are
    /// promoted once caught up).
    /// Every node's state holds the same full voter set (`size` of the
    /// current nodes).
    fn voters_durable(&self) -> bool {
        let sets: Vec<Option<std::collections::BTreeSet<String>>> = self
            .nodes
            .iter()
            .map(|n| {
                n.store
                    .get("pika/voters", None)
                    .ok()
                    .flatten()
                    .and_then(|c| pika_replication::replica::voters::parse(&c))
            })
            .collect();
        sets.iter().all(|v| *v == sets[0]) && sets[0].as_ref().is_some_and(|v| self.full(v))
    }

    /// A voter set of `size` current nodes, or more (the odd node may have
    /// grown it past `size` while it led with a larger `replicas`).
    fn full(&self, voters: &std::collections::BTreeSet<String>) -> bool {
        voters.len() >= self.size
            && voters
                .iter()
                .all(|id| self.nodes.iter().any(|n| n.id == *id))
    }

    /// Every node is up and its log's newest voter set is the same full
    /// set.
    fn voters_complete(&self) -> bool {
        let sets: Vec<Option<&std::collections::BTreeSet<String>>> = self
            .nodes
            .iter()
            .map(|n| n.core.as_ref().and_then(|c| c.voters()))
            .collect();
        sets.iter().all(|v| *v == sets[0]) && sets[0].is_some_and(|v| self.full(v))
    }

    /// Whether a Diff with a voter-set record is on its way. Seed 5n/2418:
    /// a leader proposed removing a voter and crashed before its flush;
    /// every log still held the full set while the removal was in flight
    /// to a node that then used it, and taking two more voters down left
    /// that node's set of four without a majority.
    fn voters_in_flight(&self) -> bool {
        self.net.values().any(|(_, _, m)| match m {
            PeerMessage::Diff { changes, .. } => {
                changes.iter().any(|c| c.path.as_str() == "pika/voters")
            }
            _ => false,
        })
    }

    /// The voter set every node holds (call once [`Self::voters_complete`]).
    fn voter_ids(&self) -> std::collections::BTreeSet<String> {
        self.nodes[0]
            .core
            .as_ref()
            .and_then(|c| c.voters().cloned())
            .unwrap_or_default()
    }

    fn degraded(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        // A minority may fail once the voter set holds every node: heal
        // until it does (a voter set of 2 of 3 needs both). A leader with
        // `replicas` below the cluster size grows the set only to that:
        // the operator fixes the odd node's configuration first.
        self.side = vec![0; n];
        self.loss = 0.0;
        self.fixed = true;
        for i in 0..n {
            self.nodes[i].disk_failing = false;
            if self.nodes[i].replicas != self.size && self.started(i) {
                if self.up(i) {
                    self.crash(i);
                }
                self.boot_with(i, Some(self.size));
            }
            if !self.up(i) && self.started(i) {
                self.boot(i);
            }
        }
        for _ in 0..40 {
            if self.voters_complete() && !self.voters_in_flight() {
                break;
            }
            self.run(Duration::from_millis(250), false)?;
        }
        if !self.voters_complete() || self.voters_in_flight() {
            let statuses: Vec<String> = (0..n)
                .filter_map(|i| {
                    let now = self.local(i);
                    Some(format!("{:?}", self.nodes[i].core.as_ref()?.status(now)))
                })
                .collect();
            return Err(format!(
                "the voter set does not hold every node 10 s after healing: {statuses:?}"
            ));
        }
        let mut down: Vec<usize> = (0..n)
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.lease(self.local(i)).is_some())
            })
            .collect();
        // A minority of the voters (learners stay up: they count for no
        // quorum).
        let voters = self.voter_ids();
        while down.len() < (voters.len() - 1) / 2 {
            let i = self.dice.below(n);
            if !down.contains(&i) && voters.contains(&self.nodes[i].id) {
                down.push(i);
            }
        }
        self.side = vec![0; n];
        self.loss = 0.0;
        for node in &mut self.nodes {
            node.disk_failing = false;
        }
        for i in 0..n {
            match (down.contains(&i), self.up(i)) {
                (true, true) => self.crash(i),
                (false, false) if self.started(i) => self.boot(i),
                _ => {}
            }
        }
        let before = self.acked.len();
        for _ in 0..24 {
            self.run(Duration::from_millis(250), false)?;
            if self.acked.len() >= before + 3 {
                return Ok(());
            }
        }
        let statuses: Vec<String> = (0..n)
            .filter_map(|i| {
                let now = self.local(i);
                let s = self.nodes[i].core.as_ref()?.status(now);
                Some(format!(
                    "n{i} {} leader {:?} epoch {} promised {} voters {:?} voter {:?} log {} commit {}",
                    s.role, s.leader_id, s.epoch, s.promised_epoch, s.voters, s.voter, s.log_last, s.commit
                ))
            })
            .collect();
        Err(format!(
            "nodes {down:?} down, the rest connected: {} writes acked in 6 s (leaders by epoch {:?}): {statuses:?}",
            self.acked.len() - before,
            self.leaders
        ))
    }

    fn roots(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                n.store
                    .merkle()
                    .map(|m| format!("{:?}", m))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn schedule(&mut self) -> Result<(), String> {
        self.run(Duration::from_secs(4), true)?;
        self.degraded()?;
        // Heal: one side, everyone up, no loss; let elections, catch-up and
        // sync finish.
        self.side = vec![0; self.nodes.len()];
        for node in &mut self.nodes {
            node.disk_failing = false;
        }
        for i in 0..self.nodes.len() {
            if !self.up(i) && self.started(i) {
                self.boot(i);
            }
        }
        self.loss = 0.0;
        let mut settled = false;
        for _ in 0..40 {
            self.run(Duration::from_millis(250), false)?;
            let roots = self.roots();
            let applied: Vec<u64> = self.nodes.iter().map(|n| n.store.revision()).collect();
            if roots.iter().all(|r| *r == roots[0])
                && applied.iter().all(|a| *a == applied[0])
                && self.pending.is_empty()
            {
                settled = true;
                break;
            }
        }
        if !settled {
            return Err(format!(
                "no convergence after healing: roots {:?}",
                self.roots()
            ));
        }
        // In half the schedules a follower's state changes behind the
        // protocol's back, with writes going on: the next verification must
        // find it, the follower serve no read from then until a snapshot of
        // the differing buckets repairs it (`check_divergence`, every step),
        // and the checks below find every node equal again.
        if self.dice.chance(0.5) {
            self.diverge()?;
            self.run(Duration::from_millis(1500), false)?;
        }
        // A last burst of writes over lossy links, so that the last diff to
        // some follower is often lost; then idle, with no loss: every node
        // must (soon) serve reads and have nothing pending, new leader or
        // not. Elections may still be settling, so allow a few seconds.
        self.loss = 0.3;
        self.run(Duration::from_millis(500), false)?;
        self.loss = 0.0;
        self.quiet = true;
        let mut unreadable = Vec::new();
        for _ in 0..20 {
            self.run(Duration::from_millis(250), false)?;
            // Each node may read, and has nothing pending (a read of any
            // path would be served): a lost diff must not leave an idle
            // cluster unable to commit. Learners fed in batches never may
            // read (they serve stale reads only).
            let voters = self.voter_ids();
            let applied = self.nodes.iter().map(|n| n.store.revision()).max();
            unreadable = (0..self.nodes.len())
                .filter(|&i| {
                    let now = self.local(i);
                    // Learners fed in batches catch up a tick or two late.
                    let behind = Some(self.nodes[i].store.revision()) < applied;
                    let reads =
                        self.feed == LearnerFeed::PerWrite || voters.contains(&self.nodes[i].id);
                    behind
                        || !self.nodes[i].pending.lock().is_empty()
                        || self.nodes[i].core.as_ref().is_none_or(|c| {
                            reads && c.read_until(now).is_none_or(|until| now >= until)
                        })
                })
                .collect();
            if unreadable.is_empty() {
                break;
            }
        }
        if !unreadable.is_empty() {
            let statuses: Vec<String> = unreadable
                .iter()
                .filter_map(|&i| {
                    let now = self.local(i);
                    Some(format!("{:?}", self.nodes[i].core.as_ref()?.status(now)))
                })
                .collect();
            return Err(format!(
                "nodes {unreadable:?} cannot serve every read in a healed, idle cluster: {statuses:?}"
            ));
        }
        // Equal again after the divergence, its repair and the last burst:
        // a repair that fixed the diverged path but dropped or changed
        // another in its bucket (or the leader lease, or the voters) would
        // show here and nowhere else.
        let roots = self.roots();
        let applied: Vec<u64> = self.nodes.iter().map(|n| n.store.revision()).collect();
        if roots.iter().any(|r| *r != roots[0]) || applied.iter().any(|a| *a != applied[0]) {
            return Err(format!(
                "the nodes differ at the end: revisions {applied:?}, roots {roots:?}"
            ));
        }
        for write in &self.acked {
            for (i, node) in self.nodes.iter().enumerate() {
                // Whatever the history kept, the request id is answered
                // with what the write did.
                if let Some(id) = &write.request_id {
                    let answered = node.store.applied_request(id).map_err(|e| e.to_string())?;
                    if answered.map(|a| (a.version, a.revision))
                        != Some((write.version, write.revision))
                    {
                        return Err(format!(
                            "acked write {} v{} (revision {}) has request id {id}, which {} answers with {answered:?}",
                            write.path, write.version, write.revision, node.id
                        ));
                    }
                }
                if self.dropped(&node.store, &write.path, write.version)?
                    || self.history_diverged(i, &write.path, write.version)?
                {
                    continue;
                }
                let stored = match node
                    .store
                    .get(&write.path, Some(write.version))
                    .map_err(|e| e.to_string())?
                {
                    Some(change) => match change.kind {
                        ChangeKind::Put { data, .. } => Some(data),
                        ChangeKind::Delete => None,
                    },
                    None => None,
                };
                if stored.as_deref() != Some(write.value.as_bytes()) {
                    return Err(format!(
                        "acked write {} v{} missing on {}",
                        write.path, write.version, node.id
                    ));
                }
            }
        }
        self.check_reads_were_committed()?;
        for i in 0..self.nodes.len() {
            self.count(i);
        }
        for (i, mismatches) in self.mismatches_by_node.iter().enumerate() {
            if *mismatches > 0 && !self.injected.iter().any(|(node, _, _)| *node == i) {
                return Err(format!(
                    "{mismatches} verifications on n{i} found roots that differ at the same \
                     revision, though its state was never changed behind the protocol's back"
                ));
            }
        }
        if let Some(i) = self.nodes.iter().position(|n| n.diverged.is_some()) {
            return Err(format!("n{i}'s diverged state was never repaired"));
        }
        Ok(())
    }
}

// Two tests, one per cluster size, so that the test harness runs them on
// both cores.
#[test]
fn three_replicas_keep_every_acked_write_and_converge_under_seeded_faults() {
    run_schedules(3);
}

#[test]
fn five_replicas_keep_every_acked_write_and_converge_under_seeded_faults() {
    run_schedules(5);
}

/// Runs the seeded schedules on clusters of `nodes` nodes, unless
/// `PIKA_SIM_NODES` names another size (then this size is skipped).
fn run_schedules(nodes: usize) {
    if let Ok(s) = std::env::var("PIKA_SIM_NODES") {
        if s.parse::<usize>().expect("PIKA_SIM_NODES is a number") != nodes {
            return;
        }
    }
    // `PIKA_SIM_SEEDS=601..3000` for a longer soak than the suite's.
    let seeds: Vec<u64> = match (
        std::env::var("PIKA_SIM_SEED"),
        std::env::var("PIKA_SIM_SEEDS"),
    ) {
        (Ok(s), _) => vec![s.parse().expect("PIKA_SIM_SEED is a number")],
        (_, Ok(range)) => {
            let (from, to) = range.split_once("..").expect("PIKA_SIM_SEEDS is FROM..TO");
            let from: u64 = from.parse().expect("PIKA_SIM_SEEDS starts with a number");
            let to: u64 = to.parse().expect("PIKA_SIM_SEEDS ends with a number");
            (from..=to).collect()
        }
        _ => (1..=600).collect(),
    };
    let (mut acked, mut elections, mut verified, mut snapshots, mut recoveries, mut wipes) =
        (0, 0, 0, 0, 0, 0);
    let (mut odd_boots, mut index_reads, mut divergences, mut repairs) = (0, 0, 0, 0);
    let n = nodes;
    for seed in &seeds {
        let mut sim = Sim::new(n, *seed);
        if let Err(e) = sim.schedule() {
            panic!("{n} nodes, seed {seed} (replay: PIKA_SIM_SEED={seed} PIKA_SIM_NODES={n}): {e}");
        }
        acked += sim.acked.len();
        elections += sim.leaders.len();
        verified += sim.verified;
        snapshots += sim.snapshots;
        recoveries += sim.recoveries;
        wipes += sim.wipes;
        odd_boots += sim.odd_boots;
        index_reads += sim.index_reads;
        divergences += sim.divergences;
        repairs += sim.repairs;
    }
    eprintln!(
        "{} schedules of {n} nodes: {acked} acknowledged writes checked on every node, {elections} elections, \
         {verified} Merkle roots verified equal, {snapshots} snapshots installed, \
         {recoveries} recoveries from a failed disk, {wipes} wiped data directories, \
         {odd_boots} boots with a `replicas` other than the cluster size, \
         {index_reads} reads on learners by the leader's commit index, \
         {divergences} states changed behind the protocol's back ({repairs} found and repaired)",
        seeds.len()
    );
    if seeds.len() > 100 {
        assert!(verified > 0, "verification should run");
        assert!(
            snapshots > 0,
            "some follower should come back behind the log"
        );
        assert!(recoveries > 0, "some disk should fail and recover");
        assert!(wipes > 0, "some node should lose its data");
        assert!(odd_boots > 0, "some node should differ in `replicas`");
        assert!(index_reads > 0, "some learner should read by a read index");
        assert!(
            repairs > 0,
            "some diverged state should be found by verification and repaired"
        );
    }
    assert!(
        acked > seeds.len(),
        "the schedules should acknowledge writes"
    );
}

/// A catch-up frame of the leader's entries from an earlier epoch leaves
/// the follower's own copies of that epoch's later entries in place: more
/// frames follow, and those entries may be committed already (only a
/// conflicting uncommitted suffix is dropped). The follower holds
/// (4, 1..25) and knows commit 10; the leader of epoch 5 holds (4, 1..20)
/// and serves a first frame of (4, 11..16). The follower used to drop
/// (4, 17..25) as "older than the leader's epoch".
#[test]
fn a_catch_up_frame_of_an_earlier_epoch_drops_no_entry_the_leader_holds() {
    use pika_replication::election::Position;
    use pika_replication::record::{Change, SharedChange};

    let change = |revision: u64| {
        SharedChange::new(Change {
            revision,
            epoch: 4,
            path: format!("w/{revision}"),
            version: 1,
            created_at_ms: 1_700_000_000_000,
            created_revision: revision,
            kind: ChangeKind::Put {
                meta: Meta::default(),
                data: b"x".to_vec(),
            },
            request_id: None,
            author: None,
        })
    };
    let mut log = MemLog::open(MemDisk::default());
    let entries: Vec<SharedChange> = (1..=25).map(change).collect();
    log.append(&entries).expect("appended");
    let committed = Position {
        epoch: 4,
        revision: 10,
    };
    log.save_commit(committed).expect("commit recorded");
    let store = Arc::new(Store::open_in_memory(HISTORY).expect("in-memory store"));
    let pending = SharedPending::default();
    let now = Duration::from_secs(100);
    let mut core = ReplicaCore::new(
        "n0",
        config(3, LearnerFeed::PerWrite),
        store.clone(),
        log,
        pending,
        store.generation(),
        7,
        now,
    )
    .expect("the core opens");
    let peers = vec!["n1".to_string(), "n2".to_string()];
    core.set_members(peers.clone(), peers);
    core.handle(
        "n1".to_string(),
        PeerMessage::Diff {
            epoch: 5,
            prev: committed,
            changes: (11..=16).map(change).collect::<Vec<_>>().into(),
            commit: 10,
            more: false,
        },
        now,
    );
    let kept: Vec<Option<u64>> = (17..=25).map(|r| core.log().epoch_at(r)).collect();
    assert_eq!(kept, vec![Some(4); 9], "entries after the frame");
}
