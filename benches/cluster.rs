//! Replicated write latency and throughput: a 3-node loopback cluster of
//! `pika` processes (real QUIC, real redb files with durable commits), with a
//! standalone node measured in the same run for the ratio.
//!
//! `cargo bench --bench cluster` (about 2 minutes). Writes go to the
//! standalone node, to the leader, and to a follower (which forwards them),
//! at 1 and 64 closed-loop clients. Every acknowledged cluster write is
//! durable on all three nodes. Then reads on a follower at 16 clients,
//! through the native API and through the Consul KV API, side by side.
//! Client and nodes share this machine's cores.

mod load;

use load::{
    Api, Load, PATHS, RUN, VALUE_BYTES, WARMUP, Workload, median, run, spawn, start_cluster,
};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let nodes = start_cluster(dir.path(), &[61, 62, 63])?;
        let standalone = spawn(&dir.path().join("standalone"), &[("PIKA_SERVER_HOST", "127.0.0.1".into())])?;
        let http = reqwest::Client::builder().default_headers(pika_campaign::admin_headers()).build().expect("http client");

        let leader = load::wait_for_leader(&http, &nodes).await?;
        let follower = (leader + 1) % nodes.len();

        println!(
            "pika writes: standalone vs 3-node cluster (loopback, durable on every node), {VALUE_BYTES} B values, {}s per row after {}ms warm-up",
            RUN.as_secs(),
            WARMUP.as_millis()
        );
        println!("{:<22} {:>5} {:>10} {:>9} {:>9} {:>9}", "target", "conc", "ops/s", "p50 ms", "p99 ms", "p50 ×");
        for concurrency in [1usize, 64] {
            let mut base_p50 = None;
            for (name, url) in [
                ("standalone", &standalone.url),
                ("cluster via leader", &nodes[leader].url),
                ("cluster via follower", &nodes[follower].url),
            ] {
                let out = run(url, Workload::Write, concurrency).await;
                let h = &out.latency_us;
                let p50 = h.value_at_quantile(0.5) as f64 / 1e3;
                let ratio = base_p50.map_or("1.00".to_string(), |b: f64| format!("{:.2}", p50 / b));
                base_p50.get_or_insert(p50);
                println!(
                    "{:<22} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>9}",
                    name,
                    concurrency,
                    out.ops as f64 / out.elapsed.as_secs_f64(),
                    p50,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                    ratio,
                );
            }
        }
        println!("(p50 × = median latency relative to the standalone node at the same concurrency)");

        consul_reads(&nodes[leader].url, &nodes[follower].url).await

    })
}

/// Reads on a follower through the native API and the Consul KV API, side
/// by side: the same 1000 paths of 1 KiB, 16 clients, rounds alternated so
/// that both see the same machine, medians of 3.
async fn consul_reads(leader: &str, follower: &str) -> anyhow::Result<()> {
    const ROUNDS: usize = 3;
    const CONCURRENCY: usize = 16;
    let failed = load::fill(Api::Pika, leader, "bench", (0..PATHS).collect(), 16).await;
    anyhow::ensure!(failed == 0, "{failed} writes failed while filling");
    let urls = [follower.to_string()];
    let mut results: Vec<(&str, Vec<(f64, f64)>)> = vec![
        ("native /api/v1/data", Vec::new()),
        ("consul /v1/kv", Vec::new()),
    ];
    for _ in 0..ROUNDS {
        for (i, api) in [Api::Pika, Api::Consul].into_iter().enumerate() {
            let out = load::drive(&Load {
                api,
                urls: &urls,
                workload: Workload::Read,
                concurrency: CONCURRENCY,
                warmup: WARMUP,
                run: RUN,
                token: None,
            })
            .await;
            results[i].1.push((out.ops_per_sec(), out.ms(0.5)));
        }
    }
    println!();
    println!(
        "reads on a follower, {PATHS} paths of {VALUE_BYTES} B, c={CONCURRENCY}, {ROUNDS} alternated rounds of {}s, medians",
        RUN.as_secs()
    );
    println!(
        "{:<22} {:>10} {:>9} {:>9}",
        "api", "ops/s", "p50 ms", "ops ×"
    );
    let mut base = None;
    for (name, rounds) in results {
        let ops = median(rounds.iter().map(|r| r.0));
        let p50 = median(rounds.iter().map(|r| r.1));
        let ratio = ops / *base.get_or_insert(ops);
        println!("{name:<22} {ops:>10.0} {p50:>9.3} {ratio:>9.2}");
    }
    println!("(ops × = throughput relative to the native API)");
    Ok(())
}
