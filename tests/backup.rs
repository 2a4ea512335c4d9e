//! Backup and restore on real nodes: `pika backup` from a follower of a
//! cluster under writes holds exactly the writes up to its revision,
//! `pika restore` builds a data directory whose node leads a new voter
//! set of one with that state, and damaged files are refused.

mod support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::cluster::{Cluster, read};
use support::{ADMIN_TOKEN, PIKA, client, put, spawn_with};

fn pika(args: &[&str]) -> Output {
    Command::new(PIKA)
        .env("PIKA_TOKEN", ADMIN_TOKEN)
        .env("PIKA_LOG_LEVEL", "error")
        .args(args)
        .output()
        .expect("the pika binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_backup_under_writes_restores_as_a_new_cluster_of_one() {
    let c = Cluster::start(&[115, 116, 117]);
    let (leader, _) = c.leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    for n in 0..20 {
        let (status, _) = put(&c.url(leader), &format!("cfg/k{n}"), "v1", None);
        assert_eq!(status, 201);
    }
    // Writers keep going while the backup is taken; each acknowledged
    // write is remembered with its revision.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (c.url(leader), stop.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("cfg/k{}", n % 20);
                let value = format!("w{n}");
                let (status, body) = put(&url, &path, &value, None);
                if status == 201 {
                    acked.push((
                        path,
                        body["version"].as_u64().unwrap(),
                        body["revision"].as_u64().unwrap(),
                        value,
                    ));
                }
                n += 1;
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let out = pika(&["--node", &c.url(follower), "backup", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    let revision: u64 = said
        .split("revision ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the revision in {said:?}"));
    assert!(
        acked.iter().any(|w| w.2 <= revision) && acked.iter().any(|w| w.2 > revision),
        "writes on both sides of the backup's revision {revision}"
    );
    // A token without admin rights may not take one.
    let out = Command::new(PIKA)
        .env("PIKA_TOKEN", "pika_not-a-token")
        .args(["--node", &c.url(follower), "backup"])
        .arg(dir.path().join("refused.backup"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(!dir.path().join("refused.backup").exists());

    // Restore, and run the node on it as a cluster of its own.
    let data = dir.path().join("restored");
    let out = pika(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Under the old cluster's DNS name, port and key: it must neither
    // join the old cluster nor take it over (its epoch is higher than any
    // the old cluster has seen).
    let node = c.spawn_stranger(118, &data);
    let old_ids: Vec<String> = (0..3).map(|i| c.node_id(i)).collect();
    let status = (0..100)
        .find_map(|_| {
            let s: Value = client()
                .get(format!("{}/api/v1/cluster/status", node.url))
                .send()
                .ok()?
                .json()
                .ok()?;
            if s["is_leader"] == true {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
            None
        })
        .expect("the restored node leads");
    assert_eq!(status["voters"].as_array().map(Vec::len), Some(1));
    let restored_cluster = status["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let old_cluster = c.status(leader)["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !restored_cluster.is_empty() && !old_cluster.is_empty() && restored_cluster != old_cluster,
        "a restore starts a new cluster: {restored_cluster:?} vs {old_cluster:?}"
    );
    // A few leases later: the old cluster still has its leader, its three
    // voters and none of the restored node's writes, and the other way round.
    std::thread::sleep(Duration::from_secs(3));
    let (still, _) = c.leader(Duration::from_secs(10));
    assert_eq!(still, leader, "the old cluster keeps its leader");
    for i in 0..3 {
        let mut v: Vec<String> = c.status(i)["voters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        let mut want = old_ids.clone();
        want.sort();
        assert_eq!(v, want, "node {i} keeps the old voter set");
    }
    let (code, _) = put(&node.url, "cfg/only-restored", "r", None);
    assert_eq!(code, 201);
    let (code, _) = put(&c.url(leader), "cfg/only-old", "o", None);
    assert_eq!(code, 201);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(&c.url(follower), "cfg/only-restored"), None);
    assert_eq!(read(&node.url, "cfg/only-old"), None);
    // Every acknowledged write at or below the revision is there at its
    // version; none above it is.
    for (path, version, rev, value) in &acked {
        let got = client()
            .get(format!("{}/api/v1/file/{path}?version={version}", node.url))
            .send()
            .unwrap();
        if *rev <= revision {
            assert_eq!(got.status().as_u16(), 200, "{path} v{version} (r{rev})");
            assert_eq!(
                read(&node.url, &format!("{path}?version={version}")).as_deref(),
                Some(value.as_str())
            );
        } else {
            assert_eq!(
                got.status().as_u16(),
                404,
                "{path} v{version} (r{rev}) is after the backup"
            );
        }
    }
    let (status, _) = put(&node.url, "cfg/after-restore", "yes", None);
    assert_eq!(status, 201, "the restored cluster takes writes");

    // Quiet now: a second backup of the source has the source's root.
    let second = dir.path().join("quiet.backup");
    let out = pika(&["--node", &c.url(leader), "backup", second.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let source: Value = client()
        .get(format!("{}/api/v1/cluster/status", c.url(leader)))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let data2 = dir.path().join("restored-quiet");
    let out = pika(&[
        "restore",
        second.to_str().unwrap(),
        "--data-dir",
        data2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let copy = spawn_with(&data2, None, &[]);
    let copy_status: Value = client()
        .get(format!("{}/api/v1/cluster/status", copy.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(copy_status["revision"], source["revision"]);
    assert_eq!(
        copy_status["merkle_root"], source["merkle_root"],
        "the same Merkle root"
    );
}

#[test]
fn damaged_backups_and_bad_targets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::spawn(&dir.path().join("data"), None);
    for n in 0..10 {
        assert_eq!(put(&node.url, &format!("a/k{n}"), "v", None).0, 201);
    }
    let file = dir.path().join("good.backup");
    let out = pika(&["--node", &node.url, "backup", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let good = std::fs::read(&file).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let cases = [
        ("flipped", flipped),
        ("truncated", good[..good.len() - 10].to_vec()),
        ("not a backup", b"hello".to_vec()),
    ];
    for (what, bytes) in cases {
        let bad = dir.path().join(format!("{what}.backup"));
        std::fs::write(&bad, bytes).unwrap();
        let target = dir.path().join(format!("{what}-dir"));
        let out = pika(&[
            "restore",
            bad.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(8), "{what}: {}", text(&out));
        assert!(!target.exists(), "{what}: nothing is written");
    }
    // Into the running node's own (non-empty) directory: refused.
    let out = pika(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
}

/// The revision a backup response names (`pika-r{revision}.backup`). A
/// 503 (a follower not readable yet just after an election, or a pending
/// wait past `forward_timeout` on a loaded machine) is retried, as its
/// `Retry-After` asks: what is checked is the revision of a backup served.
fn backup_revision(url: &str) -> u64 {
    let mut response = None;
    for _ in 0..50 {
        let r = client()
            .get(format!("{url}/api/v1/backup"))
            .send()
            .expect("the backup request is answered");
        if r.status().as_u16() != 503 {
            response = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let response = response.expect("a backup served within 5 s");
    assert_eq!(response.status().as_u16(), 200);
    let disposition = response
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    disposition
        .split("pika-r")
        .nth(1)
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a revision in {disposition:?}"))
}

#[test]
fn a_backup_taken_right_after_an_acknowledged_write_holds_it() {
    // Committed entries are applied up to 20 ms after their answer; a
    // backup is a read, so it waits for what is pending when it starts,
    // on the leader as on a follower.
    let c = Cluster::start(&[121, 122, 123]);
    let (leader, _) = c.leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    for n in 0..10 {
        let (status, body) = put(&c.url(leader), &format!("cfg/b{n}"), "v1", None);
        assert_eq!(status, 201, "{body}");
        let written = body["revision"].as_u64().expect("a revision");
        let node = if n % 2 == 0 { leader } else { follower };
        let backed_up = backup_revision(&c.url(node));
        assert!(
            backed_up >= written,
            "write {n}: a backup from node {node} right after the write at revision \
             {written} was cut at {backed_up}"
        );
    }
}
