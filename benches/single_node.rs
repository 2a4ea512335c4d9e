//! Single-node write and read load: closed-loop HTTP clients against an
//! in-process node with a real redb file (durable commits) on disk.
//!
//! `cargo bench --bench single_node` (about 40 s). Prints, per concurrency
//! level, throughput and client-observed latency percentiles, plus the
//! node's own commit latency and ops per commit (group commit at work).
//! Client and server share this machine's cores: read the figures as
//! "pika on N cores with its load generator beside it".

mod load;

use load::{PATHS, RUN, VALUE_BYTES, WARMUP, Workload, means, run};
use pika::config::Config;
use pika::node::Node;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let mut config = Config::default();
        config.server.host = "127.0.0.1".into();
        config.server.port = 0;
        config.storage.bw.path = dir.path().join("data");
        config.auth.admin_token = pika_campaign::TEST_ADMIN_TOKEN.into();
        let node = Node::start(config).await?;
        let url = node.url();
        let http = reqwest::Client::builder().default_headers(pika_campaign::admin_headers()).build().expect("http client");

        println!("pika single node, {VALUE_BYTES} B values over {PATHS} paths, {}s per level after {}ms warm-up", RUN.as_secs(), WARMUP.as_millis());
        println!("{:<6} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}", "op", "conc", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "commit p~ ms", "ops/commit");
        for workload in [Workload::Write, Workload::Read] {
            for concurrency in [1usize, 16, 64] {
                let before = http.get(format!("{url}/metrics")).send().await?.text().await?;
                let out = run(&url, workload, concurrency).await;
                let after = http.get(format!("{url}/metrics")).send().await?.text().await?;
                let mean = |name: &str| means(&before, &after, name).first().map(|x| x.1);
                let (commit_ms, per_commit) = match (mean("pika_commit_seconds"), mean("pika_commit_batch_ops")) {
                    (Some(commit), Some(batch)) => (format!("{:.3}", commit * 1e3), format!("{batch:.1}")),
                    _ => ("-".into(), "-".into()),
                };
                let h = &out.latency_us;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
                println!(
                    "{:<6} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>12} {:>10}",
                    match workload { Workload::Write => "write", Workload::Read => "read" },
                    concurrency,
                    out.ops as f64 / out.elapsed.as_secs_f64(),
                    ms(0.5), ms(0.9), ms(0.99), h.max() as f64 / 1e3,
                    commit_ms, per_commit,
                );
            }
        }
        println!("(commit p~ = mean durable commit time per batch, from the node's pika_commit_seconds)");
        node.shutdown().await?;
        Ok(())
    })
}
