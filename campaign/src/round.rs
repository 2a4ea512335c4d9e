//! One campaign round: a fresh cluster, concurrent clients recording every
//! operation, one fault injected and healed, then the checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use pika_replication::dice::Dice;

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

type History = Arc<Mutex<BTreeMap<String, Vec<Operation>>>>;

/// What the campaign reads of an answer: its status, the version and term
/// of a change (`X-Pika-Version`, `X-Pika-Epoch`), and its JSON body.
struct Answer {
    status: u16,
    version: Option<u64>,
    epoch: Option<u64>,
    body: Value,
}

impl Answer {
    /// `None` when there was no answer (timeout, refused connection).
    fn of(response: reqwest::Result<reqwest::blocking::Response>) -> Option<Answer> {
        let response = response.ok()?;
        let header = |name: &str| -> Option<u64> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        let (version, epoch) = (header("x-pika-version"), header("x-pika-epoch"));
        Some(Answer {
            status: response.status().as_u16(),
            version,
            epoch,
            body: response.json().unwrap_or(Value::Null),
        })
    }
}

/// Whether a call can go through the Consul KV API: a read, or a write
/// unguarded or guarded by "must not exist" (`?cas=0`). A guard on a
/// version has no Consul equivalent (Consul's `cas` is an index).
fn consul_can(call: &Call) -> bool {
    match call {
        Call::Read => true,
        Call::Put { expected, .. } | Call::Delete { expected } => {
            matches!(expected, None | Some(0))
        }
    }
}

