//! Single-node write and read load: closed-loop HTTP clients against an
//! in-process node with a real redb file (durable commits) on disk.
//!
//! `cargo bench --bench single_node` (about 80 s). Prints, per concurrency
//! level, throughput and client-observed latency percentiles, plus the
//! node's own commit latency and ops per commit (group commit at work).
//! Then the cost of the token check: reads with an API token (a point read
//! of its record per request), with the admin token (a hash compare), and
//! on a node with access control off, alternated round by round.
//! Client and server share this machine's cores: read the figures as
//! "pika on N cores with its load generator beside it".

mod load;

use std::time::Duration;

use load::{Api, Load, PATHS, RUN, VALUE_BYTES, WARMUP, Workload, drive, means, run};
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
        auth_cost(&http).await?;
        node.shutdown().await?;
        Ok(())
    })
}

/// A fresh node holding `bench/000000..` once each, with access control
/// on (the test admin token) or off.
async fn filled_node(dir: &std::path::Path, auth: bool) -> anyhow::Result<Node> {
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.storage.bw.path = dir.to_path_buf();
    config.auth.enabled = auth;
    config.auth.admin_token = pika_campaign::TEST_ADMIN_TOKEN.into();
    let node = Node::start(config).await?;
    let failed = load::fill(Api::Pika, &node.url(), "bench", (0..PATHS).collect(), 16).await;
    anyhow::ensure!(failed == 0, "{failed} writes failed filling a node");
    Ok(node)
}

/// Reads of the same 1000 paths three ways, alternated for 3 rounds of 2 s:
/// an API token (its record is read from the store on every request) and
/// the admin token (a hash compare) on one node, and no token on a node
/// with `auth.enabled: false`; both nodes fresh and filled alike. Medians
/// of the rounds.
async fn auth_cost(http: &reqwest::Client) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let guarded = filled_node(&dir.path().join("on"), true).await?;
    let open = filled_node(&dir.path().join("off"), false).await?;
    let (url, open_url) = (guarded.url(), open.url());
    let created: serde_json::Value = http
        .post(format!("{url}/api/v1/tokens"))
        .json(&serde_json::json!({"name": "bench-reader", "scopes": ["bench/**:read"]}))
        .send()
        .await?
        .json()
        .await?;
    let token = created["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no token: {created}"))?
        .to_string();

    println!();
    println!("token check cost, reads of {PATHS} paths, 3 alternated rounds of 2 s, medians:");
    println!(
        "{:<22} {:>5} {:>10} {:>9} {:>9}",
        "credential", "conc", "ops/s", "p50 ms", "p99 ms"
    );
    let urls = [url.clone()];
    let open_urls = [open_url.clone()];
    for concurrency in [1usize, 16] {
        let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 3];
        for _round in 0..3 {
            for (i, (target, token)) in [
                (&urls, Some(token.as_str())),
                (&urls, None),
                (&open_urls, None),
            ]
            .into_iter()
            .enumerate()
            {
                let out = drive(&Load {
                    api: Api::Pika,
                    urls: target,
                    workload: Workload::Read,
                    concurrency,
                    warmup: Duration::from_millis(300),
                    run: Duration::from_secs(2),
                    token,
                })
                .await;
                results[i].push((out.ops_per_sec(), out.ms(0.5), out.ms(0.99)));
            }
        }
        for (i, name) in ["API token (scoped)", "admin token", "auth off"]
            .iter()
            .enumerate()
        {
            let median = |f: fn(&(f64, f64, f64)) -> f64| load::median(results[i].iter().map(f));
            println!(
                "{:<22} {:>5} {:>10.0} {:>9.3} {:>9.3}",
                name,
                concurrency,
                median(|r| r.0),
                median(|r| r.1),
                median(|r| r.2)
            );
        }
    }
    open.shutdown().await?;
    guarded.shutdown().await?;
    Ok(())
}
