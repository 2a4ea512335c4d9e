//! Write fan-out, follower reads, failover, catch-up and memory, on real
//! `pika` clusters of 1, 3, 5 and 7 nodes (real QUIC on 127.0.1.x, real
//! redb files with durable commits, heartbeat 200 ms / timeout 1 s).
//!
//! ```text
//! cargo bench --bench fanout               # quick: about a minute
//! cargo bench --bench fanout -- --full     # 1/3/5/7 nodes, 5 s rows, 100 000 paths
//! benches/compare-etcd.sh [--full]         # pika and a 3-node etcd side by side
//! ```
//!
//! Every row is a closed loop (each client sends its next request when the
//! last is answered), 1 KiB values over 1000 paths, after a warm-up. Clients
//! and nodes share this machine's cores, so absolute figures say as much
//! about the machine as about pika; compare rows of one run.

mod load;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use load::plot::{Report, Series};
use load::{Api, Load, Outcome, PATHS, VALUE_BYTES, Workload, drive, fill, means, median, series};
use pika_campaign::Network;
use pika_campaign::cluster::{Cluster, Options};
use tokio::runtime::Runtime;

const PIKA: &str = env!("CARGO_BIN_EXE_pika");

struct Settings {
    full: bool,
    sizes: Vec<usize>,
    concurrency: Vec<usize>,
    warmup: Duration,
    run: Duration,
    /// Paths stored before the catch-up and memory measurements.
    stored_paths: usize,
    /// Writes a follower misses while it is down.
    missed_writes: usize,
    /// Writes a follower misses in the snapshot part, and the log entries
    /// the nodes keep (fewer than that, so it must rejoin by snapshot).
    absent_writes: usize,
    log_retention: u64,
    failover_trials: usize,
    /// etcd client URLs: compare instead of the pika-only tables.
    etcd: Option<Vec<String>>,
    /// Pairs of rows per comparison case (pika and etcd back to back, the
    /// order alternating), so one unlucky row does not make the ratio.
    etcd_rounds: usize,
    /// Run one part only: `writes`, `failover`, `catch-up` or `snapshot`.
    only: Option<String>,
}

impl Settings {
    fn runs(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == part)
    }
}

impl Settings {
    fn from_args() -> anyhow::Result<Settings> {
        let mut full = false;
        let mut only = None;
        let mut etcd = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--full" => full = true,
                "--only" => {
                    only = Some(
                        args.next()
                            .context("--only needs writes, failover, catch-up or snapshot")?,
                    );
                }
                "--etcd" => {
                    let urls = args.next().context("--etcd needs URL,URL,URL")?;
                    etcd = Some(urls.split(',').map(str::to_string).collect());
                }
                // cargo bench passes --bench to every harness = false target.
                "--bench" => {}
                other => {
                    anyhow::bail!(
                        "unknown argument {other:?}: expected --full, --only PART or --etcd URLS"
                    )
                }
            }
        }
        Ok(if full {
            Settings {
                full,
                sizes: vec![1, 3, 5, 7],
                concurrency: vec![1, 16, 64],
                warmup: Duration::from_millis(500),
                run: Duration::from_secs(5),
                stored_paths: 100_000,
                missed_writes: 10_000,
                absent_writes: 200_000,
                log_retention: 1 << 16,
                failover_trials: 3,
                etcd,
                etcd_rounds: 3,
                only,
            }
        } else {
            Settings {
                full,
                sizes: vec![1, 3, 7],
                concurrency: vec![1, 16, 64],
                warmup: Duration::from_millis(300),
                run: Duration::from_millis(1500),
                stored_paths: 20_000,
                missed_writes: 2_000,
                absent_writes: 20_000,
                log_retention: 5_000,
                failover_trials: 1,
                etcd,
                etcd_rounds: 2,
                only,
            }
        })
    }

    fn load<'a>(
        &self,
        api: Api,
        urls: &'a [String],
        workload: Workload,
        concurrency: usize,
    ) -> Load<'a> {
        Load {
            api,
            urls,
            workload,
            concurrency,
            warmup: self.warmup,
            run: self.run,
            token: None,
        }
    }
}

/// `n` nodes on 127.0.1.`base`.., and the leader they agree on.
fn start(n: usize, base: u8) -> anyhow::Result<(Cluster, usize)> {
    start_with_env(n, base, Vec::new())
}

fn start_with_env(
    n: usize,
    base: u8,
    env: Vec<(String, String)>,
) -> anyhow::Result<(Cluster, usize)> {
    let mut options = Options {
        network: Network::Loopback,
        test_hooks: false,
        env: vec![
            // Verification is for corruption; keep its rounds out of the
            // figures.
            ("PIKA_CLUSTER_SYNC_INTERVAL".into(), "5m".into()),
        ],
        tmpfs_mb: None,
        learners: 0,
    };
    options.env.extend(env);
    let cluster = Cluster::start_with(Path::new(PIKA), base, &vec![1.0; n], options)?;
    let leader = cluster
        .leader(Duration::from_secs(30))
        .context("the cluster elected no leader")?;
    Ok((cluster, leader))
}

