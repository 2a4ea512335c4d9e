//! `pika-campaign [--nodes 3] [--learners 0] [--rounds 20] [--seed S] [--pika PATH]
//! [--network auto|loopback|netns] [--check strict|writes]`: runs a fault
//! campaign against real pika processes and exits 1 on any violation.
//! `strict` (the default) checks every operation, reads included, for
//! linearizability; `writes` checks the writes, and that reads miss no
//! acknowledged write. With `auto` (the default) the
//! nodes run in network namespaces when this runs as root and `ip netns`
//! works, on 127.0.1.x otherwise. `--learners N` adds N learners fed in
//! batches (`cluster.learner_feed: batched`, replicas = `--nodes`): they join
//! once the voters lead, and clients read on them by read index. Build pika first, with its fault hooks (`cargo build --release --features test-faults`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut nodes = 3usize;
    let mut learners = 0usize;
    let mut rounds = 20usize;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut pika = PathBuf::from("target/release/pika");
    let mut network = pika_campaign::Network::Auto;
    let mut check = pika_campaign::Check::Strict;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value) {
            ("--nodes", Some(v)) => v.parse().map(|v| nodes = v).is_ok(),
            ("--learners", Some(v)) => v.parse().map(|v| learners = v).is_ok(),
            ("--rounds", Some(v)) => v.parse().map(|v| rounds = v).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            ("--network", Some(v)) => v.parse().map(|v| network = v).is_ok(),
            ("--check", Some(v)) => match v.as_str() {
                "strict" => {
                    check = pika_campaign::Check::Strict;
                    true
                }
                "writes" => {
                    check = pika_campaign::Check::Writes;
                    true
                }
                _ => false,
            },
            ("--pika", Some(v)) => {
                pika = PathBuf::from(v);
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!(
                "usage: pika-campaign [--nodes 3|5] [--learners N] [--rounds N] [--seed S] [--pika PATH] [--network auto|loopback|netns] [--check strict|writes]"
            );
            return ExitCode::from(2);
        }
    }
    eprintln!(
        "campaign: {nodes} voters and {learners} learners, {rounds} rounds, seed {seed}, {:?} check, {}",
        check,
        pika.display()
    );
    let size = pika_campaign::Size {
        voters: nodes,
        learners,
    };
    match pika_campaign::campaign(&pika, size, rounds, seed, 100, network, check) {
        Ok(report) => {
            eprintln!(
                "{} rounds ({} in network namespaces), {} operations checked ({} acked writes, {} through the Consul API, \
                 {} retries with the same request id of which {} told the outcome, {} acknowledged writes sent again, \
                 {} unknown outcomes), {} snapshots installed, \
                 {} path histories also judged by stateright's LinearizabilityTester with the same verdict ({} too long to give it), \
                 faults {:?}, {} violations",
                report.rounds,
                report.namespaced_rounds,
                report.operations,
                report.acked_writes,
                report.through_consul,
                report.retried,
                report.resolved_by_retry,
                report.resent,
                report.unknown,
                report.snapshots,
                report.second_opinions,
                report.second_opinion_skipped,
                report.faults,
                report.violations.len()
            );
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("campaign failed to run: {e:#}");
            ExitCode::FAILURE
        }
    }
}
