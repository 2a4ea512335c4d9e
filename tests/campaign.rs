//! A short fault campaign on every test run, in strict mode (every read
//! linearizable, clients sharing 6 paths, verification every 500ms): fixed
//! seeds (so CI always covers the same faults) plus one random seed,
//! printed for replay. Longer campaigns: `cargo run -p pika-campaign
//! --release -- --rounds 100` after `cargo build --release --features test-faults`.

use std::path::Path;

fn run(nodes: usize, rounds: usize, seed: u64, base: u8) -> pika_campaign::CampaignReport {
    run_with_learners(nodes, 0, rounds, seed, base)
}

fn run_with_learners(
    nodes: usize,
    learners: usize,
    rounds: usize,
    seed: u64,
    base: u8,
) -> pika_campaign::CampaignReport {
    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    eprintln!(
        "campaign: {nodes} voters and {learners} learners, {rounds} rounds from seed {seed} (replay: pika-campaign --nodes {nodes} --learners {learners} --rounds {rounds} --seed {seed})"
    );
    let report = pika_campaign::campaign(
        pika,
        pika_campaign::Size {
            voters: nodes,
            learners,
        },
        rounds,
        seed,
        base,
        pika_campaign::Network::Auto,
        pika_campaign::Check::Strict,
    )
    .expect("the campaign runs");
    eprintln!(
        "{} rounds ({} in network namespaces), {} operations checked ({} acked writes, {} unknown, \
         {} acknowledged writes sent again with their request id), \
         {} path histories judged alike by stateright's tester ({} too long for it), faults {:?}",
        report.rounds,
        report.namespaced_rounds,
        report.operations,
        report.acked_writes,
        report.unknown,
        report.resent,
        report.second_opinions,
        report.second_opinion_skipped,
        report.faults
    );
    assert!(report.operations > 0);
    assert!(
        report.violations.is_empty(),
        "violations (seed, what): {:#?}",
        report.violations
    );
    report
}

#[test]
fn three_nodes_survive_kills_pauses_and_a_random_fault() {
    // Seeds 0..=2 inject KillLeader, KillFollower and PauseLeader.
    let fixed = run(3, 3, 0, 110);
    // (A RestartAll round, which the random seed may pick, leaves most
    // histories with too many unknown outcomes to give stateright.)
    assert!(
        fixed.second_opinions > 0,
        "the histories also go to stateright's LinearizabilityTester"
    );
    // Some of them after the leader's kill, under the next leader: with
    // the replicated request ids ignored, those were applied a second
    // time (seed 210000 onwards, `docs/testing.md`).
    assert!(
        fixed.resent > 0,
        "clients send acknowledged writes again with their request ids"
    );
    let random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_secs());
    run(3, 1, random, 110);
}

#[test]
fn three_nodes_survive_a_full_disk_a_paused_protocol_a_wiped_node_and_a_moved_one() {
    // Seeds 9 to 12 inject DiskFull (the data directories are small tmpfs
    // mounts when root), PauseQueued, Wipe (a node's data directory lost:
    // it comes back under a new id, as a learner) and Relocate (a node
    // back on its data at a new address).
    let report = run(3, 4, 9, 140);
    assert_eq!(
        report.faults.get(&pika_campaign::round::Fault::Relocate),
        Some(&1)
    );
}

/// Three voters and two learners fed in batches: clients read on the
/// learners by read index and write through them while the leader is
/// killed, and while a node's data directory is lost.
#[test]
fn learners_fed_in_batches_read_linearizably_through_a_leader_kill_and_a_wipe() {
    // Seeds 0 and 11 inject KillLeader and Wipe.
    run_with_learners(3, 2, 1, 0, 150);
    run_with_learners(3, 2, 1, 11, 150);
}

#[test]
fn five_nodes_survive_a_minority_partition() {
    // Seed 4 injects MinorityPartition.
    run(5, 1, 4, 120);
}

/// In network namespaces a partition is a kernel route, so it cuts SWIM,
/// dials and replication alike: the isolated leader must stop acking, the
/// majority must elect another leader, and healing must converge them.
/// Needs root and `ip netns`; elsewhere it says so and checks nothing (the
/// campaign above still partitions through the fault layer there).
#[test]
fn an_isolated_leader_in_its_namespace_stops_acking_and_is_replaced() {
    use pika_campaign::cluster::{Cluster, agreed_leader};
    use std::time::{Duration, Instant};

    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    let mut cluster = match Cluster::start(
        pika,
        130,
        &[1.0, 1.0, 1.0],
        pika_campaign::Network::Namespaces,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: network namespaces unavailable here ({e:#})");
            return;
        }
    };
    let old = cluster
        .leader(Duration::from_secs(15))
        .expect("a leader at start");
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    for &i in &others {
        cluster.cut(old, i).expect("cut");
        cluster.cut(i, old).expect("cut");
    }

    let start = Instant::now();
    let new = loop {
        let statuses: Vec<_> = others.iter().map(|&i| (i, cluster.status(i))).collect();
        if let Some((leader, _)) = agreed_leader(&statuses) {
            break leader;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the majority elected no new leader: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(new, old);

    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let put = |node: usize, value: &str| {
        http.post(format!("{}/api/v1/file/iso/k", cluster.nodes[node].url))
            .json(&serde_json::json!({"data": value}))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    // "aXNv" and "bWFq" are base64 of "iso" and "maj".
    let isolated = put(old, "aXNv");
    assert_ne!(isolated, 201, "the isolated old leader acked a write");
    assert_eq!(put(new, "bWFq"), 201, "the majority's leader did not ack");

    cluster.heal().expect("heal");
    cluster
        .converged(Duration::from_secs(20))
        .expect("the healed cluster converges");
    // A node that just rejoined may answer 503 until it holds a read lease
    // again; it must never answer with anything but the majority's write.
    let start = Instant::now();
    let read = loop {
        let response = http
            .get(format!("{}/api/v1/file/iso/k", cluster.nodes[old].url))
            .send()
            .expect("read on the old leader");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().unwrap_or_default();
        if status != 503 || start.elapsed() > Duration::from_secs(10) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(read.0, 200, "read on the old leader: {read:?}");
    assert_eq!(
        read.1["data"], "bWFq",
        "the old leader lost the majority's write"
    );
}
