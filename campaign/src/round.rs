//! One campaign round: a fresh cluster, concurrent clients recording every
//! operation, one fault injected and healed, then the checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use pika_replication::dice::Dice;

use crate::client::{ClientTally, History, client, perform};
use crate::cluster::{Cluster, Network};
use crate::linearizability::{self, Call, Operation, Outcome};
use crate::second_opinion;

/// Every fault a round can inject; round `r` injects `ALL[r % len]`, so each
/// kind comes up at least once every `len` rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    IsolateLeader,
    MinorityPartition,
    OneWayFromLeader,
    DelayAndLoss,
    ClockDrift,
    RestartAll,
    /// The leader's or a follower's disk fills up (every node's data
    /// directory is a small tmpfs; root only, said and skipped otherwise),
    /// then space is freed: the node must recover by itself.
    DiskFull,
    /// The leader's or a follower's protocol pauses, and what queued up
    /// meanwhile is handled before its first tick when it resumes.
    PauseQueued,
    /// The leader's or a follower's data directory is lost: it restarts on
    /// an empty one, under a new node id, as a learner.
    Wipe,
}

impl Fault {
    pub const ALL: [Fault; 12] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::MinorityPartition,
        Fault::OneWayFromLeader,
        Fault::DelayAndLoss,
        Fault::ClockDrift,
        Fault::RestartAll,
        Fault::DiskFull,
        Fault::PauseQueued,
        Fault::Wipe,
    ];
}

pub struct RoundConfig<'a> {
    pub pika: &'a Path,
    /// Voters: the cluster's `replicas`.
    pub nodes: usize,
    /// Learners beyond them, fed in batches (`cluster.learner_feed:
    /// batched`): clients read on them by read index and write through
    /// them; faults hit them like any node.
    pub learners: usize,
    pub seed: u64,
    pub fault: Fault,
    /// Picks the cluster's addresses: 127.0.1.`base`.. or 10.213.`base`.x.
    pub base: u8,
    pub network: Network,
    pub clients: usize,
    pub paths: usize,
    pub duration: Duration,
    pub check: crate::Check,
}

#[derive(Debug, Default)]
pub struct RoundReport {
    pub operations: usize,
    pub acked_writes: usize,
    /// Operations sent through the Consul KV API instead of the native one.
    pub through_consul: usize,
    /// Writes sent again with their request id after an unknown outcome,
    /// and those of them whose outcome the client then learned.
    pub retried: usize,
    pub resolved_by_retry: usize,
    /// Acknowledged writes sent again later with their request id.
    pub resent: usize,
    pub unknown: usize,
    /// Paths whose history stateright's tester also judged (and agreed),
    /// and paths too long to give it.
    pub second_opinions: usize,
    pub second_opinion_skipped: usize,
    /// Whether the nodes ran in network namespaces.
    pub namespaced: bool,
    pub violations: Vec<String>,
}

/// Each node's disk in a DiskFull round.
const DISK_MB: u64 = 64;

fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    leader: usize,
    dice: &mut Dice,
    hold: Duration,
) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let follower = (leader + 1 + dice.below(n - 1)) % n;
    let ids: Vec<String> = cluster.nodes.iter().map(|x| x.node_id.clone()).collect();
    let others: Vec<String> = (0..n)
        .filter(|i| *i != leader)
        .map(|i| ids[i].clone())
        .collect();
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let victim = if fault == Fault::KillLeader {
                leader
            } else {
                follower
            };
            cluster.kill(victim);
            std::thread::sleep(hold);
            cluster.restart(victim)?;
        }
        Fault::PauseLeader => {
            cluster.pause(leader, true)?;
            std::thread::sleep(hold);
            cluster.pause(leader, false)?;
        }
        Fault::IsolateLeader => {
            for i in (0..n).filter(|i| *i != leader) {
                cluster.cut(leader, i)?;
                cluster.cut(i, leader)?;
            }
            std::thread::sleep(hold);
            cluster.heal()?;
        }
        Fault::MinorityPartition => {
            // The leader's side is the minority: it and at most n/2 - 1 others.
            let minority: Vec<usize> = std::iter::once(leader)
                .chain((0..n).filter(|i| *i != leader).take(n / 2 - 1))
                .collect();
            for i in 0..n {
                for j in (0..n).filter(|j| minority.contains(j) != minority.contains(&i)) {
                    cluster.cut(i, j)?;
                }
            }
            std::thread::sleep(hold);
            cluster.heal()?;
        }
        Fault::OneWayFromLeader => {
            for i in (0..n).filter(|i| *i != leader) {
                cluster.cut(leader, i)?;
            }
            std::thread::sleep(hold);
            cluster.heal()?;
        }
        Fault::DelayAndLoss => {
            let delays: serde_json::Map<String, Value> =
                others.iter().map(|o| (o.clone(), json!(80))).collect();
            let losses: serde_json::Map<String, Value> =
                others.iter().map(|o| (o.clone(), json!(0.2))).collect();
            for i in 0..n {
                cluster.fault(i, json!({"delay_out_ms": delays, "loss_out": losses}));
            }
            std::thread::sleep(hold);
            cluster.heal()?;
        }
        Fault::ClockDrift => {
            // The clocks were skewed at start; add a leader kill so the
            // skewed leases are actually relied on.
            cluster.kill(leader);
            std::thread::sleep(hold);
            cluster.restart(leader)?;
        }
        Fault::DiskFull => {
            let victim = if dice.chance(0.5) { leader } else { follower };
            match cluster.fill_disk(victim)? {
                Some(filler) => {
                    let started = Instant::now();
                    let failed = loop {
                        let why = cluster.status(victim)["disk_error"].clone();
                        if !why.is_null() || started.elapsed() >= hold {
                            break why;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    };
                    eprintln!(
                        "DiskFull: node {victim}'s disk is full; its disk error after {:?}: {failed}",
                        started.elapsed()
                    );
                    std::thread::sleep(hold.saturating_sub(started.elapsed()));
                    std::fs::remove_file(&filler)
                        .with_context(|| format!("freeing {}", filler.display()))?;
                }
                None => {
                    eprintln!(
                        "DiskFull: skipped, the data directories are not on small disks (needs root)"
                    );
                    std::thread::sleep(hold);
                }
            }
        }
        Fault::PauseQueued => {
            let victim = if dice.chance(0.5) { leader } else { follower };
            cluster.fault(victim, json!({"pause_ms": hold.as_millis() as u64}));
            std::thread::sleep(hold);
        }
        Fault::RestartAll => {
            for i in 0..n {
                cluster.kill(i);
            }
            std::thread::sleep(hold / 2);
            for i in 0..n {
                cluster.restart(i)?;
            }
        }
        Fault::Wipe => {
            let victim = if dice.chance(0.5) { leader } else { follower };
            cluster.kill(victim);
            let dir = cluster.data_dir(victim);
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("wiping {}", path.display()))?;
            }
            eprintln!("Wipe: node {victim}'s data directory is gone");
            std::thread::sleep(hold / 2);
            cluster.restart(victim)?;
        }
    }
    Ok(())
}

