//! Deterministic simulation of the whole replica protocol: [`ReplicaCore`]s
//! of 3 and 5 nodes on in-memory redb stores, a simulated network and
//! clocks, client writes at whoever leads, and 1200 seeded schedules of
//! loss, reordering, duplication, partitions, crashes with restart and
//! clock drift within the assumed bound.
//!
//! Checked at every step: at most one leader per epoch, never two nodes
//! holding a valid lease at the same real instant, and acknowledgements only
//! inside the acknowledging node's lease; no node that may serve local
//! reads misses the latest acked write. Checked after healing
//! and letting sync run: every acknowledged write is on every node, and all
//! Merkle roots are equal. Before healing, with a minority down (the
//! leader among them), the rest must elect and acknowledge writes within
//! a few seconds. A failing seed is printed; replay it alone with
//! `PIKA_SIM_SEED=<seed> PIKA_SIM_NODES=<n>`, and add `PIKA_SIM_TRACE=1`
//! (with `--nocapture`) to print its messages and acknowledgements.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pika_replication::dice::Dice;
use pika_replication::replica::core::{CoreConfig, Output, ReplicaCore};
use pika_replication::wire::PeerMessage;
use pika_replication::{ConfigPath, Format, Meta, Op, Store};

const STEP: Duration = Duration::from_millis(5);
const INTERVAL: Duration = Duration::from_millis(100);
const LEASE: Duration = Duration::from_millis(500);
const RATE_SPREAD: f64 = 0.03;

struct Node {
    id: String,
    store: Arc<Store>,
    core: Option<ReplicaCore<Arc<Store>>>,
    rate: f64,
    offset: Duration,
    next_tick: Duration,
    boots: u64,
}

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
    /// (node, token) → the path and value of a write waiting for its ack.
    pending: HashMap<(usize, u64), (String, String)>,
    acked: Vec<(String, String)>,
    next_token: u64,
    writes: u64,
    /// No client writes: an idle cluster must still let followers read.
    quiet: bool,
}

