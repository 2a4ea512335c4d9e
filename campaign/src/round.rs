//! One campaign round: a fresh cluster, concurrent clients recording every
//! operation, one fault injected and healed, then the checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use pika_replication::dice::Dice;

use crate::client::{ClientTally, History, Urls, client, perform};
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
    /// The leader or a follower is killed and comes back on its data
    /// directory at a new address (a pod restarted with its volume and a
    /// new IP); nothing answers at the old one. The others resolve the
    /// addresses they did and learn the new one by gossip; clients use it.
    Relocate,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
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
        Fault::Relocate,
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
    /// Client reads that were answered (the final reads not counted).
    pub answered_reads: usize,
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
    /// Snapshots the nodes installed (followers beyond a leader's log).
    pub snapshots: u64,
    pub violations: Vec<String>,
}

/// Each node's disk in a DiskFull round.
const DISK_MB: u64 = 64;

fn inject(
    cluster: &mut Cluster,
    (fault, leader): (Fault, usize),
    dice: &mut Dice,
    hold: Duration,
    urls: &Urls,
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
                cluster.fault(i, json!({"delay_out_ms": delays, "loss_out": losses}))?;
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
            cluster.fault(victim, json!({"pause_ms": hold.as_millis() as u64}))?;
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
        Fault::Relocate => {
            let victim = if dice.chance(0.5) { leader } else { follower };
            cluster.kill(victim);
            std::thread::sleep(hold / 2);
            let from = cluster.nodes[victim].host.clone();
            cluster.relocate(victim)?;
            eprintln!(
                "Relocate: node {victim} moved from {from} to {}",
                cluster.nodes[victim].host
            );
            *urls
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = urls_now(cluster);
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
    // A third of the seeds checkpoint every 100 ms and keep 4 log entries
    // behind (the defaults are 1 s and 65 536): a follower down for a
    // fault, or wiped, is then beyond the leader's log and comes back by
    // snapshot.
    if config.seed % 3 == 2 {
        env.push(("PIKA_STORAGE_LOG_RETENTION".to_string(), "4".to_string()));
        env.push((
            "PIKA_STORAGE_CHECKPOINT_INTERVAL".to_string(),
            "100ms".to_string(),
        ));
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
    let urls: Urls = Arc::new(std::sync::RwLock::new(urls_now(&cluster)));
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
        (config.fault, leader),
        &mut dice,
        Duration::from_millis(1500),
        &urls,
    )?;
    let mut tally = ClientTally::default();
    // A client that could not run, or stopped early, checked less than the
    // round claims: a harness error, not a smaller pass.
    let mut harness_errors: Vec<String> = Vec::new();
    for (c, handle) in clients.into_iter().enumerate() {
        let t = match handle.join() {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                harness_errors.push(format!("client {c} did not run: {e:#}"));
                continue;
            }
            Err(panic) => {
                harness_errors.push(format!("client {c} panicked: {}", panic_message(panic)));
                continue;
            }
        };
        tally.through_consul += t.through_consul;
        tally.retried += t.retried;
        tally.resolved_by_retry += t.resolved_by_retry;
        tally.resent += t.resent;
        tally.violations.extend(t.violations);
        harness_errors.extend(t.errors.into_iter().map(|e| format!("client {c}: {e}")));
        if t.errors_more > 0 {
            harness_errors.push(format!(
                "client {c}: {} more answers like the above",
                t.errors_more
            ));
        }
        if let Some((revision, what)) = t.highest_revision
            && tally
                .highest_revision
                .as_ref()
                .is_none_or(|(r, _)| revision > *r)
        {
            tally.highest_revision = Some((revision, what));
        }
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
            .violations
            .into_iter()
            .map(|m| format!("a write sent again with its request id: {m}")),
    );
    if cluster.leader(Duration::from_secs(20)).is_none() {
        report.violations.push("no leader after healing".into());
    }
    match cluster.converged(Duration::from_secs(20)) {
        // Revisions only grow, and a 201 is given once its write is
        // committed: the healed cluster holds every acknowledged write, so
        // its revision is at least any a 201 named.
        Ok(revision) => {
            if let Some((highest, what)) = &tally.highest_revision
                && revision < *highest
            {
                report.violations.push(format!(
                    "the nodes converged at revision {revision}, below revision {highest} \
                     that a 201 named for {what}"
                ));
            }
        }
        Err(e) => report.violations.push(e),
    }
    let mismatches = cluster.verification_mismatches();
    if mismatches > 0 {
        report.violations.push(format!(
            "{mismatches} verifications found a node's state differing from the \
             leader's at the same revision"
        ));
    }
    // Final reads on every node, after everything: the acked writes must be
    // there, through each node's own read path. The cluster is healed and
    // converged by now, so a node that still answers no read after its
    // tries is unavailable, not ambiguous: a violation (recorded as an
    // unknown read, it would constrain nothing and pass). The reads go into
    // the history, where the checks make each path's final version at
    // least its highest acknowledged one: `check_strict` orders them after
    // every write (all returned before they began), `check` compares them
    // with the newest acknowledged write.
    let http = reqwest::blocking::Client::builder()
        .default_headers(crate::admin_headers())
        .timeout(Duration::from_secs(3))
        .build()
        .context("building the final reads' HTTP client")?;
    let paths: Vec<String> = match history.lock() {
        Ok(h) => h.keys().cloned().collect(),
        Err(_) => {
            harness_errors.push(poisoned("listing the paths to read at the end"));
            Vec::new()
        }
    };
    'reads: for path in &paths {
        for url in &urls_now(&cluster) {
            let invoked = origin.elapsed().as_micros() as u64;
            let mut outcome = Outcome::Unknown;
            let mut said = false;
            for _ in 0..FINAL_READ_TRIES {
                match perform(&http, url, path, &Call::Read, "") {
                    Ok(told) => outcome = told.outcome,
                    Err(unexpected) => {
                        harness_errors.push(format!(
                            "the final read of {path} on {url} was answered {unexpected}"
                        ));
                        said = true;
                        break;
                    }
                }
                if outcome != Outcome::Unknown {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if outcome == Outcome::Unknown && !said {
                report.violations.push(format!(
                    "{path}: {url} answered no final read in {FINAL_READ_TRIES} tries, the \
                     cluster healed and converged"
                ));
            }
            let returned = origin.elapsed().as_micros() as u64;
            match history.lock() {
                Ok(mut h) => h.entry(path.clone()).or_default().push(Operation {
                    client: FINAL_READER,
                    call: Call::Read,
                    invoked,
                    returned: Some(returned),
                    outcome,
                    epoch: None,
                }),
                Err(_) => {
                    harness_errors.push(poisoned("recording the final reads"));
                    break 'reads;
                }
            }
        }
    }
    let history = match history.lock() {
        Ok(h) => h.clone(),
        Err(_) => {
            harness_errors.push(poisoned("reading it to check"));
            BTreeMap::new()
        }
    };
    report.violations.extend(
        harness_errors
            .into_iter()
            .map(|e| format!("harness error: {e}")),
    );
    let everything: Vec<Operation> = history.values().flatten().cloned().collect();
    if let Err(v) = linearizability::check_terms(&everything) {
        let slice: Vec<String> = v.operations.iter().map(|o| format!("{o:?}")).collect();
        report.violations.push(format!(
            "a newer term acknowledged before an older one:\n  {}",
            slice.join("\n  ")
        ));
    }
    let counted = counted(&history);
    report.answered_reads = counted.answered_reads;
    if let Some(little) = counted.too_little() {
        report.violations.push(little);
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
    report.snapshots = cluster.snapshots_installed();
    Ok(report)
}

/// The client of the final reads in the history.
const FINAL_READER: usize = usize::MAX;

/// Tries of each final read, 100 ms apart: a node that rejoined may answer
/// 503 until it holds a read lease again, well within these 5 s and more.
const FINAL_READ_TRIES: usize = 50;

/// The least a round's clients must have had acknowledged and answered for
/// the round to count: below either, the checks had next to nothing to
/// judge. A round's 4 clients, paced 20-40 ms, make about 300 operations
/// in its 4 s, half of them reads. 24 rounds (every fault twice, on 3
/// voters and on 5 voters with a learner) had 45-164 acknowledged writes
/// and 50-227 answered client reads; the fewest in the round that loses
/// most to its fault, `PauseLeader` (clients wait out their 2.5 s timeout
/// on the stopped leader): 45 and 50 on 3 nodes, 63 and 70 on 6. A floor
/// of 10 of each leaves that worst round a margin of 4.5 times, and fails
/// a round whose cluster answered hardly anything.
const MIN_ACKED_WRITES: usize = 10;
const MIN_ANSWERED_READS: usize = 10;

/// What a round's history holds of what the floors above count: its
/// acknowledged writes and answered client reads (the final reads, answered
/// by every node once healed, do not count).
struct Counted {
    operations: usize,
    acked_writes: usize,
    answered_reads: usize,
}

fn counted(history: &BTreeMap<String, Vec<Operation>>) -> Counted {
    let ops = || history.values().flatten();
    Counted {
        operations: ops().count(),
        acked_writes: ops()
            .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
            .count(),
        answered_reads: ops()
            .filter(|o| {
                o.client != FINAL_READER && o.call == Call::Read && o.outcome != Outcome::Unknown
            })
            .count(),
    }
}

impl Counted {
    /// Why the history is too thin to count, if it is.
    fn too_little(&self) -> Option<String> {
        (self.acked_writes < MIN_ACKED_WRITES || self.answered_reads < MIN_ANSWERED_READS).then(
            || {
                format!(
                    "harness error: the round checked too little: {} acknowledged writes (at \
                     least {MIN_ACKED_WRITES} needed) and {} answered client reads (at least \
                     {MIN_ANSWERED_READS} needed) in {} operations",
                    self.acked_writes, self.answered_reads, self.operations
                )
            },
        )
    }
}

fn poisoned(doing: &str) -> String {
    format!("the history's lock is poisoned (a client panicked while recording) when {doing}")
}

/// What a panicking thread said, when it said it with a string. Takes the
/// box itself: a `&Box<dyn Any>` passed as `&dyn Any` is the box, which
/// downcasts to neither.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: usize, client: usize, call: Call, outcome: Outcome) -> Vec<Operation> {
        (0..n)
            .map(|i| Operation {
                client,
                call: call.clone(),
                invoked: i as u64,
                returned: Some(i as u64 + 1),
                outcome: outcome.clone(),
                epoch: None,
            })
            .collect()
    }

    fn put() -> Call {
        Call::Put {
            value: "v".into(),
            expected: None,
        }
    }

    #[test]
    fn a_round_must_have_acknowledged_writes_and_answered_reads() {
        let written = Outcome::Written { version: 1 };
        let read = Outcome::Value {
            value: "v".into(),
            version: 1,
        };
        let mut history = BTreeMap::new();
        history.insert(
            "c/p0".to_string(),
            [
                ops(MIN_ACKED_WRITES, 0, put(), written.clone()),
                ops(MIN_ANSWERED_READS, 1, Call::Read, read.clone()),
            ]
            .concat(),
        );
        assert_eq!(counted(&history).too_little(), None);

        // Unknown outcomes and the final reads count for nothing.
        let mut thin = BTreeMap::new();
        thin.insert(
            "c/p0".to_string(),
            [
                ops(MIN_ACKED_WRITES - 1, 0, put(), written),
                ops(100, 0, put(), Outcome::Unknown),
                ops(MIN_ANSWERED_READS, 1, Call::Read, read.clone()),
            ]
            .concat(),
        );
        assert!(
            counted(&thin)
                .too_little()
                .is_some_and(|m| m.contains("acknowledged writes"))
        );
        let mut unread = history.clone();
        unread.insert(
            "c/p0".to_string(),
            [
                ops(MIN_ACKED_WRITES, 0, put(), Outcome::Written { version: 1 }),
                ops(MIN_ANSWERED_READS - 1, 1, Call::Read, read.clone()),
                ops(100, 1, Call::Read, Outcome::Unknown),
                ops(100, FINAL_READER, Call::Read, read),
            ]
            .concat(),
        );
        assert!(counted(&unread).too_little().is_some());
        assert!(counted(&BTreeMap::new()).too_little().is_some());
    }

    #[test]
    fn a_client_panic_is_reported_with_its_message() {
        let panicked = std::thread::spawn(|| panic!("client fell over")).join();
        let message = panicked.err().map(panic_message);
        assert_eq!(message.as_deref(), Some("client fell over"));
    }
}
