//! Membership at a size no single machine hosts as processes: `n` SWIM
//! state machines (the real [`Swim`], foca inside) on a simulated clock and
//! network with seeded loss, while members crash and restart in the
//! background (churn). Measures how long a join, a crash and a restart take
//! to reach every member, and the bytes each member sends per second.
//!
//! Shared by the test suite (a reduced size, `tests/scale_sim.rs`) and the
//! benchmark (1 000 members, `benches/scale.rs`). The addresses are
//! simulated (10.200.x.y); no socket is opened.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pika_membership::swim::{Action, Swim};
use pika_membership::{MemberMeta, MemberState, MembershipEvent, PeerId, SwimConfig};

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub members: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Each datagram is lost with this probability.
    pub loss: f64,
    /// Members (besides the measured ones) that crash and restart in the
    /// background, one every `churn_every`, each down for `churn_down`.
    pub churners: usize,
    pub churn_every: Duration,
    pub churn_down: Duration,
    /// How long the idle traffic is measured.
    pub steady: Duration,
    pub seed: u64,
}

impl Scenario {
    /// pika's cluster test timings (heartbeat 1 s, timeout 5 s), 1 % loss,
    /// 1 % of the members churning.
    pub fn new(members: usize, seed: u64) -> Scenario {
        Scenario {
            members,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            loss: 0.01,
            churners: (members / 100).max(2),
            churn_every: Duration::from_secs(2),
            churn_down: Duration::from_secs(8),
            steady: Duration::from_secs(10),
            seed,
        }
    }
}

/// What a run measured; times are simulated.
#[derive(Debug, Clone)]
pub struct Report {
    pub members: usize,
    /// Until every stable member saw every other one alive.
    pub formed: Option<Duration>,
    /// From a new member's start until every stable member saw it alive.
    pub join: Option<Duration>,
    /// From a member's crash until every stable member saw it down.
    pub crash: Option<Duration>,
    /// From its restart (a new generation) until every stable member saw
    /// the new incarnation alive.
    pub restart: Option<Duration>,
    /// Bytes and datagrams each member sent per second while idle: the
    /// mean over stable members, and the most any one sent.
    pub bytes_per_member_sec: f64,
    pub max_bytes_per_member_sec: f64,
    pub datagrams_per_member_sec: f64,
    /// Times a stable, live member was reported down by a stable observer
    /// (false positives of failure detection).
    pub false_downs: usize,
    /// Background crash/restart cycles during the run.
    pub churn_cycles: usize,
    /// Wall-clock time the simulation took.
    pub wall: Duration,
}

const LATENCY: Duration = Duration::from_millis(1);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 200, (i >> 8) as u8, (i & 0xff) as u8], 7946))
}

enum Event {
    Deliver {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        /// The incarnation that scheduled it: a timer of a crashed one is
        /// dropped.
        generation: u64,
        timer: foca::Timer<PeerId>,
    },
}

/// xorshift: the schedule depends on the seed alone.
struct Dice(u64);

impl Dice {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

struct Sim {
    scenario: Scenario,
    start: Instant,
    now: Instant,
    nodes: Vec<Option<Swim>>,
    generations: Vec<u64>,
    index: HashMap<SocketAddr, usize>,
    /// views[o][m]: what observer `o` last reported of member `m`.
    views: Vec<HashMap<usize, (MemberState, u64)>>,
    /// Members that neither churn nor are measured: the observers.
    stable: Vec<bool>,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    dice: Dice,
    sent_bytes: Vec<u64>,
    sent_datagrams: Vec<u64>,
    false_downs: usize,
}

impl Sim {
    fn new(scenario: Scenario) -> Sim {
        let n = scenario.members;
        let start = Instant::now();
        Sim {
            start,
            now: start,
            nodes: (0..n).map(|_| None).collect(),
            generations: vec![0; n],
            index: (0..n).map(|i| (addr(i), i)).collect(),
            views: (0..n).map(|_| HashMap::new()).collect(),
            stable: vec![true; n],
            queue: BTreeMap::new(),
            seq: 0,
            dice: Dice(scenario.seed | 1),
            sent_bytes: vec![0; n],
            sent_datagrams: vec![0; n],
            false_downs: 0,
            scenario,
        }
    }

    fn config(&self) -> SwimConfig {
        SwimConfig {
            heartbeat_interval: self.scenario.heartbeat_interval,
            heartbeat_timeout: self.scenario.heartbeat_timeout,
            expected_members: self.scenario.members as u32,
        }
    }

