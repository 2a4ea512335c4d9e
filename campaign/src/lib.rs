//! Fault campaigns against real pika clusters (issue 5), and the checkers
//! their histories go through.
//!
//! - [`cluster`]: `pika` processes on 127.0.1.x or in network namespaces,
//!   killed, paused, restarted, partitioned (blackhole routes or the
//!   test-only fault endpoint) and slowed (the fault endpoint).
//! - [`netns`]: the namespaces, veths and bridge behind a namespaced cluster.
//! - [`round`]: one round: concurrent clients record every operation while
//!   one fault is injected and healed; then convergence and per-path
//!   linearizability are checked.
//! - [`linearizability`]: the history checker.

mod client;
pub mod cluster;
pub mod linearizability;
pub mod netns;
pub mod round;
pub mod second_opinion;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

pub use cluster::Network;

/// The admin token every test, bench and campaign node runs with
/// (`PIKA_AUTH_ADMIN_TOKEN`), and its clients send. A fixed, public value:
/// for loopback test clusters only.
pub const TEST_ADMIN_TOKEN: &str =
    "pika_7e57000000000000000000000000000000000000000000000000000000000001";

/// `Authorization: Bearer` [`TEST_ADMIN_TOKEN`], as default headers for a
/// test client. Also installs ring as the process's rustls provider, which
/// reqwest (built without a provider of its own, as pika's CLI is) needs
/// before any client is built: every test client is built through here.
pub fn admin_headers() -> reqwest::header::HeaderMap {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TEST_ADMIN_TOKEN}"))
            .expect("a constant, valid header value"),
    );
    headers
}
pub use round::{Fault, RoundConfig, RoundReport};

/// What a whole campaign did.
#[derive(Debug, Default)]
pub struct CampaignReport {
    pub rounds: usize,
    pub operations: usize,
    pub acked_writes: usize,
    /// Operations sent through the Consul KV API.
    pub through_consul: usize,
    /// Writes sent again with their request id after an unknown outcome,
    /// and those whose outcome a retry then told.
    pub retried: usize,
    pub resolved_by_retry: usize,
    /// Acknowledged writes sent again later with their request id.
    pub resent: usize,
    pub unknown: usize,
    /// Path histories stateright's tester agreed on, and those too long
    /// to give it.
    pub second_opinions: usize,
    pub second_opinion_skipped: usize,
    /// Rounds whose nodes ran in network namespaces.
    pub namespaced_rounds: usize,
    /// Snapshots installed over all rounds.
    pub snapshots: u64,
    pub faults: BTreeMap<Fault, usize>,
    /// (seed, what went wrong).
    pub violations: Vec<(u64, String)>,
}

/// How the histories are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every operation, reads included, must be linearizable (what pika's
    /// local reads promise); clients share 6 paths, so reads and writes
    /// of one path meet often.
    Strict,
    /// Writes linearizable; reads only never miss an acknowledged write
    /// and never invent data. 16 paths.
    Writes,
}

/// How many nodes a campaign's clusters have.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// The cluster's `replicas`.
    pub voters: usize,
    /// Learners beyond them, fed in batches (reads on them by read index).
    pub learners: usize,
}

/// Runs `rounds` rounds on clusters of `size`, round r with seed `seed + r`
/// and fault `Fault::ALL[(seed + r) % Fault::ALL.len()]`.
pub fn campaign(
    pika: &Path,
    size: Size,
    rounds: usize,
    seed: u64,
    base: u8,
    network: Network,
    check: Check,
) -> anyhow::Result<CampaignReport> {
    let mut report = CampaignReport::default();
    for r in 0..rounds as u64 {
        let round_seed = seed.wrapping_add(r);
        let fault = Fault::ALL[(round_seed % Fault::ALL.len() as u64) as usize];
        let config = RoundConfig {
            pika,
            nodes: size.voters,
            learners: size.learners,
            seed: round_seed,
            fault,
            base,
            network,
            clients: 4,
            paths: match check {
                Check::Strict => 6,
                Check::Writes => 16,
            },
            duration: Duration::from_secs(4),
            check,
        };
        // A round that cannot run (no leader at start, a fault that could
        // not be injected) ends the campaign: say which, to replay it.
        let result = round::run(&config).with_context(|| {
            format!("round {r}, seed {round_seed}, {fault:?} (replay with --seed {round_seed} --rounds 1)")
        })?;
        eprintln!(
            "round {r} seed {round_seed} {fault:?}{}: {} ops ({} acked writes, {} answered client reads, {} through the Consul API, {} retries of which {} told the outcome, {} acknowledged writes sent again, {} unknown, {} snapshots installed), {} violations",
            if result.namespaced { " (netns)" } else { "" },
            result.operations,
            result.acked_writes,
            result.answered_reads,
            result.through_consul,
            result.retried,
            result.resolved_by_retry,
            result.resent,
            result.unknown,
            result.snapshots,
            result.violations.len()
        );
        report.rounds += 1;
        report.operations += result.operations;
        report.acked_writes += result.acked_writes;
        report.through_consul += result.through_consul;
        report.retried += result.retried;
        report.resolved_by_retry += result.resolved_by_retry;
        report.resent += result.resent;
        report.unknown += result.unknown;
        report.second_opinions += result.second_opinions;
        report.second_opinion_skipped += result.second_opinion_skipped;
        report.namespaced_rounds += usize::from(result.namespaced);
        report.snapshots += result.snapshots;
        *report.faults.entry(fault).or_default() += 1;
        for v in result.violations {
            let shown: String = v.lines().take(40).collect::<Vec<_>>().join("\n");
            eprintln!("VIOLATION (replay with --seed {round_seed} --rounds 1): {shown}");
            report.violations.push((round_seed, v));
        }
    }
    Ok(report)
}