fn config(n: usize) -> CoreConfig {
    CoreConfig {
        replicas: n,
        heartbeat_interval: INTERVAL,
        lease: LEASE,
        sync_interval: Duration::from_millis(1500),
        sync_timeout: Duration::from_secs(1),
    }
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let mut dice = Dice::new(seed);
        let loss = 0.15 * dice.unit();
        let max_delay = Duration::from_millis(1 + dice.below(30) as u64);
        let nodes = (0..n)
            .map(|i| Node {
                id: format!("n{i}"),
                store: Arc::new(Store::open_in_memory(5).expect("in-memory store")),
                core: None,
                rate: 1.0 - RATE_SPREAD + 2.0 * RATE_SPREAD * dice.unit(),
                offset: Duration::from_millis(dice.below(10_000) as u64),
                next_tick: Duration::ZERO,
                boots: 0,
            })
            .collect();
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
            next_token: 1,
            writes: 0,
            quiet: false,
        };
        for i in 0..n {
            sim.boot(i);
        }
        sim
    }

    fn local(&self, i: usize) -> Duration {
        self.nodes[i].offset + self.real.mul_f64(self.nodes[i].rate)
    }

    fn boot(&mut self, i: usize) {
        let now = self.local(i);
        let n = self.nodes.len();
        let node = &mut self.nodes[i];
        node.boots += 1;
        let seed = self.seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407) ^ node.boots;
        node.core = Some(ReplicaCore::new(
            node.id.clone(),
            config(n),
            node.store.clone(),
            seed,
            now,
        ));
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].core = None;
        // Writers at a crashed leader never learn their outcome: not acked.
        self.pending.retain(|(node, _), _| *node != i);
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
                }
                Output::SteppedDown { .. }
                | Output::Forwarded { .. }
                | Output::ForwardAnswered { .. } => {}
            }
        }
        Ok(())
    }

    /// A client write at node `i`, done the way the committer does it:
    /// decide, ship, commit locally, then wait for the set.
    fn write(&mut self, i: usize) {
        let now = self.local(i);
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let Ok(epoch) = core.write_epoch() else {
            return;
        };
        self.writes += 1;
        let (path, value) = (format!("w/{}", self.writes), format!("v{}", self.writes));
        let meta = Meta {
            format: Format::Text,
            description: String::new(),
        };
        let op = match Op::put(
            ConfigPath::new(path.clone()).expect("path"),
            meta,
            value.clone().into_bytes(),
            None,
        ) {
            Ok(op) => op,
            Err(e) => panic!("bad test op: {e}"),
        };
        let outcome = node
            .store
            .execute_then(&[op], epoch, 0, |changes| core.ship(epoch, changes, now));
        let Ok((_, changes)) = outcome else { return };
        let Some(revision) = changes.last().map(|c| c.revision) else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert((i, token), (path, value));
        core.wait(epoch, revision, token, now);
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.real += STEP;
        let n = self.nodes.len();
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
                } else {
                    self.boot(i);
                }
            }
        }
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
            if let Some(core) = self.nodes[to].core.as_mut() {
                core.handle(from_id, message, now);
            }
            self.outputs(to)?;
        }
        for i in 0..n {
            let now = self.local(i);
            if !self.up(i) || now < self.nodes[i].next_tick {
                continue;
            }
            self.nodes[i].next_tick = now + INTERVAL / 4;
            let peers: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| self.nodes[j].id.clone())
                .collect();
            let alive: Vec<String> = (0..n)
                .filter(|j| *j != i && self.can_talk(i, *j))
                .map(|j| self.nodes[j].id.clone())
                .collect();
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.set_members(peers, alive);
                core.tick(now);
            }
            self.outputs(i)?;
        }
        if !self.quiet && self.dice.chance(0.08) {
            let i = self.dice.below(n);
            self.write(i);
            self.outputs(i)?;
        }
        let holders: Vec<(usize, u64)> = (0..n)
            .filter_map(|i| Some((i, self.nodes[i].core.as_ref()?.lease(self.local(i))?)))
            .collect();
        if holders.len() > 1 {
            return Err(format!(
                "overlapping valid leases at real {:?}: {holders:?}",
                self.real
            ));
        }
        self.check_reads()
    }

    /// DESIGN.md, "Reads": a node that may serve local reads never misses
    /// an acked write. Checking the latest acked write suffices: diffs apply
    /// in revision order, so a node holding it holds every earlier one.
    fn check_reads(&self) -> Result<(), String> {
        let Some((path, value)) = self.acked.last() else {
            return Ok(());
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let now = self.local(i);
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            if core.read_until(now).is_none_or(|until| now >= until) {
                continue;
            }
            let stored = node.store.get(path, None).map_err(|e| e.to_string())?;
            let has = stored.is_some_and(|change| match change.kind {
                pika_replication::ChangeKind::Put { data, .. } => data == value.as_bytes(),
                pika_replication::ChangeKind::Delete => false,
            });
            if !has {
                return Err(format!(
                    "n{i} may serve reads at real {:?} but misses the acked write {path} ({:?}; leaders by epoch {:?})",
                    self.real,
                    core.status(now),
                    self.leaders
                ));
            }
        }
        Ok(())
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
    fn degraded(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        let mut down: Vec<usize> = (0..n)
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.lease(self.local(i)).is_some())
            })
            .collect();
        while down.len() < (n - 1) / 2 {
            let i = self.dice.below(n);
            if !down.contains(&i) {
                down.push(i);
            }
        }
        self.side = vec![0; n];
        self.loss = 0.0;
        for i in 0..n {
            match (down.contains(&i), self.up(i)) {
                (true, true) => self.crash(i),
                (false, false) => self.boot(i),
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
        Err(format!(
            "nodes {down:?} down, the rest connected: {} writes acked in 6 s (leaders by epoch {:?})",
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
        for i in 0..self.nodes.len() {
            if !self.up(i) {
                self.boot(i);
            }
        }
        self.loss = 0.0;
        let mut settled = false;
        for _ in 0..40 {
            self.run(Duration::from_millis(250), false)?;
            let roots = self.roots();
            if roots.iter().all(|r| *r == roots[0]) && self.pending.is_empty() {
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
        // Idle now: every node must (soon) serve reads, new leader or not.
        // Elections may still be settling, so allow a few seconds.
        self.quiet = true;
        let mut unreadable = Vec::new();
        for _ in 0..20 {
            self.run(Duration::from_millis(250), false)?;
            unreadable = (0..self.nodes.len())
                .filter(|&i| {
                    let now = self.local(i);
                    self.nodes[i]
                        .core
                        .as_ref()
                        .is_none_or(|c| c.read_until(now).is_none_or(|until| now >= until))
                })
                .collect();
            if unreadable.is_empty() {
                break;
            }
        }
        if !unreadable.is_empty() {
            return Err(format!(
                "nodes {unreadable:?} cannot serve reads in a healed, idle cluster"
            ));
        }
        for (path, value) in &self.acked {
            for node in &self.nodes {
                let stored = match node.store.get(path, None).map_err(|e| e.to_string())? {
                    Some(change) => match change.kind {
                        pika_replication::ChangeKind::Put { data, .. } => Some(data),
                        pika_replication::ChangeKind::Delete => None,
                    },
                    None => None,
                };
                if stored.as_deref() != Some(value.as_bytes()) {
                    return Err(format!("acked write {path} missing on {}", node.id));
                }
            }
        }
        Ok(())
    }
}

#[test]
fn replicas_keep_every_acked_write_and_converge_under_seeded_faults() {
    let seeds: Vec<u64> = match std::env::var("PIKA_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PIKA_SIM_SEED is a number")],
        Err(_) => (1..=600).collect(),
    };
    let sizes: Vec<usize> = match std::env::var("PIKA_SIM_NODES") {
        Ok(s) => vec![s.parse().expect("PIKA_SIM_NODES is a number")],
        Err(_) => vec![3, 5],
    };
    let (mut acked, mut elections) = (0, 0);
    for n in &sizes {
        for seed in &seeds {
            let mut sim = Sim::new(*n, *seed);
            if let Err(e) = sim.schedule() {
                panic!(
                    "{n} nodes, seed {seed} (replay: PIKA_SIM_SEED={seed} PIKA_SIM_NODES={n}): {e}"
                );
            }
            acked += sim.acked.len();
            elections += sim.leaders.len();
        }
    }
    eprintln!(
        "{} schedules: {acked} acknowledged writes checked on every node, {elections} elections",
        seeds.len() * sizes.len()
    );
    assert!(
        acked > seeds.len(),
        "the schedules should acknowledge writes"
    );
}
