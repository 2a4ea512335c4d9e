//! The `pika` binary as an operator runs it: config errors exit 2, the seed
//! YAML starts, kill -9 loses no acknowledged write, SIGTERM drains.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

mod support;

use support::{PIKA, client, spawn};

#[test]
fn broken_yaml_exits_2_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "server:\n  port: 8091\n  host: [unclosed\nstorage: {}\n",
    )
    .unwrap();
    let out = Command::new(PIKA)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.yaml") && err.contains("line 4"),
        "{err}"
    );

    let out = Command::new(PIKA)
        .env("CONFIG_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(PIKA)
        .env("CONFIG_FILE", &file)
        .env("PIKA_SERVER_PORT", "99999")
        .arg("--config")
        .arg("/nonexistent.yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

#[test]
fn the_seed_yaml_starts_a_cluster_node_and_warns_about_its_short_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.yaml");
    std::fs::write(
        &file,
        "storage:\n  bw:\n    path: /tmp/pika1111\ncluster:\n  enabled: true\n  dns_addr: pika.local\n  \
         bind_addr: 127.0.1.1\n  replicas: 3\n  security_key: 123456\nserver:\n  port: 8091\n",
    )
    .unwrap();
    // The env keeps the test off the seed's fixed ports and /tmp path, and
    // off the network: dns_addr names only this node, so no DNS query leaves.
    let port = support::free_udp_port(&[1]).to_string();
    let node = support::spawn_with(
        &dir.path().join("data"),
        Some(&file),
        &[
            ("PIKA_CLUSTER_DNS_ADDR", "127.0.1.1"),
            ("PIKA_CLUSTER_PORT", &port),
        ],
    );
    let status: Value = client()
        .get(format!("{}/api/v1/cluster/status", node.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["enabled"], true);
    assert_eq!(status["role"], "follower");
    assert_eq!(status["local_addr"], format!("127.0.1.1:{port}"));
    assert_eq!(status["online_nodes"], 1);
    assert_eq!(status["expected_replicas"], 3);
    assert_eq!(status["quorum_nodes_required"], 2);
    assert_eq!(status["has_quorum"], false);
    assert_eq!(status["security_enabled"], true);
    assert_eq!(status["config"]["cluster"]["bind_addr"], "127.0.1.1");
    assert_eq!(status["config"]["cluster"]["security_key"], "********");
    let log = node.log.lock().unwrap().join("\n");
    assert!(log.contains("shorter than 16 bytes"), "{log}");
    assert!(
        !log.contains("123456"),
        "the key leaked into the log:\n{log}"
    );
}

/// Writers hammer the node; it is killed with SIGKILL mid-stream and
/// restarted on the same files. Every write that got a 201 must be there.
#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = spawn(&data, None);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let url = node.url.clone();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let http = client();
            let mut acked: Vec<(String, u64, String)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let path = format!("crash/w{w}/k{}", i % 25);
                let content = format!("writer {w} op {i}");
                let body = json!({ "meta": {"format": "text"}, "data": BASE64.encode(&content) });
                match http
                    .post(format!("{url}/api/v1/file/{path}"))
                    .json(&body)
                    .send()
                {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().unwrap_or(Value::Null);
                        if let Some(version) = v["version"].as_u64() {
                            acked.push((path, version, content));
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break, // the node died under us: this op was never acked
                }
                i += 1;
            }
            acked
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    node.child.kill().expect("SIGKILL");
    let _ = node.child.wait();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<_> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    assert!(
        acked.len() > 20,
        "too few writes before the kill to mean anything: {}",
        acked.len()
    );

    let node = spawn(&data, None);
    let http = client();
    // The last acked version of each path must be readable (history keeps
    // the 20 latest, so check each acked version still retained).
    let mut latest: std::collections::HashMap<&str, u64> = Default::default();
    for (path, version, _) in &acked {
        let e = latest.entry(path.as_str()).or_default();
        *e = (*e).max(*version);
    }
    // History keeps the 20 latest *stored* versions, and a write the kill
    // cut off before its answer may be stored too: count from what is
    // there (a debug node fast enough to write 20 versions of a path in
    // the test's 1.5 s made the count from acked versions fail).
    let get_json = |url: String| -> Value { http.get(url).send().unwrap().json().unwrap() };
    let mut stored: std::collections::HashMap<&str, u64> = Default::default();
    for path in latest.keys() {
        let v = get_json(format!("{}/api/v1/file/{path}", node.url));
        stored.insert(path, v["version"].as_u64().unwrap_or(0));
    }
    for (path, version, content) in &acked {
        if stored[path.as_str()].saturating_sub(*version) >= 20 {
            continue;
        }
        let r = http
            .get(format!("{}/api/v1/data/{path}?version={version}", node.url))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path} v{version} lost after kill -9");
        assert_eq!(r.text().unwrap(), *content, "{path} v{version} corrupted");
    }
    for (path, version) in latest {
        assert!(
            stored[path] >= version,
            "{path}: acked v{version}, found v{}",
            stored[path]
        );
    }
    let status = get_json(format!("{}/api/v1/cluster/status", node.url));
    assert!(status["revision"].as_u64().unwrap() >= acked.len() as u64);
}

#[test]
fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = spawn(&data, None);
    let url = node.url.clone();
    let writer = std::thread::spawn(move || {
        let http = client();
        let mut outcomes = Vec::new();
        for i in 0..2000 {
            let body = json!({ "data": BASE64.encode(format!("{i}")) });
            match http
                .post(format!("{url}/api/v1/file/term/{}", i % 10))
                .json(&body)
                .send()
            {
                Ok(r) => outcomes.push(r.status().as_u16()),
                Err(_) => break,
            }
        }
        outcomes
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = node.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{:?}", node.log.lock().unwrap());
    let outcomes = writer.join().unwrap();
    // Every answered write was a success: none half-failed during shutdown.
    assert!(!outcomes.is_empty());
    assert!(outcomes.iter().all(|&s| s == 201), "{outcomes:?}");
    let acked = outcomes.len() as u64;
    let log = node.log.lock().unwrap().join("\n");
    assert!(log.contains("stopped"), "{log}");
    drop(node);

    let node = spawn(&data, None);
    let status: Value = client()
        .get(format!("{}/api/v1/cluster/status", node.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(status["revision"].as_u64().unwrap() >= acked);
}