    /// Starts member `i` as a new incarnation; it resolves every address
    /// (as a DNS round would).
    fn boot(&mut self, i: usize) {
        self.generations[i] += 1;
        let generation = self.generations[i];
        let id = PeerId::new(format!("m{i}"), addr(i), generation);
        let seed = self.scenario.seed ^ ((i as u64) << 20) ^ generation;
        let mut swim = Swim::new(id, MemberMeta::default(), self.config(), seed, self.now);
        let everyone: Vec<SocketAddr> = (0..self.scenario.members).map(addr).collect();
        swim.discovered(everyone, self.now);
        self.nodes[i] = Some(swim);
        self.views[i].clear();
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn push(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let actions = node.drain_actions();
        let from = addr(i);
        for action in actions {
            match action {
                Action::Send { to, datagram } => {
                    self.sent_bytes[i] += datagram.len() as u64;
                    self.sent_datagrams[i] += 1;
                    if self.dice.unit() < self.scenario.loss {
                        continue;
                    }
                    if let Some(&to) = self.index.get(&to) {
                        let at = self.now + LATENCY;
                        self.push(
                            at,
                            Event::Deliver {
                                to,
                                from,
                                bytes: datagram,
                            },
                        );
                    }
                }
                Action::Schedule { after, timer } => {
                    let generation = self.generations[i];
                    let at = self.now + after;
                    self.push(
                        at,
                        Event::Timer {
                            node: i,
                            generation,
                            timer,
                        },
                    );
                }
                Action::Event(event) => self.observe(i, event),
            }
        }
    }

    fn observe(&mut self, o: usize, event: MembershipEvent) {
        let (id, state) = match event {
            MembershipEvent::Up(id) => (id, MemberState::Alive),
            MembershipEvent::Suspect(id) => (id, MemberState::Suspect),
            MembershipEvent::Down(id) => (id, MemberState::Down),
            MembershipEvent::Forgotten(id) => {
                if let Some(m) = self.index.get(&id.addr) {
                    self.views[o].remove(m);
                }
                return;
            }
            MembershipEvent::Replaced { .. } | MembershipEvent::Meta(..) => return,
        };
        let Some(&m) = self.index.get(&id.addr) else {
            return;
        };
        if state == MemberState::Down
            && self.stable[o]
            && self.stable[m]
            && self.nodes[m].is_some()
            && id.generation == self.generations[m]
        {
            self.false_downs += 1;
        }
        self.views[o].insert(m, (state, id.generation));
    }

    /// Runs every event due up to `until`, ticking each live member every
    /// quarter interval (as the driver does).
    fn run_until(&mut self, until: Instant) {
        let tick = self.scenario.heartbeat_interval / 4;
        while self.now < until {
            let next_tick = self.start
                + tick * ((self.now - self.start).as_nanos() / tick.as_nanos()) as u32
                + tick;
            let step_end = next_tick.min(until);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > step_end {
                    break;
                }
                let ((at, _), event) = entry.remove_entry();
                self.now = self.now.max(at);
                match event {
                    Event::Deliver { to, from, bytes } => {
                        let now = self.now;
                        if let Some(node) = self.nodes[to].as_mut() {
                            let _ = node.datagram(from, &bytes, now);
                            self.drain(to);
                        }
                    }
                    Event::Timer {
                        node,
                        generation,
                        timer,
                    } => {
                        let now = self.now;
                        if generation == self.generations[node]
                            && let Some(swim) = self.nodes[node].as_mut()
                        {
                            swim.timer(timer, now);
                            self.drain(node);
                        }
                    }
                }
            }
            self.now = step_end;
            if step_end == next_tick {
                for i in 0..self.nodes.len() {
                    let now = self.now;
                    if let Some(node) = self.nodes[i].as_mut() {
                        node.tick(now);
                        self.drain(i);
                    }
                }
            }
        }
    }

    /// The stable members that are up.
    fn observers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|o| self.stable[*o] && self.nodes[*o].is_some())
    }

    fn everyone_sees(&self, m: usize, want: impl Fn(Option<&(MemberState, u64)>) -> bool) -> bool {
        self.observers()
            .filter(|o| *o != m)
            .all(|o| want(self.views[o].get(&m)))
    }

    fn formed(&self) -> bool {
        self.observers()
            .all(|m| self.everyone_sees(m, |v| v.is_some_and(|(s, _)| *s == MemberState::Alive)))
    }

    /// Runs in steps of `step` until `done` or `limit`; how long it took.
    fn until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut churn: impl FnMut(&mut Sim),
        done: impl Fn(&Sim) -> bool,
    ) -> Option<Duration> {
        let began = self.now;
        loop {
            if done(self) {
                return Some(self.now - began);
            }
            if self.now - began > limit {
                return None;
            }
            churn(self);
            let next = self.now + step;
            self.run_until(next);
        }
    }
}

/// Background churn: crashes one churner every `every`, restarts each
/// `down` after its crash.
struct Churn {
    pool: Vec<usize>,
    next_crash: Instant,
    restarts: BTreeMap<Instant, usize>,
    cycles: usize,
}

