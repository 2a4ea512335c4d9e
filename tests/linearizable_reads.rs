//! Local reads are linearizable on every node (DESIGN.md, "Reads"): after a
//! write is acknowledged, a read of that path on any other node returns
//! that version or a later one, never an older one.
//!
//! 3 real nodes on loopback with a short `sync_interval` (so verification
//! runs many times), 8 clients writing 6 shared paths through random nodes;
//! after every 201 the client reads the path on another node, through the
//! native API or the Consul KV API at random. First with no
//! faults, then with a follower killed and restarted every few seconds.
//! This is the report that started the replicated log: on the design before
//! it, the same load gave about ten stale reads in 30 s without any fault.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pika_campaign::Network;
use pika_campaign::cluster::{Cluster, Options};
use pika_replication::dice::Dice;

const CLIENTS: usize = 8;
const PATHS: usize = 6;

#[derive(Default)]
struct Tally {
    acked: usize,
    checked: usize,
    /// Reads refused (no read permission, or a pending entry that did not
    /// commit in time): allowed, but not a check.
    refused: usize,
    stale: Vec<String>,
}

/// Reads `path` on `url`, through the native API or Consul's: the
/// revision of its latest version (Consul's `ModifyIndex`), 0 when it is
/// absent, or `None` when refused.
fn read_revision(
    http: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    consul: bool,
) -> Option<u64> {
    let route = if consul { "v1/kv" } else { "api/v1/file" };
    let response = http.get(format!("{url}/{route}/{path}")).send().ok()?;
    match response.status().as_u16() {
        200 => {
            let body: serde_json::Value = response.json().ok()?;
            match consul {
                true => body[0]["ModifyIndex"].as_u64(),
                false => body["revision"].as_u64(),
            }
        }
        404 => Some(0),
        _ => None,
    }
}

fn client(id: usize, urls: Arc<Mutex<Vec<String>>>, until: Instant, tally: Arc<Mutex<Tally>>) {
    let http = support::client();
    let mut dice = Dice::new(0x5eed ^ id as u64);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let nodes = urls.lock().map(|u| u.clone()).unwrap_or_default();
        let (a, b) = {
            let a = dice.below(nodes.len());
            (a, (a + 1 + dice.below(nodes.len() - 1)) % nodes.len())
        };
        let path = format!("lin/p{}", dice.below(PATHS));
        let (status, body) = support::put(&nodes[a], &path, &format!("{id}.{n}"), None);
        let Some(revision) = body["revision"].as_u64().filter(|_| status == 201) else {
            continue;
        };
        // Every other read goes through the Consul API: same promise.
        let consul = dice.unit() < 0.5;
        let read = read_revision(&http, &nodes[b], &path, consul);
        let Ok(mut t) = tally.lock() else { return };
        t.acked += 1;
        match read {
            None => t.refused += 1,
            Some(seen) => {
                t.checked += 1;
                if seen < revision {
                    let api = if consul {
                        "the Consul API"
                    } else {
                        "the native API"
                    };
                    t.stale.push(format!(
                        "{path}: revision {revision} acknowledged by node {a}, then node {b} \
                         returned revision {seen} through {api}"
                    ));
                }
            }
        }
    }
}

/// Runs the clients for `length`; with `churn`, kills a follower every
/// `churn` and restarts it a second later.
fn phase(cluster: &mut Cluster, length: Duration, churn: Option<Duration>) -> Tally {
    let urls = Arc::new(Mutex::new(
        cluster.nodes.iter().map(|n| n.url.clone()).collect(),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let until = Instant::now() + length;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (urls, tally) = (urls.clone(), tally.clone());
            std::thread::spawn(move || client(id, urls, until, tally))
        })
        .collect();
    if let Some(every) = churn {
        let mut round = 0;
        while Instant::now() + every < until {
            std::thread::sleep(every);
            let leader = cluster.leader(Duration::from_secs(5)).unwrap_or(0);
            let victim = (leader + 1 + round % 2) % 3;
            round += 1;
            cluster.kill(victim);
            std::thread::sleep(Duration::from_secs(1));
            cluster.restart(victim).expect("the follower restarts");
            if let Ok(mut u) = urls.lock() {
                u[victim] = cluster.nodes[victim].url.clone();
            }
        }
    }
    for c in clients {
        c.join().expect("a client thread");
    }
    Arc::try_unwrap(tally)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

#[test]
fn a_read_on_another_node_after_a_201_never_returns_an_older_version() {
    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    let options = Options {
        network: Network::Loopback,
        test_hooks: false,
        env: vec![("PIKA_CLUSTER_SYNC_INTERVAL".into(), "300ms".into())],
        tmpfs_mb: None,
        learners: 0,
    };
    let mut cluster = Cluster::start_with(pika, 160, &[1.0, 1.0, 1.0], options).expect("3 nodes");
    cluster
        .leader(Duration::from_secs(15))
        .expect("a leader elected");

    for (name, churn) in [
        ("no faults", None),
        ("a follower killed every 3 s", Some(Duration::from_secs(3))),
    ] {
        let t = phase(&mut cluster, Duration::from_secs(10), churn);
        eprintln!(
            "{name}: {} writes acknowledged, {} reads checked on another node, {} refused, {} stale",
            t.acked,
            t.checked,
            t.refused,
            t.stale.len()
        );
        assert!(
            t.stale.is_empty(),
            "{name}: reads older than an acknowledged version:\n{}",
            t.stale.join("\n")
        );
        assert!(
            t.checked >= 100,
            "{name}: only {} reads checked of {} acknowledged writes",
            t.checked,
            t.acked
        );
    }
}
