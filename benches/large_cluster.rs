//! Large installs on loopback: `cargo bench --bench large_cluster` (about
//! 5 minutes). In one run, three clusters of real `pika` processes with
//! heartbeat 1 s and timeout (lease) 5 s:
//! - 3 voters (the reference);
//! - 5 voters and 20 learners (`replicas: 5`, 25 nodes), the learners fed
//!   in batches (`cluster.learner_feed: batched`: out of the replication
//!   set, stale reads only);
//! - the same with learners fed with each write (the default: in the set,
//!   linearizable reads);
//! - 25 voters (`replicas: 25`).
//!
//! For each: the median of sequential 1 KiB writes through the leader
//! (c=1), what each node sends while idle (replica frame bytes, SWIM
//! datagrams and their bytes per second, from `/metrics`), and how long after a `kill -9`
//! of the leader the others agree on a new one. Nodes and load share this
//! machine's cores.

mod load;

use std::time::{Duration, Instant};

use load::{Proc, Workload, run, spawn_member, status};
use pika_campaign::cluster::free_udp_port;

const INTERVAL: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(5);

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Option<Proc>>,
}

/// Starts `voters` nodes with `replicas: voters`, waits for them to name
/// each other the voter set, then starts `learners` more, fed in batches
/// or with each write.
async fn start(
    http: &reqwest::Client,
    base: u8,
    voters: usize,
    learners: usize,
    batched: bool,
) -> anyhow::Result<Cluster> {
    let feed = if batched { "batched" } else { "per_write" };
    let n = voters + learners;
    let dir = tempfile::tempdir()?;
    let hosts: Vec<String> = (0..n).map(|i| format!("127.0.{base}.{}", 10 + i)).collect();
    let port = free_udp_port(&hosts)?.to_string();
    let dns = hosts.join(",");
    let root = dir.path().to_path_buf();
    let boot = |i: usize| {
        spawn_member(
            &root.join(format!("n{i}")),
            &hosts[i],
            &dns,
            &port,
            &[
                ("PIKA_CLUSTER_REPLICAS", voters.to_string()),
                ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "1s".into()),
                ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "5s".into()),
                ("PIKA_CLUSTER_LEARNER_FEED", feed.into()),
            ],
        )
    };
    let mut nodes = Vec::new();
    for i in 0..voters {
        nodes.push(Some(boot(i)?));
    }
    let mut cluster = Cluster { _dir: dir, nodes };
    let started = Instant::now();
    loop {
        let l = leader(http, &cluster).await;
        let named = match l {
            Some(l) => status(http, &url(&cluster, l)).await["voters"]
                .as_array()
                .map_or(0, |v| v.len()),
            None => 0,
        };
        if named == voters {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no full voter set"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in voters..n {
        cluster.nodes.push(Some(boot(i)?));
    }
    // Every learner in the leader's replication set, or (fed in batches)
    // holding the voter set.
    let started = Instant::now();
    loop {
        if let Some(l) = leader(http, &cluster).await {
            let set = status(http, &url(&cluster, l)).await["replication_set"]
                .as_array()
                .map_or(0, |s| s.len());
            let mut holding = 0;
            for i in 0..n {
                let named = status(http, &url(&cluster, i)).await["voters"]
                    .as_array()
                    .map_or(0, |v| v.len());
                holding += usize::from(named == voters);
            }
            let ready = if batched {
                set + 1 == voters && holding == n
            } else {
                set + 1 == n
            };
            if ready {
                return Ok(cluster);
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "learners never joined the set"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn url(c: &Cluster, i: usize) -> String {
    c.nodes[i]
        .as_ref()
        .map(|p| p.url.clone())
        .unwrap_or_default()
}

/// The live node that says it leads.
async fn leader(http: &reqwest::Client, c: &Cluster) -> Option<usize> {
    for i in 0..c.nodes.len() {
        if c.nodes[i].is_some() && status(http, &url(c, i)).await["is_leader"] == true {
            return Some(i);
        }
    }
    None
}

/// (frame bytes, datagrams, datagram bytes) node `i` sent, from its
/// metrics.
async fn sent(http: &reqwest::Client, c: &Cluster, i: usize) -> (f64, f64, f64) {
    let text = match http.get(format!("{}/metrics", url(c, i))).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let out = |name: &str| {
        load::series(&text, name)
            .into_iter()
            .filter(|(labels, _)| labels.contains("\"out\""))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    (
        out("pika_membership_frame_bytes_total"),
        out("pika_membership_datagrams_total"),
        out("pika_membership_datagram_bytes_total"),
    )
}

struct Row {
    name: String,
    p50_ms: f64,
    frame_bytes_per_node: f64,
    datagrams_per_node: f64,
    datagram_bytes_per_node: f64,
    failover: Option<Duration>,
}

async fn measure(
    http: &reqwest::Client,
    name: &str,
    base: u8,
    voters: usize,
    learners: usize,
    batched: bool,
) -> anyhow::Result<Row> {
    let mut c = start(http, base, voters, learners, batched).await?;
    let l = leader(http, &c)
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let out = run(&url(&c, l), Workload::Write, 1).await;
    let p50_ms = out.ms(0.5);

    // Learners fed in batches get the last writes at the next tick: let
    // that pass before measuring what an idle node sends.
    tokio::time::sleep(INTERVAL * 2).await;
    let n = c.nodes.len();
    let mut before = Vec::new();
    for i in 0..n {
        before.push(sent(http, &c, i).await);
    }
    let idle = Duration::from_secs(10);
    tokio::time::sleep(idle).await;
    let (mut bytes, mut datagrams, mut datagram_bytes) = (0.0, 0.0, 0.0);
    for (i, (b0, d0, db0)) in before.iter().enumerate() {
        let (b1, d1, db1) = sent(http, &c, i).await;
        bytes += b1 - b0;
        datagrams += d1 - d0;
        datagram_bytes += db1 - db0;
    }
    let per = |x: f64| x / n as f64 / idle.as_secs_f64();

    c.nodes[l] = None; // kill -9
    let killed = Instant::now();
    let failover = loop {
        if let Some(new) = leader(http, &c).await
            && new != l
        {
            break Some(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(Row {
        name: name.to_string(),
        p50_ms,
        frame_bytes_per_node: per(bytes),
        datagrams_per_node: per(datagrams),
        datagram_bytes_per_node: per(datagram_bytes),
        failover,
    })
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = load::client(4);
        let mut rows = Vec::new();
        for (name, base, voters, learners, batched) in [
            ("3 voters", 21u8, 3, 0, false),
            ("5 voters", 22, 5, 0, false),
            ("5 voters + 20 learners, batched", 23, 5, 20, true),
            ("5 voters + 20 learners, per write", 24, 5, 20, false),
            ("25 voters", 25, 25, 0, false),
        ] {
            rows.push(measure(&http, name, base, voters, learners, batched).await?);
        }
        println!(
            "large installs on loopback, heartbeat {}s, lease {}s; c=1 writes of 1 KiB via the leader",
            INTERVAL.as_secs(),
            LEASE.as_secs()
        );
        println!(
            "{:<34} {:>9} {:>9} {:>16} {:>14} {:>16} {:>12}",
            "cluster",
            "p50 ms",
            "p50 ×",
            "frame B/s/node",
            "dgrams/s/node",
            "dgram B/s/node",
            "failover s"
        );
        let base = rows[0].p50_ms;
        for r in &rows {
            println!(
                "{:<34} {:>9.3} {:>9.2} {:>16.0} {:>14.1} {:>16.0} {:>12}",
                r.name,
                r.p50_ms,
                r.p50_ms / base,
                r.frame_bytes_per_node,
                r.datagrams_per_node,
                r.datagram_bytes_per_node,
                r.failover
                    .map_or("none".into(), |d| format!("{:.2}", d.as_secs_f64()))
            );
        }
        println!(
            "(p50 × = relative to 3 voters; failover = kill -9 of the leader until a new one leads; L + 2 intervals = {} s)",
            (LEASE + INTERVAL * 2).as_secs()
        );
        Ok(())
    })
}
