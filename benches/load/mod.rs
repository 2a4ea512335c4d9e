//! The closed-loop HTTP load both benchmarks drive: `concurrency` clients,
//! each sending its next request when the previous one is answered.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use serde_json::json;

pub const PATHS: usize = 1000;
pub const VALUE_BYTES: usize = 1024;
pub const RUN: Duration = Duration::from_secs(5);
pub const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
pub enum Workload {
    Write,
    Read,
}

pub struct Outcome {
    pub ops: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

pub async fn run(url: &str, workload: Workload, concurrency: usize) -> Outcome {
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
pub fn histogram_totals(metrics: &str, name: &str) -> (f64, f64) {
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
