//! The closed-loop HTTP load every benchmark drives: `concurrency` clients,
//! each sending its next request when the previous one is answered. One
//! client for pika and for etcd (through etcd's HTTP/JSON gateway), so a
//! comparison differs only in the server.
#![allow(dead_code)]

pub mod plot;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use pika_campaign::cluster::wait_for_listen;
use serde_json::{Value, json};

pub const PATHS: usize = 1000;
pub const VALUE_BYTES: usize = 1024;
pub const RUN: Duration = Duration::from_secs(5);
pub const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Write,
    Read,
}

/// Which server speaks at the URLs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Pika,
    /// etcd v3's JSON gateway; `serializable` reads are served by the node
    /// asked, the others go through the leader (linearizable).
    Etcd {
        serializable: bool,
    },
    /// pika's Consul KV API (`/v1/kv`): the same store, Consul's shape.
    Consul,
}

/// One measured run.
pub struct Load<'a> {
    pub api: Api,
    /// Client `c` talks to `urls[c % urls.len()]`.
    pub urls: &'a [String],
    pub workload: Workload,
    pub concurrency: usize,
    pub warmup: Duration,
    pub run: Duration,
    /// The API token pika clients send; `None`: the test admin token.
    pub token: Option<&'a str>,
}

pub struct Outcome {
    pub ops: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Outcome {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1e3
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1e3
    }
}

pub fn value() -> String {
    BASE64.encode("x".repeat(VALUE_BYTES))
}

/// One request of `workload` on `path`; `Ok` when the server acknowledged it.
pub async fn request(
    http: &reqwest::Client,
    api: Api,
    url: &str,
    workload: Workload,
    path: &str,
    value: &str,
) -> Result<(), String> {
    let response = match (api, workload) {
        (Api::Pika, Workload::Write) => {
            http.post(format!("{url}/api/v1/file/{path}"))
                .json(&json!({ "meta": {"format": "text"}, "data": value }))
                .send()
                .await
        }
        (Api::Pika, Workload::Read) => http.get(format!("{url}/api/v1/data/{path}")).send().await,
        (Api::Consul, Workload::Write) => {
            http.put(format!("{url}/v1/kv/{path}"))
                .body(value.to_string())
                .send()
                .await
        }
        (Api::Consul, Workload::Read) => http.get(format!("{url}/v1/kv/{path}")).send().await,
        (Api::Etcd { .. }, Workload::Write) => {
            http.post(format!("{url}/v3/kv/put"))
                .json(&json!({ "key": BASE64.encode(path), "value": value }))
                .send()
                .await
        }
        (Api::Etcd { serializable }, Workload::Read) => {
            http.post(format!("{url}/v3/kv/range"))
                .json(&json!({ "key": BASE64.encode(path), "serializable": serializable }))
                .send()
                .await
        }
    };
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    // etcd's gateway answers 200 with an error body for some failures.
    if matches!(api, Api::Etcd { .. })
        && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.get("error").is_some())
    {
        return Err(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(())
}

pub fn client(concurrency: usize) -> reqwest::Client {
    client_as(concurrency, None)
}

/// A client sending `token` (the test admin token when `None`).
pub fn client_as(concurrency: usize, token: Option<&str>) -> reqwest::Client {
    let mut headers = pika_campaign::admin_headers();
    if let Some(token) = token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("a token is a valid header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("http client")
}

/// The client for `api`: pika's carry the token (the test admin token by
/// default); etcd's carry none, since etcd's gateway takes any
/// `Authorization` header for one of its own tokens and refuses it.
pub fn client_for(api: Api, concurrency: usize, token: Option<&str>) -> reqwest::Client {
    match api {
        Api::Etcd { .. } => reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()
            .expect("http client"),
        Api::Pika | Api::Consul => client_as(concurrency, token),
    }
}

/// Drives `load` and returns what happened after the warm-up. A failed
/// request fails the benchmark: a number measured over errors is no number.
pub async fn drive(load: &Load<'_>) -> Outcome {
    let value = Arc::new(value());
    let http = client_for(load.api, load.concurrency, load.token);
    let started = Instant::now();
    let (warmup, run, concurrency, api, workload) = (
        load.warmup,
        load.run,
        load.concurrency,
        load.api,
        load.workload,
    );
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (http, value) = (http.clone(), value.clone());
        let url = load.urls[c % load.urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut ops = 0u64;
            let mut i = c;
            loop {
                let now = Instant::now();
                if now - started > warmup + run {
                    break;
                }
                let path = format!("bench/{:06}", i % PATHS);
                i += concurrency;
                if let Err(e) = request(&http, api, &url, workload, &path, &value).await {
                    panic!("request to {url} failed during the benchmark: {e}");
                }
                if now - started >= warmup {
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
        elapsed: run,
        latency_us,
    }
}

/// The median of `values`: the middle one, the mean of the middle two for
/// an even count, NaN for none. Benchmarks that alternate rounds quote it.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// CPU time (user and system, every thread) process `pid` has used so
/// far, from `/proc/{pid}/stat`; `None` where that cannot be read.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; field 3
    // (the state) is the first after it, so utime (14) and stime (15)
    // are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks(),
    ))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100, Linux's
/// usual value, if that fails).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The single-URL load of the older benchmarks.
pub async fn run(url: &str, workload: Workload, concurrency: usize) -> Outcome {
    let urls = [url.to_string()];
    drive(&Load {
        api: Api::Pika,
        urls: &urls,
        workload,
        concurrency,
        warmup: WARMUP,
        run: RUN,
        token: None,
    })
    .await
}

/// Writes `{prefix}/{i:06}` for every `i` of `indices`, in order, with
/// `concurrency` clients on `url`; the number of failed writes.
pub async fn fill(
    api: Api,
    url: &str,
    prefix: &str,
    indices: Vec<usize>,
    concurrency: usize,
) -> usize {
    let value = Arc::new(value());
    let http = client_for(api, concurrency, None);
    let indices = Arc::new(indices);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, value, next) = (http.clone(), value.clone(), next.clone());
        let (url, prefix, indices) = (url.to_string(), prefix.to_string(), indices.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(i) = indices.get(n) else {
                    return failed;
                };
                let path = format!("{prefix}/{i:06}");
                if request(&http, api, &url, Workload::Write, &path, &value)
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await.unwrap_or(0);
    }
    failed
}

/// Every series of metric `name` (any labels) with its value, from /metrics:
/// `(labels, value)`, labels as written between the braces.
pub fn series(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            if key == name {
                return Some((String::new(), value));
            }
            let labels = key
                .strip_prefix(name)?
                .strip_prefix('{')?
                .strip_suffix('}')?;
            Some((labels.to_string(), value))
        })
        .collect()
}