/// A call through the Consul KV API, in the checker's terms. A change
/// answers `true` with `X-Pika-Version` and `X-Pika-Epoch`; a delete of an
/// absent key answers `true` without them; a failed `cas=0`, `false`.
fn perform_consul(
    http: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    call: &Call,
) -> (Outcome, Option<u64>) {
    let target = format!("{url}/v1/kv/{path}");
    let cas = |expected: &Option<u64>| match expected {
        Some(0) => "?cas=0",
        _ => "",
    };
    let response = match call {
        Call::Read => http.get(&target).send(),
        Call::Put { value, expected } => http
            .put(format!("{target}{}", cas(expected)))
            .body(value.clone())
            .send(),
        Call::Delete { expected } => http.delete(format!("{target}{}", cas(expected))).send(),
    };
    let Some(Answer {
        status,
        version,
        epoch,
        body,
    }) = Answer::of(response)
    else {
        return (Outcome::Unknown, None);
    };
    match (call, status) {
        (Call::Read, 404) => (Outcome::NotFound, None),
        (Call::Read, 200) => {
            let value = body[0]["Value"]
                .as_str()
                .and_then(|d| BASE64.decode(d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            match version {
                Some(version) => (Outcome::Value { value, version }, None),
                None => (Outcome::Unknown, None),
            }
        }
        (_, 200) if body == json!(false) => (Outcome::Conflict, None),
        (_, 200) if body == json!(true) => match version {
            Some(version) => (Outcome::Written { version }, epoch),
            None if matches!(call, Call::Delete { .. }) => (Outcome::NotFound, None),
            None => (Outcome::Unknown, None),
        },
        _ => (Outcome::Unknown, None),
    }
}

/// One client request, timed on the round's clock and turned into the
/// checker's terms.
///
/// A write carries `request_id` as its `X-Request-Id`: sent again with the
/// same id, it is answered with what the first one did instead of being
/// applied twice.
fn perform(
    http: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    call: &Call,
    request_id: &str,
) -> (Outcome, Option<u64>) {
    let target = format!("{url}/api/v1/file/{path}");
    let response = match call {
        Call::Read => http.get(&target).send(),
        Call::Put { value, expected } => {
            let mut body = json!({"data": BASE64.encode(value)});
            if let Some(e) = expected {
                body["expected_version"] = json!(e);
            }
            http.post(&target)
                .header("x-request-id", request_id)
                .json(&body)
                .send()
        }
        Call::Delete { expected } => {
            let q = expected
                .map(|e| format!("?expected_version={e}"))
                .unwrap_or_default();
            http.delete(format!("{target}{q}"))
                .header("x-request-id", request_id)
                .send()
        }
    };
    let Some(Answer {
        status,
        version: version_header,
        epoch: epoch_header,
        body,
    }) = Answer::of(response)
    else {
        return (Outcome::Unknown, None);
    };
    let epoch = match (call, status) {
        (Call::Put { .. }, 201) => body["epoch"].as_u64(),
        (Call::Delete { .. }, 204) => epoch_header,
        _ => None,
    };
    let outcome = match (call, status) {
        (_, 409) => Outcome::Conflict,
        (_, 404) => Outcome::NotFound,
        (Call::Read, 200) => {
            let value = body["data"]
                .as_str()
                .and_then(|d| BASE64.decode(d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Outcome::Value {
                value,
                version: body["version"].as_u64().unwrap_or(0),
            }
        }
        (Call::Put { .. }, 201) => Outcome::Written {
            version: body["version"].as_u64().unwrap_or(0),
        },
        (Call::Delete { .. }, 204) => Outcome::Written {
            version: version_header.unwrap_or(0),
        },
        // 503 and anything else: not acknowledged, may or may not apply.
        _ => Outcome::Unknown,
    };
    (outcome, epoch)
}

/// What one client did beyond its history.
#[derive(Debug, Default, Clone)]
struct ClientTally {
    through_consul: usize,
    retried: usize,
    resolved_by_retry: usize,
    /// Acknowledged writes sent again later with their request id.
    resent: usize,
    /// A resent write answered otherwise than the first time: a violation.
    resend_mismatches: Vec<String>,
}

/// An acknowledged native write, kept to be sent again later.
struct Answered {
    path: String,
    call: Call,
    request_id: String,
    outcome: Outcome,
    at: Instant,
}

/// Chance per operation that a client sends an acknowledged write again,
/// with its request id, as a client that lost the answer would: at least
/// [`RESEND_AFTER`] after it was answered, so often under another leader,
/// which must find the id in the replicated record (or its log) rather
/// than in the memory of the leader that applied it.
const RESEND_CHANCE: f64 = 0.05;
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// Times a native write whose outcome is unknown is sent again with its
/// request id, each to the next node, as a client following a 503's advice
/// ("retry with the same X-Request-Id to learn its outcome") does.
const RETRIES: usize = 2;
/// The pause before each retry: long enough for a lost leader's lease to
/// run out and another to take over in some of them.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

fn client(
    id: usize,
    urls: Vec<String>,
    paths: usize,
    seed: u64,
    origin: Instant,
    until: Instant,
    history: History,
) -> ClientTally {
    let http = match reqwest::blocking::Client::builder()
        .default_headers(crate::admin_headers())
        .timeout(Duration::from_millis(2500))
        .build()
    {
        Ok(h) => h,
        Err(_) => return ClientTally::default(),
    };
    let mut tally = ClientTally::default();
    let mut dice = Dice::new(seed);
    // Its own dice, so the main sequence of calls stays what it was.
    let mut resend_dice = Dice::new(seed ^ 0x5E5E_5E5E);
    let mut answered: Vec<Answered> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        if resend_dice.unit() < RESEND_CHANCE {
            resend(&http, &urls, &mut answered, &mut resend_dice, &mut tally);
        }
        n += 1;
        let path = format!("c/p{}", dice.below(paths));
        let mut target = dice.below(urls.len());
        let roll = dice.unit();
        let guard = |dice: &mut Dice| (dice.unit() < 0.3).then(|| dice.below(4) as u64);
        let call = if roll < 0.5 {
            Call::Read
        } else if roll < 0.85 {
            Call::Put {
                value: format!("{id}.{n}"),
                expected: guard(&mut dice),
            }
        } else {
            Call::Delete {
                expected: guard(&mut dice),
            }
        };
        // Half of what the Consul API can express goes through it: the
        // same store behind two APIs, one history.
        let consul = consul_can(&call) && dice.unit() < 0.5;
        tally.through_consul += usize::from(consul);
        let request_id = format!("campaign-{seed:x}-{n}");
        let invoked = origin.elapsed().as_micros() as u64;
        let (mut outcome, mut epoch) = match consul {
            true => perform_consul(&http, &urls[target], &path, &call),
            false => perform(&http, &urls[target], &path, &call, &request_id),
        };
        // One operation in the history however many attempts it took:
        // if a retry applied it again, the value would show up at two
        // versions, which no linearization allows.
        if !consul && call != Call::Read {
            for _ in 0..RETRIES {
                if outcome != Outcome::Unknown || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(RETRY_PAUSE);
                target = (target + 1) % urls.len();
                tally.retried += 1;
                (outcome, epoch) = perform(&http, &urls[target], &path, &call, &request_id);
                tally.resolved_by_retry += usize::from(outcome != Outcome::Unknown);
            }
            if matches!(outcome, Outcome::Written { .. }) {
                answered.push(Answered {
                    path: path.clone(),
                    call: call.clone(),
                    request_id: request_id.clone(),
                    outcome: outcome.clone(),
                    at: Instant::now(),
                });
            }
        }
        let returned = origin.elapsed().as_micros() as u64;
        let op = Operation {
            client: id,
            call,
            invoked,
            returned: (outcome != Outcome::Unknown).then_some(returned),
            outcome,
            epoch,
        };
        if let Ok(mut h) = history.lock() {
            h.entry(path).or_default().push(op);
        }
        // Paced, so each path's history stays small enough to check
        // exhaustively (the checker is exponential in the worst case).
        std::thread::sleep(Duration::from_millis(20 + dice.below(20) as u64));
    }
    tally
}

/// Sends one acknowledged write again, with its request id, to a random
/// node, once [`RESEND_AFTER`] has passed since its answer. The answer must
/// be the first one again (or none, the node unable to say now): applied
/// twice, it would name another version.
fn resend(
    http: &reqwest::blocking::Client,
    urls: &[String],
    answered: &mut Vec<Answered>,
    dice: &mut Dice,
    tally: &mut ClientTally,
) {
    let now = Instant::now();
    let Some(i) = answered.iter().position(|a| now >= a.at + RESEND_AFTER) else {
        return;
    };
    let first = answered.swap_remove(i);
    let url = &urls[dice.below(urls.len())];
    tally.resent += 1;
    let (again, _) = perform(http, url, &first.path, &first.call, &first.request_id);
    if again != first.outcome && again != Outcome::Unknown {
        tally.resend_mismatches.push(format!(
            "{:?} on {} with request id {} was answered {:?}, and {:?} when sent again to {url}",
            first.call, first.path, first.request_id, first.outcome, again
        ));
    }
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
