//! A short fault campaign on every test run: fixed seeds (so CI always
//! covers the same faults) plus one random seed, printed for replay. Longer
//! campaigns: `cargo run -p pika-campaign --release -- --rounds 100` after
//! `cargo build --release`.

use std::path::Path;

fn run(nodes: usize, rounds: usize, seed: u64, base: u8) {
    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    eprintln!(
        "campaign: {nodes} nodes, {rounds} rounds from seed {seed} (replay: pika-campaign --nodes {nodes} --rounds {rounds} --seed {seed})"
    );
    let report =
        pika_campaign::campaign(pika, nodes, rounds, seed, base).expect("the campaign runs");
    eprintln!(
        "{} rounds, {} operations checked ({} acked writes, {} unknown), faults {:?}",
        report.rounds, report.operations, report.acked_writes, report.unknown, report.faults
    );
    assert!(report.operations > 0);
    assert!(
        report.violations.is_empty(),
        "violations (seed, what): {:#?}",
        report.violations
    );
}

#[test]
fn three_nodes_survive_kills_pauses_and_a_random_fault() {
    // Seeds 0..=2 inject KillLeader, KillFollower and PauseLeader.
    run(3, 3, 0, 110);
    let random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_secs());
    run(3, 1, random, 110);
}

#[test]
fn five_nodes_survive_a_minority_partition() {
    // Seed 4 injects MinorityPartition.
    run(5, 1, 4, 120);
}
