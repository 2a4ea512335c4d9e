//! Single-node write and read load: closed-loop HTTP clients against an
//! in-process node with a real redb file (durable commits) on disk.
//!
//! `cargo bench --bench single_node` (about 40 s). Prints, per concurrency
//! level, throughput and client-observed latency percentiles, plus the
//! node's own commit latency and ops per commit (group commit at work).
//! Client and server share this machine's cores: read the figures as
//! "pika on N cores with its load generator beside it".

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use pika::config::Config;
use pika::node::Node;
use serde_json::json;

const PATHS: usize = 1000;
const VALUE_BYTES: usize = 1024;
const RUN: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
enum Workload {
    Write,
    Read,
}

struct Outcome {
    ops: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

async fn run(url: &str, workload: Workload, concurrency: usize) -> Outcome {
    let value = BASE64.encode("x".repeat(VALUE_BYTES));
    let body = Arc::new(json!({ "meta": {"format": "text"}, "data": value }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("http client");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (http, body, url) = (http.clone(), body.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut ops = 0u64;
            let mut i = c;
            loop {
                let now = Instant::now();
                if now - started > WARMUP + RUN {
                    break;
                }
                let path = format!("bench/{:04}", i % PATHS);
                i += concurrency;
                let response = match workload {
                    Workload::Write => {
                        http.post(format!("{url}/api/v1/file/{path}"))
                            .json(&*body)
                            .send()
                            .await
                    }
                    Workload::Read => http.get(format!("{url}/api/v1/data/{path}")).send().await,
                };
                let ok = match response {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                assert!(ok, "request failed during the benchmark");
                if now - started >= WARMUP {
                    ops += 1;
                    let _ = hist.record(now.elapsed().as_micros() as u64);
                }
            }
            (ops, hist)
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3).expect("histogram");
    let mut ops = 0;
    for task in tasks {
        let (n, h) = task.await.expect("client task");
        ops += n;
        latency_us.add(h).expect("merge histograms");
    }
    Outcome {
        ops,
        elapsed: RUN,
        latency_us,
    }
}

/// `name_sum` and `name_count` of a Prometheus histogram, from /metrics.
fn histogram_totals(metrics: &str, name: &str) -> (f64, f64) {
    let read = |suffix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{suffix} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (read("_sum"), read("_count"))
}

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
        let node = Node::start(config).await?;
        let url = node.url();
        let http = reqwest::Client::new();

        println!("pika single node, {VALUE_BYTES} B values over {PATHS} paths, {}s per level after {}ms warm-up", RUN.as_secs(), WARMUP.as_millis());
        println!("{:<6} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}", "op", "conc", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "commit p~ ms", "ops/commit");
        for workload in [Workload::Write, Workload::Read] {
            for concurrency in [1usize, 16, 64] {
                let before = http.get(format!("{url}/metrics")).send().await?.text().await?;
                let out = run(&url, workload, concurrency).await;
                let after = http.get(format!("{url}/metrics")).send().await?.text().await?;
                let (s0, c0) = histogram_totals(&before, "pika_commit_seconds");
                let (s1, c1) = histogram_totals(&after, "pika_commit_seconds");
                let (b0, _) = histogram_totals(&before, "pika_commit_batch_ops");
                let (b1, _) = histogram_totals(&after, "pika_commit_batch_ops");
                let commits = c1 - c0;
                let (commit_ms, per_commit) = if commits > 0.0 {
                    (format!("{:.3}", (s1 - s0) / commits * 1e3), format!("{:.1}", (b1 - b0) / commits))
                } else {
                    ("-".into(), "-".into())
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