/// Mean of a histogram per label set between two scrapes of /metrics:
/// `(labels, mean)`, for label sets that recorded anything in between.
pub fn means(before: &str, after: &str, name: &str) -> Vec<(String, f64)> {
    let delta = |suffix: &str| -> Vec<(String, f64)> {
        let old = series(before, &format!("{name}{suffix}"));
        series(after, &format!("{name}{suffix}"))
            .into_iter()
            .map(|(labels, v)| {
                let was = old.iter().find(|(l, _)| *l == labels).map_or(0.0, |x| x.1);
                (labels, v - was)
            })
            .collect()
    };
    let counts = delta("_count");
    delta("_sum")
        .into_iter()
        .filter_map(|(labels, sum)| {
            let count = counts.iter().find(|(l, _)| *l == labels)?.1;
            (count > 0.0).then(|| (labels, sum / count))
        })
        .collect()
}

pub const PIKA: &str = env!("CARGO_BIN_EXE_pika");

/// A `pika` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pika` on a free HTTP port with `dir` as its data directory,
/// `env` on top; returns once it listens.
pub fn spawn(dir: &std::path::Path, env: &[(&str, String)]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(PIKA);
    cmd.env("PIKA_SERVER_PORT", "0")
        .env("PIKA_STORAGE_BW_PATH", dir)
        .env("PIKA_AUTH_ADMIN_TOKEN", pika_campaign::TEST_ADMIN_TOKEN)
        .env("PIKA_LOG_LEVEL", "warn,pika::node=info")
        .env_remove("CONFIG_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let url = match wait_for_listen(&mut child) {
        Ok(url) => url,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(Proc { child, url })
}

/// A node's cluster status (`Null` when it does not answer).
pub async fn status(http: &reqwest::Client, url: &str) -> serde_json::Value {
    match http
        .get(format!("{url}/api/v1/cluster/status"))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// A cluster of `pika` processes on 127.0.1.`hosts`, each with a data
/// directory under `dir`, heartbeat 500 ms and lease 3 s.
pub fn start_cluster(dir: &std::path::Path, hosts: &[u8]) -> anyhow::Result<Vec<Proc>> {
    let names: Vec<String> = hosts.iter().map(|h| format!("127.0.1.{h}")).collect();
    let port = pika_campaign::cluster::free_udp_port(&names)?.to_string();
    let dns = names.join(",");
    let mut nodes = Vec::new();
    for host in &names {
        nodes.push(spawn_member(
            &dir.join(format!("n{host}")),
            host,
            &dns,
            &port,
            &[
                ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "500ms".into()),
                ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "3s".into()),
            ],
        )?);
    }
    Ok(nodes)
}

/// Starts one cluster member on `host`, finding the others by `dns` (a
/// comma-separated address list) on QUIC `port`, `extra` on top.
pub fn spawn_member(
    dir: &std::path::Path,
    host: &str,
    dns: &str,
    port: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let mut env = vec![
        ("PIKA_SERVER_HOST", host.to_string()),
        ("PIKA_CLUSTER_ENABLED", "true".into()),
        ("PIKA_CLUSTER_BIND_ADDR", host.to_string()),
        ("PIKA_CLUSTER_DNS_ADDR", dns.to_string()),
        ("PIKA_CLUSTER_PORT", port.to_string()),
        (
            "PIKA_CLUSTER_SECURITY_KEY",
            "benchmark key, 32 bytes long...".into(),
        ),
    ];
    env.extend(extra.iter().cloned());
    spawn(dir, &env)
}

/// The index of the node that says it leads, once one does (30 s at most).
pub async fn wait_for_leader(http: &reqwest::Client, nodes: &[Proc]) -> anyhow::Result<usize> {
    let started = Instant::now();
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if status(http, &n.url).await["is_leader"] == true {
                return Ok(i);
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no leader elected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
