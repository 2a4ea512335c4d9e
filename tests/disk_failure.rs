//! A full disk on one node of three (DESIGN.md, "Failures a node must
//! survive"), on real processes whose data directories are each a small
//! tmpfs: mounting needs root (CI runs as root); elsewhere these tests say
//! so and pass without running.
//!
//! While a node's disk is full the other two go on acknowledging writes,
//! no request waits past `forward_timeout` + 1 s, and the full node's
//! `/readyz` answers 503. Once space is freed the node reopens its log and
//! state by itself (no restart), catches up, is back in the replication
//! set, and holds every acknowledged write.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, FORWARD_TIMEOUT, INTERVAL, TIMEOUT, read, wait_until};
use support::put;

/// Each node's tmpfs.
const DISK_MB: u64 = 256;
/// Values this big fill what is left of a full node's disk in a few writes.
const VALUE_BYTES: usize = 48 << 10;
/// Room left beside the filler.
const LEAVE_BYTES: u64 = 512 << 10;

/// Fills the filesystem holding `dir`, leaving `LEAVE_BYTES` free.
fn fill(dir: &Path) -> PathBuf {
    pika_campaign::cluster::fill_filesystem(dir, LEAVE_BYTES).expect("fill the disk")
}

fn value(n: usize) -> String {
    format!("{n}:{}", "x".repeat(VALUE_BYTES))
}

/// What one run of writes saw.
struct Load {
    /// (path, value) of every acknowledged write.
    acked: Vec<(String, String)>,
    /// The longest time between two acknowledgements.
    longest_gap: Duration,
    /// The longest a single request took.
    slowest: Duration,
    /// When the full node's /readyz first answered 503.
    refused_at: Option<Instant>,
    /// Acknowledgements after that.
    acked_after: usize,
}

/// Writes `VALUE_BYTES` values one after another through `via` (in turn)
/// for `run`, watching `full`'s /readyz after each write.
fn write_load(c: &Cluster, via: &[usize], full: usize, run: Duration) -> Load {
    let mut load = Load {
        acked: Vec::new(),
        longest_gap: Duration::ZERO,
        slowest: Duration::ZERO,
        refused_at: None,
        acked_after: 0,
    };
    let start = Instant::now();
    let mut last_ack = start;
    let mut n = 0;
    while start.elapsed() < run {
        let path = format!("disk/{n}");
        let v = value(n);
        let asked = Instant::now();
        let (code, body) = put(&c.url(via[n % via.len()]), &path, &v, None);
        load.slowest = load.slowest.max(asked.elapsed());
        n += 1;
        if code == 201 {
            load.longest_gap = load.longest_gap.max(last_ack.elapsed());
            last_ack = Instant::now();
            load.acked.push((path, v));
            if load.refused_at.is_some() {
                load.acked_after += 1;
            }
        } else {
            assert!(
                code == 503 || code == 0,
                "a write got {code} (503 while no leader may commit): {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if load.refused_at.is_none() && c.readyz(full) == 503 {
            load.refused_at = Some(Instant::now());
        }
    }
    load.longest_gap = load.longest_gap.max(last_ack.elapsed());
    load
}

/// `full` is back: ready, in the leader's replication set, and holding
/// every acknowledged write (read from it, linearizably).
fn recovered(c: &Cluster, full: usize, acked: &[(String, String)]) {
    let id = c.node_id(full);
    let back = wait_until(Duration::from_secs(20), || {
        let leader = (0..3).find(|i| c.status(*i)["is_leader"] == true)?;
        // (It may also have been elected since.)
        let in_set = leader == full || c.replication_set(leader)?.contains(&id);
        (in_set && c.readyz(full) == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "node {full} is back in the set, ready, without a restart: {}",
        c.status(full)
    );
    for (path, v) in acked {
        assert_eq!(
            read(&c.url(full), path).as_deref(),
            Some(v.as_str()),
            "{path} on the node whose disk was full"
        );
    }
}

fn check_load(load: &Load, who: &str) {
    eprintln!(
        "{who}'s disk full: {} writes acknowledged ({} after its /readyz turned 503), \
         longest gap between acks {:?}, slowest request {:?}",
        load.acked.len(),
        load.acked_after,
        load.longest_gap,
        load.slowest
    );
    assert!(
        load.refused_at.is_some(),
        "the full node's /readyz turned 503"
    );
    assert!(
        load.acked_after >= 5,
        "the other two go on acknowledging writes"
    );
    assert!(
        load.longest_gap <= TIMEOUT + INTERVAL * 2,
        "writes are acknowledged again within L + 2 heartbeat intervals of the error: {:?}",
        load.longest_gap
    );
    assert!(
        load.slowest <= FORWARD_TIMEOUT + Duration::from_secs(1),
        "no request waits past forward_timeout + 1 s: {:?}",
        load.slowest
    );
}

#[test]
fn a_follower_whose_disk_fills_leaves_the_set_and_comes_back_when_space_is_freed() {
    let Some(c) = Cluster::start_on_tmpfs(&[61, 62, 63], DISK_MB, &[]) else {
        return;
    };
    let (leader, _) = c.leader(Duration::from_secs(15));
    let full = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let filler = fill(&c.data_dir(full));
    let load = write_load(&c, &[leader, other], full, Duration::from_secs(6));
    check_load(&load, "a follower");
    let status = c.status(full);
    assert!(
        status["disk_error"].is_string(),
        "status says why: {status}"
    );

    std::fs::remove_file(filler).expect("free the space");
    recovered(&c, full, &load.acked);
}

#[test]
fn a_leader_whose_disk_fills_steps_down_and_comes_back_when_space_is_freed() {
    let Some(c) = Cluster::start_on_tmpfs(&[64, 65, 66], DISK_MB, &[]) else {
        return;
    };
    let (full, epoch) = c.leader(Duration::from_secs(15));
    let filler = fill(&c.data_dir(full));
    // Writes go through the other two: the full node's answers are 503
    // once it has stepped down, until a new leader is elected.
    let via = [(full + 1) % 3, (full + 2) % 3];
    let load = write_load(&c, &via, full, Duration::from_secs(8));
    check_load(&load, "the leader");
    let took_over = wait_until(Duration::from_secs(5), || {
        via.iter().find(|i| {
            let s = c.status(**i);
            s["is_leader"] == true && s["epoch"].as_u64().is_some_and(|e| e > epoch)
        })
    });
    assert!(
        took_over.is_some(),
        "one of the other two leads a later epoch"
    );

    std::fs::remove_file(filler).expect("free the space");
    recovered(&c, full, &load.acked);
}
