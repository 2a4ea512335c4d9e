//! Watch latency: how long after a write a watcher hears of it.
//!
//! `cargo bench --bench watch [-- --full]`. Real `pika` processes on
//! 127.0.1.x; one client writes 1 KiB values one at a time through the
//! leader while SSE watches on the leader and on a follower timestamp every
//! event as it arrives. Per write: invoke → ack (the write's latency),
//! invoke → event on the leader, invoke → event on a follower, and event −
//! ack on the leader (negative: the event came first). The leader publishes
//! a change when its own commit is durable, before its followers' acks let
//! it answer the writer, so the event usually precedes the ack.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pika_campaign::Network;
use pika_campaign::cluster::{Cluster, Options};
use serde_json::{Value, json};

const PIKA: &str = env!("CARGO_BIN_EXE_pika");

/// Arrival times of a watch's events, by revision.
fn watch(url: &str) -> anyhow::Result<mpsc::Receiver<(u64, Instant)>> {
    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .timeout(None)
        .build()?;
    let response = http
        .get(format!("{url}/api/v1/watch?prefix=bench/"))
        .send()
        .context("opening a watch")?;
    anyhow::ensure!(
        response.status().is_success(),
        "watch: {}",
        response.status()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let at = Instant::now();
            let revision = serde_json::from_str::<Value>(data.trim())
                .ok()
                .and_then(|v| v["revision"].as_u64());
            if let Some(r) = revision
                && tx.send((r, at)).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// Percentile `p` (0..=1) of `values` in milliseconds.
fn pct(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

fn run(nodes: usize, base: u8, writes: usize) -> anyhow::Result<()> {
    let options = Options {
        network: Network::Loopback,
        test_hooks: false,
        env: vec![("PIKA_CLUSTER_SYNC_INTERVAL".into(), "5m".into())],
        tmpfs_mb: None,
        learners: 0,
    };
    let cluster = Cluster::start_with(Path::new(PIKA), base, &vec![1.0; nodes], options)?;
    let leader = cluster
        .leader(Duration::from_secs(30))
        .context("no leader elected")?;
    let leader_url = cluster.nodes[leader].url.clone();
    let on_leader = watch(&leader_url)?;
    let on_follower = match (nodes > 1).then(|| (leader + 1) % nodes) {
        Some(f) => Some(watch(&cluster.nodes[f].url)?),
        None => None,
    };
    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .timeout(Duration::from_secs(10))
        .build()?;
    let value = BASE64.encode(vec![b'x'; 1024]);
    let mut sent: HashMap<u64, (Instant, Instant)> = HashMap::new();
    for i in 0..writes {
        let start = Instant::now();
        let ack: Value = http
            .post(format!("{leader_url}/api/v1/file/bench/k{}", i % 100))
            .json(&json!({ "data": value }))
            .send()?
            .error_for_status()?
            .json()?;
        let revision = ack["revision"].as_u64().context("no revision in the ack")?;
        sent.insert(revision, (start, Instant::now()));
    }
    let collect = |rx: &mpsc::Receiver<(u64, Instant)>| {
        let mut seen = HashMap::new();
        while seen.len() < writes {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok((r, at)) => {
                    seen.insert(r, at);
                }
                Err(_) => break,
            }
        }
        seen
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let leader_events = collect(&on_leader);
    let follower_events = on_follower.as_ref().map(collect);
    let (mut ack, mut to_leader, mut to_follower, mut event_minus_ack) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (revision, (start, acked)) in &sent {
        ack.push(ms(*acked - *start));
        if let Some(at) = leader_events.get(revision) {
            to_leader.push(ms(at.saturating_duration_since(*start)));
            event_minus_ack.push(if at >= acked {
                ms(*at - *acked)
            } else {
                -ms(*acked - *at)
            });
        }
        if let Some(at) = follower_events.as_ref().and_then(|f| f.get(revision)) {
            to_follower.push(ms(at.saturating_duration_since(*start)));
        }
    }
    let row = |name: &str, v: &mut Vec<f64>| {
        println!(
            "{nodes} node(s)  {name:<28} n={:<5} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99)
        );
    };
    row("invoke -> ack", &mut ack);
    row("invoke -> event on leader", &mut to_leader);
    if nodes > 1 {
        row("invoke -> event on follower", &mut to_follower);
    }
    row("event - ack on leader", &mut event_minus_ack);
    anyhow::ensure!(
        to_leader.len() == writes,
        "the leader's watch saw {} of {writes} writes",
        to_leader.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--full");
    let writes = if full { 3000 } else { 500 };
    println!("watch latency, sequential 1 KiB writes through the leader ({writes} per row)");
    run(1, 160, writes)?;
    run(3, 165, writes)?;
    Ok(())
}