fn metrics(url: &str) -> String {
    reqwest::blocking::get(format!("{url}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// What the leader's metrics say one row cost: mean local commit (ms),
/// the slowest follower's mean time from send to its receipt (ms), mean
/// ops per batch.
fn breakdown(before: &str, after: &str) -> (f64, f64, f64) {
    let first = |v: Vec<(String, f64)>| v.first().map_or(0.0, |x| x.1);
    let commit = first(means(before, after, "pika_commit_seconds")) * 1e3;
    let batch = first(means(before, after, "pika_commit_batch_ops"));
    let slowest = means(before, after, "pika_fanout_seconds")
        .into_iter()
        .map(|x| x.1)
        .fold(0.0, f64::max)
        * 1e3;
    (commit, slowest, batch)
}

const HEADER: &str = "nodes target    conc     ops/s   p50 ms   p90 ms   p99 ms p99.9 ms   max ms | commit ms  ack ms  batch | cpu µs: leader follower client";

fn row(
    n: usize,
    target: &str,
    concurrency: usize,
    out: &Outcome,
    costs: (f64, f64, f64),
    cpu: Option<CpuPerOp>,
) {
    let cpu = cpu.map_or_else(String::new, |c| {
        format!(
            " | {:>14.0} {:>8.0} {:>6.0}",
            c.leader_us, c.follower_us, c.client_us
        )
    });
    println!(
        "{n:>5} {target:<9} {concurrency:>4} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} | {:>9.3} {:>7.3} {:>6.1}{cpu}",
        out.ops_per_sec(),
        out.ms(0.5),
        out.ms(0.9),
        out.ms(0.99),
        out.ms(0.999),
        out.max_ms(),
        costs.0,
        costs.1,
        costs.2
    );
}

/// CPU time spent per acknowledged op, over the measured part of a row
/// (after the warm-up): the leader's, the followers' mean, and the load
/// generator's (this process), which shares the same cores.
#[derive(Clone, Copy)]
struct CpuPerOp {
    leader_us: f64,
    follower_us: f64,
    client_us: f64,
}

/// Each process's CPU time so far (`None` for one that cannot be read).
fn cpu_times(pids: &[Option<u32>]) -> Vec<Option<Duration>> {
    pids.iter().map(|p| p.and_then(load::cpu_time)).collect()
}

impl CpuPerOp {
    fn of(
        before: &[Option<Duration>],
        after: &[Option<Duration>],
        leader: usize,
        ops: u64,
    ) -> Option<CpuPerOp> {
        if ops == 0 {
            return None;
        }
        let used: Vec<f64> = before
            .iter()
            .zip(after)
            .map(|(b, a)| Some(a.as_ref()?.saturating_sub((*b)?).as_secs_f64() * 1e6 / ops as f64))
            .collect::<Option<_>>()?;
        // The last process is this one: the load generator.
        let (client_us, used) = used.split_last()?;
        let followers: Vec<f64> = (0..used.len())
            .filter(|&i| i != leader)
            .map(|i| used[i])
            .collect();
        let follower_us = if followers.is_empty() {
            0.0
        } else {
            followers.iter().sum::<f64>() / followers.len() as f64
        };
        Some(CpuPerOp {
            leader_us: used[leader],
            follower_us,
            client_us: *client_us,
        })
    }
}

/// Write fan-out for every cluster size and concurrency, and follower reads
/// on the 3-node cluster. Returns the c=1 leader p50 per size.
fn fanout(
    rt: &Runtime,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<Vec<(usize, f64)>> {
    println!(
        "\n## Writes: {VALUE_BYTES} B values over {PATHS} paths, acked when durable on a quorum and received by every node in the replication set; {} ms rows after {} ms warm-up",
        settings.run.as_millis(),
        settings.warmup.as_millis()
    );
    println!(
        "(commit = leader's local batch commit, ack = the slowest follower's mean time from send to its `received` ack, batch = ops per commit: means from the leader's metrics; cpu = user + system time per acknowledged write after the warm-up, from /proc: the leader's, the followers' mean, and the client's, this process generating the load on the same cores)"
    );
    println!("{HEADER}");
    report.line(format!(
        "## Writes\n\n{VALUE_BYTES} B values over {PATHS} paths, {} ms rows after {} ms warm-up; acknowledged when durable on a quorum and received by every member of the replication set.\n",
        settings.run.as_millis(),
        settings.warmup.as_millis()
    ));
    report.line(
        "| nodes | target | clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | leader CPU µs per write | follower CPU µs per write | client CPU µs per write |",
    );
    report.line("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut c1 = Vec::new();
    let mut reads = None;
    // Percentiles at c=1 via the leader, by cluster size; throughput via
    // the leader, by concurrency, one line per size.
    let mut percentiles: Vec<Series> = ["p50", "p90", "p99", "p99.9"]
        .iter()
        .map(|q| Series {
            name: q.to_string(),
            points: Vec::new(),
        })
        .collect();
    let mut throughput: Vec<Series> = Vec::new();
    for &n in &settings.sizes {
        let (cluster, leader) = start(n, 70)?;
        let urls: Vec<String> = cluster.nodes.iter().map(|x| x.url.clone()).collect();
        let leader_url = vec![urls[leader].clone()];
        let mut by_concurrency = Series {
            name: format!("{n} node{}", if n == 1 { "" } else { "s" }),
            points: Vec::new(),
        };
        for &concurrency in &settings.concurrency {
            let mut targets = vec![("leader", leader_url.clone())];
            if n > 1 {
                targets.push(("all nodes", urls.clone()));
            }
            for (target, target_urls) in targets {
                let before = metrics(&urls[leader]);
                // The CPU counted from the end of the warm-up, like the ops.
                // The nodes, then this process (the load generator).
                let pids: Vec<Option<u32>> = (0..cluster.nodes.len())
                    .map(|i| cluster.pid(i))
                    .chain([Some(std::process::id())])
                    .collect();
                let cpu_at_warmup = {
                    let (warmup, pids) = (settings.warmup, pids.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(warmup);
                        cpu_times(&pids)
                    })
                };
                let out = rt.block_on(drive(&settings.load(
                    Api::Pika,
                    &target_urls,
                    Workload::Write,
                    concurrency,
                )));
                let cpu_after = cpu_times(&pids);
                let cpu = cpu_at_warmup
                    .join()
                    .ok()
                    .and_then(|start| CpuPerOp::of(&start, &cpu_after, leader, out.ops));
                let costs = breakdown(&before, &metrics(&urls[leader]));
                row(n, target, concurrency, &out, costs, cpu);
                let (leader_cpu, follower_cpu, client_cpu) = cpu.map_or_else(
                    || ("–".to_string(), "–".to_string(), "–".to_string()),
                    |c| {
                        (
                            format!("{:.0}", c.leader_us),
                            if n > 1 {
                                format!("{:.0}", c.follower_us)
                            } else {
                                "–".into()
                            },
                            format!("{:.0}", c.client_us),
                        )
                    },
                );
                report.line(format!(
                    "| {n} | {target} | {concurrency} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {leader_cpu} | {follower_cpu} | {client_cpu} |",
                    out.ops_per_sec(),
                    out.ms(0.5),
                    out.ms(0.9),
                    out.ms(0.99),
                    out.ms(0.999),
                    out.max_ms()
                ));
                if target == "leader" {
                    by_concurrency
                        .points
                        .push((concurrency as f64, out.ops_per_sec()));
                }
                if concurrency == 1 && target == "leader" {
                    c1.push((n, out.ms(0.5)));
                    for (series, q) in percentiles.iter_mut().zip([0.5, 0.9, 0.99, 0.999]) {
                        series.points.push((n as f64, out.ms(q)));
                    }
                }
            }
        }
        throughput.push(by_concurrency);
        if n == 3 {
            let follower = vec![urls[(leader + 1) % n].clone()];
            let out = rt.block_on(drive(&settings.load(
                Api::Pika,
                &follower,
                Workload::Read,
                16,
            )));
            reads = Some(out);
        }
    }
    if let Some(out) = reads {
        println!(
            "\n## Local reads on a follower of 3 nodes (default read mode), {VALUE_BYTES} B values"
        );
        println!("{HEADER}");
        row(3, "follower", 16, &out, (0.0, 0.0, 0.0), None);
        report.line(format!(
            "\nLocal reads on a follower of 3 nodes, 16 clients: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms.",
            out.ops_per_sec(),
            out.ms(0.5),
            out.ms(0.99)
        ));
    }
    // A run of one part writes no report (`pika_only`), so it leaves the
    // figures alone too: they stay those of the report beside them.
    if settings.only.is_none() {
        load::plot::lines(
            "write-latency.svg",
            "Write latency by cluster size (1 client, via the leader)",
            "nodes",
            "ms",
            &percentiles,
        )?;
        report.figure(
            "write-latency.svg",
            "write latency percentiles by cluster size",
        );
        load::plot::lines(
            "write-throughput.svg",
            "Write throughput by concurrency (via the leader)",
            "clients",
            "writes/s",
            &throughput,
        )?;
        report.figure("write-throughput.svg", "write throughput by concurrency");
    }
    Ok(c1)
}

/// One failover trial: seconds from the kill until a write invoked after
/// it was acknowledged, acknowledged writes, those missing after the heal,
/// and acknowledged writes per 100 ms from 1 s before the kill.
struct Failover {
    resumed: f64,
    acked: usize,
    lost: usize,
    timeline: Vec<(f64, f64)>,
}

/// Kills the leader of 3 nodes under write load (8 clients on the two
/// followers).
fn failover(rt: &Runtime, trial: usize) -> anyhow::Result<Failover> {
    let (mut cluster, leader) = start(3, 90)?;
    let urls: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.nodes[i].url.clone())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|c| {
            let (url, stop) = (urls[c % urls.len()].clone(), stop.clone());
            rt.spawn(async move {
                let http = load::client(1);
                let value = load::value();
                // (path, invoked, acked at)
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("failover/{trial}/{c}/{i}");
                    i += 1;
                    let invoked = origin.elapsed();
                    if load::request(&http, Api::Pika, &url, Workload::Write, &path, &value)
                        .await
                        .is_ok()
                    {
                        acked.push((path, invoked, origin.elapsed()));
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let killed = origin.elapsed();
    cluster.kill(leader);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(rt.block_on(w).unwrap_or_default());
    }
    let resumed = acked
        .iter()
        .filter(|(_, invoked, _)| *invoked >= killed)
        .map(|(_, _, at)| *at)
        .min()
        .map_or(f64::INFINITY, |at| (at - killed).as_secs_f64());

    cluster.restart(leader)?;
    cluster
        .converged(Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    // Every node holds the same state now; read it all back on the node
    // that was killed, the one most likely to have lost something.
    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .build()
        .expect("http client");
    let old = &cluster.nodes[leader].url;
    let read = |path: &str| -> bool {
        // 503 until the restarted node holds a read lease again.
        for _ in 0..200 {
            match http.get(format!("{old}/api/v1/data/{path}")).send() {
                Ok(r) if r.status().as_u16() == 503 => {}
                Ok(r) => return r.status().is_success(),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let lost = acked.iter().filter(|(path, _, _)| !read(path)).count();
    // Acknowledged writes per 100 ms, from 1 s before the kill to 4 s after.
    let mut buckets = [0u32; 50];
    for (_, _, at) in &acked {
        let since = at.as_secs_f64() - killed.as_secs_f64() + 1.0;
        if (0.0..5.0).contains(&since) {
            buckets[(since * 10.0) as usize] += 1;
        }
    }
    let timeline = buckets
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64 / 10.0 - 1.0, f64::from(*n)))
        .collect();
    Ok(Failover {
        resumed,
        acked: acked.len(),
        lost,
        timeline,
    })
}

/// Peak resident memory of a process, from /proc (kB).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct CatchUp {
    seconds: f64,
    bytes_in: f64,
    distinct_paths: usize,
}

/// Stores `stored_paths` paths, takes a follower down for `missed_writes`
/// writes spread over them, and times its catch-up after the restart.
fn catch_up(rt: &Runtime, settings: &Settings) -> anyhow::Result<CatchUp> {
    let (mut cluster, leader) = start(3, 95)?;
    let leader_url = cluster.nodes[leader].url.clone();
    let failed = rt.block_on(fill(
        Api::Pika,
        &leader_url,
        "store",
        (0..settings.stored_paths).collect(),
        64,
    ));
    anyhow::ensure!(failed == 0, "{failed} writes failed while storing");
    let peak_rss_mb: Vec<f64> = (0..3)
        .filter_map(|i| peak_rss_kb(cluster.pid(i)?))
        .map(|kb| kb as f64 / 1024.0)
        .collect();

    let rss: Vec<String> = peak_rss_mb
        .iter()
        .map(|mb| format!("{mb:.0} MiB"))
        .collect();
    println!(
        "peak RSS per node with {} paths stored: {}",
        settings.stored_paths,
        rss.join(", ")
    );
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let mut dice = pika_replication::dice::Dice::new(42);
    let indices: Vec<usize> = (0..settings.missed_writes)
        .map(|_| dice.below(settings.stored_paths))
        .collect();
    let distinct_paths = indices
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let failed = rt.block_on(fill(Api::Pika, &leader_url, "store", indices, 64));
    anyhow::ensure!(
        failed == 0,
        "{failed} writes failed while the follower was down"
    );

    let seconds = restart_and_wait(&mut cluster, follower, leader, Duration::from_secs(60))?;
    let bytes_in = bytes_in(&metrics(&cluster.nodes[follower].url));
    Ok(CatchUp {
        seconds,
        bytes_in,
        distinct_paths,
    })
}

/// Restarts `follower` and waits until it has the leader's revision and
/// Merkle root: the seconds that took.
fn restart_and_wait(
    cluster: &mut Cluster,
    follower: usize,
    leader: usize,
    limit: Duration,
) -> anyhow::Result<f64> {
    let restarted = Instant::now();
    cluster.restart(follower)?;
    loop {
        let (f, l) = (cluster.status(follower), cluster.status(leader));
        if f["revision"] == l["revision"]
            && f["merkle_root"] == l["merkle_root"]
            && !f["revision"].is_null()
        {
            return Ok(restarted.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            restarted.elapsed() < limit,
            "the follower did not catch up within {limit:?}: follower at {}, leader at {}",
            f["revision"],
            l["revision"]
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes a node received on peer streams, from its metrics text.
fn bytes_in(metrics: &str) -> f64 {
    series(metrics, "pika_membership_frame_bytes_total")
        .into_iter()
        .find(|(labels, _)| labels.contains("\"in\""))
        .map_or(0.0, |x| x.1)
}

struct Rejoin {
    seconds: f64,
    bytes_in: f64,
    snapshots: f64,
    /// The rejoined follower's peak resident memory since its restart.
    peak_rss_mb: Option<f64>,
}

/// Stores `stored_paths` paths, takes a follower down for `absent_writes`
/// writes over them (more than the log keeps), and times its rejoin, which
/// must be a snapshot of what changed.
fn snapshot_rejoin(rt: &Runtime, settings: &Settings) -> anyhow::Result<Rejoin> {
    let env = vec![(
        "PIKA_STORAGE_LOG_RETENTION".to_string(),
        settings.log_retention.to_string(),
    )];
    let (mut cluster, leader) = start_with_env(3, 96, env)?;
    let leader_url = cluster.nodes[leader].url.clone();
    let failed = rt.block_on(fill(
        Api::Pika,
        &leader_url,
        "store",
        (0..settings.stored_paths).collect(),
        64,
    ));
    anyhow::ensure!(failed == 0, "{failed} writes failed while storing");
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let mut dice = pika_replication::dice::Dice::new(7);
    let indices: Vec<usize> = (0..settings.absent_writes)
        .map(|_| dice.below(settings.stored_paths))
        .collect();
    let failed = rt.block_on(fill(Api::Pika, &leader_url, "store", indices, 64));
    anyhow::ensure!(
        failed == 0,
        "{failed} writes failed while the follower was down"
    );
    // Let the others checkpoint and purge their logs past the follower.
    std::thread::sleep(Duration::from_secs(2));
    let seconds = restart_and_wait(&mut cluster, follower, leader, Duration::from_secs(120))?;
    let text = metrics(&cluster.nodes[follower].url);
    let bytes_in = bytes_in(&text);
    let snapshots = series(&text, "pika_syncs_total")
        .first()
        .map_or(0.0, |x| x.1);
    let peak_rss_mb = cluster
        .pid(follower)
        .and_then(peak_rss_kb)
        .map(|kb| kb as f64 / 1024.0);
    Ok(Rejoin {
        seconds,
        bytes_in,
        snapshots,
        peak_rss_mb,
    })
}

fn snapshot_table(
    rt: &Runtime,
    settings: &Settings,
    report: &mut Report,
    bytes: &mut Vec<(&'static str, f64, f64)>,
) -> anyhow::Result<()> {
    println!(
        "\n## Rejoin by snapshot: 3 nodes, {} stored paths of {VALUE_BYTES} B, a follower down for {} writes, {} log entries kept",
        settings.stored_paths, settings.absent_writes, settings.log_retention
    );
    let r = match snapshot_rejoin(rt, settings) {
        Ok(r) => r,
        Err(e) => {
            println!("snapshot rejoin FAILED: {e:#}");
            return Ok(());
        }
    };
    // What changed: every missed write's value (the history moves too).
    let changed = (settings.absent_writes * VALUE_BYTES) as f64;
    let rss = r
        .peak_rss_mb
        .map_or("unknown".to_string(), |mb| format!("{mb:.0} MiB"));
    println!(
        "rejoined in {:.3} s by {} snapshot(s); {:.1} MiB received for {:.1} MiB of changed values: {:.2}×; the follower's peak RSS {rss}",
        r.seconds,
        r.snapshots,
        r.bytes_in / (1 << 20) as f64,
        changed / (1 << 20) as f64,
        r.bytes_in / changed
    );
    report.line(format!(
        "\n## Rejoin by snapshot\n\n3 nodes, {} stored paths, a follower down for {} writes with {} log entries kept: back in {:.3} s by {} snapshot(s), {:.1} MiB received for {:.1} MiB of changed values ({:.2}×); the follower's peak resident memory {rss}.",
        settings.stored_paths,
        settings.absent_writes,
        settings.log_retention,
        r.seconds,
        r.snapshots,
        r.bytes_in / (1 << 20) as f64,
        changed / (1 << 20) as f64,
        r.bytes_in / changed
    ));
    bytes.push(("rejoin by snapshot", changed, r.bytes_in));
    Ok(())
}

fn pika_only(rt: &Runtime, settings: &Settings) -> anyhow::Result<()> {
    let mut report = Report::default();
    report.line(format!(
        "# `cargo bench --bench fanout{}`\n\nWritten by the benchmark itself: the tables and figures of its last {}run, on loopback, nodes and clients sharing this machine's cores.\n",
        if settings.full { " -- --full" } else { "" },
        if settings.full { "full " } else { "" }
    ));
    let c1 = if settings.runs("writes") {
        fanout(rt, settings, &mut report)?
    } else {
        Vec::new()
    };
    let p50 = |n: usize| c1.iter().find(|x| x.0 == n).map(|x| x.1);
    if let (Some(three), Some(seven)) = (p50(3), p50(7)) {
        println!(
            "\nscale: 7 nodes vs 3 nodes, concurrency 1, p50 ratio {:.2}",
            seven / three
        );
    }

    if settings.runs("failover") {
        failover_table(rt, settings, &mut report)?;
    }
    let mut bytes = Vec::new();
    if settings.runs("catch-up") {
        catch_up_table(rt, settings, &mut report, &mut bytes)?;
    }
    if settings.runs("snapshot") {
        snapshot_table(rt, settings, &mut report, &mut bytes)?;
    }
    if !bytes.is_empty() {
        let mib = |v: f64| v / (1 << 20) as f64;
        let names: Vec<&str> = bytes.iter().map(|b| b.0).collect();
        load::plot::bars(
            "catch-up-bytes.svg",
            "Bytes received by a returning follower against bytes changed",
            "MiB",
            &names,
            &[
                (
                    "changed".to_string(),
                    bytes.iter().map(|b| mib(b.1)).collect(),
                ),
                (
                    "received".to_string(),
                    bytes.iter().map(|b| mib(b.2)).collect(),
                ),
            ],
        )?;
        report.figure("catch-up-bytes.svg", "catch-up bytes against changed bytes");
    }
    if settings.only.is_none() {
        let path = report.write("fanout.md")?;
        println!("\nreport and figures: {}", path.display());
    }
    if !settings.full {
        println!(
            "\n(quick run; `cargo bench --bench fanout -- --full` for 1/3/5/7 nodes, 5 s rows and 100 000 paths)"
        );
    }
    Ok(())
}

fn failover_table(rt: &Runtime, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    println!(
        "\n## Failover: kill -9 of the leader of 3 under write load (heartbeat 200 ms, timeout 1 s)"
    );
    report.line("\n## Failover\n\n`kill -9` of the leader of 3 under write load (8 clients on the followers; heartbeat 200 ms, lease 1 s).\n");
    let mut timelines = Vec::new();
    for trial in 0..settings.failover_trials {
        let Failover {
            resumed,
            acked,
            lost,
            timeline,
        } = failover(rt, trial)?;
        println!(
            "trial {trial}: writes resumed {resumed:.3} s after the kill; {acked} acked writes, {lost} lost"
        );
        report.line(format!(
            "- trial {trial}: writes resumed {resumed:.3} s after the kill; {acked} acknowledged writes, {lost} lost"
        ));
        timelines.push(Series {
            name: format!("trial {trial}"),
            points: timeline,
        });
    }
    load::plot::lines(
        "failover-timeline.svg",
        "Acknowledged writes per 100 ms around a kill -9 of the leader (at 0 s)",
        "seconds after the kill",
        "writes acknowledged",
        &timelines,
    )?;
    report.figure(
        "failover-timeline.svg",
        "acknowledged writes per 100 ms around a leader kill",
    );
    Ok(())
}

fn catch_up_table(
    rt: &Runtime,
    settings: &Settings,
    report: &mut Report,
    bytes: &mut Vec<(&'static str, f64, f64)>,
) -> anyhow::Result<()> {
    println!(
        "\n## Catch-up and memory: 3 nodes, {} stored paths of {VALUE_BYTES} B, a follower down for {} writes",
        settings.stored_paths, settings.missed_writes
    );
    let c = match catch_up(rt, settings) {
        Ok(c) => c,
        Err(e) => {
            // Reported, not fatal: the tables above still stand.
            println!("catch-up FAILED: {e:#}");
            return Ok(());
        }
    };
    let changed = (c.distinct_paths * VALUE_BYTES) as f64;
    println!(
        "catch-up {:.3} s; {:.1} MiB received for {} changed paths ({:.1} MiB of values): {:.2}× the bytes that changed",
        c.seconds,
        c.bytes_in / (1 << 20) as f64,
        c.distinct_paths,
        changed / (1 << 20) as f64,
        c.bytes_in / changed
    );
    report.line(format!(
        "\n## Catch-up\n\n3 nodes, {} stored paths of {VALUE_BYTES} B, a follower down for {} writes: back in {:.3} s, {:.1} MiB received for {:.1} MiB of changed values ({:.2}×).",
        settings.stored_paths,
        settings.missed_writes,
        c.seconds,
        c.bytes_in / (1 << 20) as f64,
        changed / (1 << 20) as f64,
        c.bytes_in / changed
    ));
    bytes.push(("catch-up from the log", changed, c.bytes_in));
    Ok(())
}

/// pika (3 nodes on 127.0.1.80-82) and etcd (3 nodes at `etcd`), the same
/// workloads through the same client, side by side.
fn compare_etcd(rt: &Runtime, settings: &Settings, etcd: &[String]) -> anyhow::Result<()> {
    let etcd_leader = rt.block_on(etcd_leader(etcd))?;
    let (cluster, leader) = start(3, 80)?;
    let urls: Vec<String> = cluster.nodes.iter().map(|x| x.url.clone()).collect();
    let pika_leader = vec![urls[leader].clone()];
    let pika_follower = vec![urls[(leader + 1) % 3].clone()];
    let etcd_follower = vec![
        etcd[(etcd.iter().position(|u| *u == etcd_leader).unwrap_or(0) + 1) % etcd.len()].clone(),
    ];
    let etcd_leader = vec![etcd_leader];
    // Reads need the paths to exist on both.
    let all: Vec<usize> = (0..PATHS).collect();
    let failed_pika = rt.block_on(fill(Api::Pika, &pika_leader[0], "bench", all.clone(), 16));
    let failed_etcd = rt.block_on(fill(
        Api::Etcd { serializable: true },
        &etcd_leader[0],
        "bench",
        all,
        16,
    ));
    anyhow::ensure!(
        failed_pika + failed_etcd == 0,
        "writes failed while storing the read paths: {failed_pika} on pika, {failed_etcd} on etcd"
    );

    println!(
        "\n## pika vs etcd, 3 nodes each on loopback, {VALUE_BYTES} B values over {PATHS} paths, {} ms rows, same HTTP/JSON client; medians of {} rounds (pika and etcd back to back), ratios as median (min–max) over the rounds",
        settings.run.as_millis(),
        settings.etcd_rounds
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9}   {:<}",
        "workload",
        "pika op/s",
        "p50 ms",
        "p99 ms",
        "etcd op/s",
        "p50 ms",
        "p99 ms",
        "pika vs etcd"
    );
    let mut report = Report::default();
    report.line(format!(
        "# `benches/compare-etcd.sh{}`\n\nWritten by the benchmark itself: pika and etcd, 3 nodes each on loopback, {VALUE_BYTES} B values over {PATHS} paths, {} ms rows, the same HTTP/JSON client, in one run. Each row is {} rounds of a pika row and an etcd row back to back (the order alternating): the medians of each, and the median (min–max) of the rounds' ratios.\n",
        if settings.full { " --full" } else { "" },
        settings.run.as_millis(),
        settings.etcd_rounds
    ));
    report.line("| workload | pika ops/s | pika p50 ms | pika p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms | p50 pika/etcd | throughput pika/etcd |");
    report.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut quantiles: Option<(Vec<f64>, Vec<f64>)> = None;
    let mut throughput = [
        Series {
            name: "pika".into(),
            points: Vec::new(),
        },
        Series {
            name: "etcd".into(),
            points: Vec::new(),
        },
    ];
    let linearizable = Api::Etcd {
        serializable: false,
    };
    let serializable = Api::Etcd { serializable: true };
    let cases = [
        Case::write("write via leader, c=1", 1, &pika_leader, &etcd_leader),
        Case::write("write via leader, c=16", 16, &pika_leader, &etcd_leader),
        Case::write("write via leader, c=64", 64, &pika_leader, &etcd_leader),
        Case::write("write spread over all, c=64", 64, &urls, etcd),
        Case {
            name: "follower read c=16 (etcd serial.)",
            workload: Workload::Read,
            concurrency: 16,
            pika: &pika_follower,
            etcd_api: serializable,
            etcd: &etcd_follower,
        },
        Case {
            name: "follower read c=16 (etcd linear.)",
            workload: Workload::Read,
            concurrency: 16,
            pika: &pika_follower,
            etcd_api: linearizable,
            etcd: &etcd_follower,
        },
    ];
    for case in cases {
        let (name, workload, concurrency) = (case.name, case.workload, case.concurrency);
        // Rounds of one pika row and one etcd row back to back, the order
        // alternating: what drifts over the run (the page cache, etcd's
        // compactions, the other tenants of the machine) falls on both.
        let mut rounds = Vec::new();
        for round in 0..settings.etcd_rounds {
            let run =
                |api, urls| rt.block_on(drive(&settings.load(api, urls, workload, concurrency)));
            let (pika, etcd) = if round % 2 == 0 {
                let pika = run(Api::Pika, case.pika);
                (pika, run(case.etcd_api, case.etcd))
            } else {
                let etcd = run(case.etcd_api, case.etcd);
                (run(Api::Pika, case.pika), etcd)
            };
            rounds.push(Pair { pika, etcd });
        }
        let m = Medians::of(&rounds);
        let (p50, ops) = (&m.p50_ratio, &m.throughput_ratio);
        println!(
            "{name:<34} {:>10.0} {:>9.3} {:>9.3} {:>10.0} {:>9.3} {:>9.3}   p50 {p50}, throughput {ops}",
            m.pika_ops, m.pika_p50, m.pika_p99, m.etcd_ops, m.etcd_p50, m.etcd_p99,
        );
        report.line(format!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {p50} | {ops} |",
            m.pika_ops, m.pika_p50, m.pika_p99, m.etcd_ops, m.etcd_p50, m.etcd_p99,
        ));
        if name.starts_with("write via leader") {
            throughput[0].points.push((concurrency as f64, m.pika_ops));
            throughput[1].points.push((concurrency as f64, m.etcd_ops));
            if concurrency == 1 {
                let qs = [0.5, 0.9, 0.99, 0.999];
                quantiles = Some((
                    qs.iter()
                        .map(|&q| median(rounds.iter().map(|r| r.pika.ms(q))))
                        .collect(),
                    qs.iter()
                        .map(|&q| median(rounds.iter().map(|r| r.etcd.ms(q))))
                        .collect(),
                ));
            }
        }
    }
    println!("(a p50 ratio below 1 and a throughput ratio above 1 favour pika)");
    report.line("\n(p50 below 1 and throughput above 1 favour pika)");
    if let Some((pika, etcd)) = quantiles {
        load::plot::bars(
            "etcd-write-latency.svg",
            "Write latency, 3 nodes, 1 client via the leader: pika beside etcd",
            "ms",
            &["p50", "p90", "p99", "p99.9"],
            &[("pika".to_string(), pika), ("etcd".to_string(), etcd)],
        )?;
        report.figure(
            "etcd-write-latency.svg",
            "write latency percentiles, pika beside etcd",
        );
    }
    load::plot::lines(
        "etcd-write-throughput.svg",
        "Write throughput by concurrency, 3 nodes via the leader: pika beside etcd",
        "clients",
        "writes/s",
        &throughput,
    )?;
    report.figure(
        "etcd-write-throughput.svg",
        "write throughput by concurrency, pika beside etcd",
    );
    let path = report.write("etcd.md")?;
    println!("report and figures: {}", path.display());
    Ok(())
}

/// One round of a comparison case: pika's row and etcd's, back to back.
struct Pair {
    pika: Outcome,
    etcd: Outcome,
}

/// A ratio over the rounds of a case.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

/// `median (min–max)`, the ratio a comparison row shows.
impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} ({:.2}–{:.2})", self.median, self.min, self.max)
    }
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        let values: Vec<f64> = values.collect();
        Spread {
            median: median(values.iter().copied()),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// What a comparison row shows: each system's medians over the rounds,
/// and the rounds' ratios (each of a pika row and the etcd row beside it).
struct Medians {
    pika_ops: f64,
    pika_p50: f64,
    pika_p99: f64,
    etcd_ops: f64,
    etcd_p50: f64,
    etcd_p99: f64,
    p50_ratio: Spread,
    throughput_ratio: Spread,
}

impl Medians {
    fn of(rounds: &[Pair]) -> Medians {
        Medians {
            pika_ops: median(rounds.iter().map(|r| r.pika.ops_per_sec())),
            pika_p50: median(rounds.iter().map(|r| r.pika.ms(0.5))),
            pika_p99: median(rounds.iter().map(|r| r.pika.ms(0.99))),
            etcd_ops: median(rounds.iter().map(|r| r.etcd.ops_per_sec())),
            etcd_p50: median(rounds.iter().map(|r| r.etcd.ms(0.5))),
            etcd_p99: median(rounds.iter().map(|r| r.etcd.ms(0.99))),
            p50_ratio: Spread::of(rounds.iter().map(|r| r.pika.ms(0.5) / r.etcd.ms(0.5))),
            throughput_ratio: Spread::of(
                rounds
                    .iter()
                    .map(|r| r.pika.ops_per_sec() / r.etcd.ops_per_sec()),
            ),
        }
    }
}

/// One row of the comparison: the same workload on pika and on etcd.
struct Case<'a> {
    name: &'a str,
    workload: Workload,
    concurrency: usize,
    pika: &'a [String],
    etcd_api: Api,
    etcd: &'a [String],
}

impl<'a> Case<'a> {
    fn write(name: &'a str, concurrency: usize, pika: &'a [String], etcd: &'a [String]) -> Self {
        Case {
            name,
            workload: Workload::Write,
            concurrency,
            pika,
            etcd_api: Api::Etcd {
                serializable: false,
            },
            etcd,
        }
    }
}

/// The client URL of the etcd member that leads, once the cluster is up.
async fn etcd_leader(urls: &[String]) -> anyhow::Result<String> {
    let http = load::client(1);
    let started = Instant::now();
    loop {
        for url in urls {
            let status: Option<serde_json::Value> = match http
                .post(format!("{url}/v3/maintenance/status"))
                .json(&serde_json::json!({}))
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if let Some(s) = status
                && s["leader"].is_string()
                && s["leader"] == s["header"]["member_id"]
            {
                return Ok(url.clone());
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no etcd leader at {urls:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &settings.etcd {
        Some(etcd) => compare_etcd(&rt, &settings, etcd),
        None => pika_only(&rt, &settings),
    }
}