pub fn run(config: &RoundConfig) -> anyhow::Result<RoundReport> {
    let mut dice = Dice::new(config.seed);
    let rates: Vec<f64> = (0..config.nodes + config.learners)
        .map(|_| {
            if config.fault == Fault::ClockDrift {
                0.97 + 0.06 * dice.unit()
            } else {
                1.0
            }
        })
        .collect();
    let mut env = if config.learners > 0 {
        vec![
            (
                "PIKA_CLUSTER_REPLICAS".to_string(),
                config.nodes.to_string(),
            ),
            (
                "PIKA_CLUSTER_LEARNER_FEED".to_string(),
                "batched".to_string(),
            ),
        ]
    } else {
        Vec::new()
    };
    // Odd seeds keep one batch awaiting its commit at a time
    // (`cluster.pipeline_depth: 1`; the default is two), so both meet
    // every fault kind.
    if config.seed % 2 == 1 {
        env.push(("PIKA_CLUSTER_PIPELINE_DEPTH".to_string(), "1".to_string()));
    }
    let options = crate::cluster::Options {
        network: config.network,
        test_hooks: true,
        env,
        tmpfs_mb: (config.fault == Fault::DiskFull).then_some(DISK_MB),
        learners: config.learners,
    };
    let mut cluster = Cluster::start_with(config.pika, config.base, &rates, options)?;
    let leader = cluster
        .leader(Duration::from_secs(15))
        .ok_or_else(|| anyhow::anyhow!("no leader at the start of the round"))?;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let origin = Instant::now();
    let until = origin + config.duration;
    let history: History = Arc::new(Mutex::new(BTreeMap::new()));
    let clients: Vec<_> = (0..config.clients)
        .map(|c| {
            let (urls, history) = (urls.clone(), history.clone());
            let (paths, seed) = (config.paths, config.seed ^ ((c as u64 + 1) << 32));
            std::thread::spawn(move || client(c, urls, paths, seed, origin, until, history))
        })
        .collect();
    std::thread::sleep(config.duration / 5);
    inject(
        &mut cluster,
        config.fault,
        leader,
        &mut dice,
        Duration::from_millis(1500),
    )?;
    let mut tally = ClientTally::default();
    for c in clients {
        let t = c.join().unwrap_or_default();
        tally.through_consul += t.through_consul;
        tally.retried += t.retried;
        tally.resolved_by_retry += t.resolved_by_retry;
        tally.resent += t.resent;
        tally.resend_mismatches.extend(t.resend_mismatches);
    }
    cluster.heal()?;

    let mut report = RoundReport {
        namespaced: cluster.namespaced(),
        through_consul: tally.through_consul,
        retried: tally.retried,
        resolved_by_retry: tally.resolved_by_retry,
        resent: tally.resent,
        ..RoundReport::default()
    };
    report.violations.extend(
        tally
            .resend_mismatches
            .into_iter()
            .map(|m| format!("a write sent again with its request id: {m}")),
    );
    if cluster.leader(Duration::from_secs(20)).is_none() {
        report.violations.push("no leader after healing".into());
    }
    if let Err(e) = cluster.converged(Duration::from_secs(20)) {
        report.violations.push(e);
    }
    let mismatches = cluster.verification_mismatches();
    if mismatches > 0 {
        report.violations.push(format!(
            "{mismatches} verifications found a node's state differing from the \
             leader's at the same revision"
        ));
    }
    // Final reads on every node, after everything: the acked writes must be
    // there, through each node's own read path.
    let http = reqwest::blocking::Client::builder()
        .default_headers(crate::admin_headers())
        .timeout(Duration::from_secs(3))
        .build()?;
    let paths: Vec<String> = history
        .lock()
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default();
    for path in &paths {
        for url in &urls_now(&cluster) {
            let invoked = origin.elapsed().as_micros() as u64;
            let mut outcome = Outcome::Unknown;
            for _ in 0..50 {
                outcome = perform(&http, url, path, &Call::Read, "").0;
                if outcome != Outcome::Unknown {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let returned = origin.elapsed().as_micros() as u64;
            if let Ok(mut h) = history.lock() {
                h.entry(path.clone()).or_default().push(Operation {
                    client: usize::MAX,
                    call: Call::Read,
                    invoked,
                    returned: Some(returned),
                    outcome,
                    epoch: None,
                });
            }
        }
    }
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let everything: Vec<Operation> = history.values().flatten().cloned().collect();
    if let Err(v) = linearizability::check_terms(&everything) {
        let slice: Vec<String> = v.operations.iter().map(|o| format!("{o:?}")).collect();
        report.violations.push(format!(
            "a newer term acknowledged before an older one:\n  {}",
            slice.join("\n  ")
        ));
    }
    for (path, ops) in &history {
        report.operations += ops.len();
        report.acked_writes += ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
            .count();
        report.unknown += ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        let checked = match config.check {
            crate::Check::Strict => linearizability::check_strict(ops),
            crate::Check::Writes => linearizability::check(ops),
        };
        // The second opinion judges the strict criterion.
        let ours = match config.check {
            crate::Check::Strict => checked.is_ok(),
            crate::Check::Writes => linearizability::check_strict(ops).is_ok(),
        };
        match second_opinion::linearizable(ops) {
            None => report.second_opinion_skipped += 1,
            Some(theirs) if theirs == ours => report.second_opinions += 1,
            Some(theirs) => {
                report.violations.push(format!(
                    "{path}: the checkers disagree: ours says {}, stateright's \
                     LinearizabilityTester says {}; history:\n  {}",
                    verdict(ours),
                    verdict(theirs),
                    in_invocation_order(ops).join("\n  ")
                ));
            }
        }
        if let Err(v) = checked {
            let slice: Vec<String> = v.operations.iter().map(|o| format!("{o:?}")).collect();
            report.violations.push(format!(
                "{path}: not linearizable; history:\n  {}{}",
                slice.join("\n  "),
                save_history(config.seed, path, ops)
            ));
        }
    }
    Ok(report)
}

fn verdict(linearizable: bool) -> &'static str {
    if linearizable {
        "linearizable"
    } else {
        "not linearizable"
    }
}

/// The whole history of a path that failed the check, in invocation order,
/// to a file beside the other temporary files: the slice shows what broke,
/// this shows what led to it. Returns a line naming the file.
fn save_history(seed: u64, path: &str, ops: &[Operation]) -> String {
    let text: String = in_invocation_order(ops)
        .into_iter()
        .map(|line| line + "\n")
        .collect();
    let dir = std::env::temp_dir().join("pika-campaign");
    let file = dir.join(format!("seed-{seed}-{}.txt", path.replace('/', "_")));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, text)) {
        Ok(()) => format!("\n  (the path's whole history: {})", file.display()),
        Err(e) => format!("\n  (the path's whole history could not be saved: {e})"),
    }
}

/// A path's operations, one line each, in the order they were invoked.
fn in_invocation_order(ops: &[Operation]) -> Vec<String> {
    let mut ops: Vec<&Operation> = ops.iter().collect();
    ops.sort_by_key(|o| o.invoked);
    ops.iter().map(|o| format!("{o:?}")).collect()
}

fn urls_now(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|n| n.url.clone()).collect()
}