impl Churn {
    fn step(&mut self, sim: &mut Sim) {
        while let Some((&at, &i)) = self.restarts.first_key_value() {
            if at > sim.now {
                break;
            }
            self.restarts.pop_first();
            sim.boot(i);
            self.cycles += 1;
        }
        if self.pool.is_empty() || sim.now < self.next_crash {
            return;
        }
        self.next_crash = sim.now + sim.scenario.churn_every;
        let up: Vec<usize> = self
            .pool
            .iter()
            .copied()
            .filter(|i| sim.nodes[*i].is_some())
            .collect();
        if up.is_empty() {
            return;
        }
        let i = up[sim.dice.below(up.len())];
        sim.crash(i);
        self.restarts.insert(sim.now + sim.scenario.churn_down, i);
    }
}

/// One whole run: form, measure idle traffic (with churn), join a new
/// member, crash a member, restart it.
pub fn run(scenario: Scenario) -> Report {
    let wall = Instant::now();
    let n = scenario.members;
    let interval = scenario.heartbeat_interval;
    let timeout = scenario.heartbeat_timeout;
    let steady = scenario.steady;
    let mut sim = Sim::new(scenario.clone());
    // Member 0 crashes and restarts, member n-1 joins late, and the
    // churners come and go: none of them is an observer.
    let (crasher, joiner) = (0, n - 1);
    let churners: Vec<usize> = (1..=scenario.churners.min(n.saturating_sub(3))).collect();
    sim.stable[crasher] = false;
    sim.stable[joiner] = false;
    for c in &churners {
        sim.stable[*c] = false;
    }
    for i in 0..n - 1 {
        sim.boot(i);
    }
    let step = Duration::from_millis(10);
    let formed = sim.until(interval * 60, step, |_| {}, Sim::formed);

    // Idle traffic while members churn in the background.
    let mut churn = Churn {
        pool: churners,
        next_crash: sim.now,
        restarts: BTreeMap::new(),
        cycles: 0,
    };
    let bytes_before = sim.sent_bytes.clone();
    let datagrams_before = sim.sent_datagrams.clone();
    let began = sim.now;
    let _ = sim.until(steady, step, |s| churn.step(s), |_| false);
    let secs = (sim.now - began).as_secs_f64();
    let per_member: Vec<(f64, f64)> = sim
        .observers()
        .map(|i| {
            (
                (sim.sent_bytes[i] - bytes_before[i]) as f64 / secs,
                (sim.sent_datagrams[i] - datagrams_before[i]) as f64 / secs,
            )
        })
        .collect();
    let count = per_member.len().max(1) as f64;
    let bytes_per_member_sec = per_member.iter().map(|p| p.0).sum::<f64>() / count;
    let max_bytes_per_member_sec = per_member.iter().map(|p| p.0).fold(0.0, f64::max);
    let datagrams_per_member_sec = per_member.iter().map(|p| p.1).sum::<f64>() / count;

    sim.boot(joiner);
    let generation = sim.generations[joiner];
    let join = sim.until(
        interval * 30,
        step,
        |s| churn.step(s),
        |s| s.everyone_sees(joiner, |v| v == Some(&(MemberState::Alive, generation))),
    );

    sim.crash(crasher);
    let crash = sim.until(
        timeout * 6,
        step,
        |s| churn.step(s),
        |s| {
            s.everyone_sees(crasher, |v| {
                v.is_none_or(|(st, _)| *st == MemberState::Down)
            })
        },
    );

    sim.boot(crasher);
    let generation = sim.generations[crasher];
    let restart = sim.until(
        interval * 30,
        step,
        |s| churn.step(s),
        |s| s.everyone_sees(crasher, |v| v == Some(&(MemberState::Alive, generation))),
    );

    Report {
        members: n,
        formed,
        join,
        crash,
        restart,
        bytes_per_member_sec,
        max_bytes_per_member_sec,
        datagrams_per_member_sec,
        false_downs: sim.false_downs,
        churn_cycles: churn.cycles,
        wall: wall.elapsed(),
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

impl Report {
    pub fn header() -> String {
        format!(
            "{:>7} {:>9} {:>8} {:>8} {:>9} {:>12} {:>12} {:>10} {:>6} {:>6} {:>7}",
            "members",
            "formed s",
            "join s",
            "crash s",
            "restart s",
            "B/s/member",
            "max B/s",
            "dgrams/s",
            "false",
            "churn",
            "wall s"
        )
    }

    pub fn row(&self) -> String {
        format!(
            "{:>7} {:>9} {:>8} {:>8} {:>9} {:>12.0} {:>12.0} {:>10.1} {:>6} {:>6} {:>7.1}",
            self.members,
            secs(self.formed),
            secs(self.join),
            secs(self.crash),
            secs(self.restart),
            self.bytes_per_member_sec,
            self.max_bytes_per_member_sec,
            self.datagrams_per_member_sec,
            self.false_downs,
            self.churn_cycles,
            self.wall.as_secs_f64(),
        )
    }
}
