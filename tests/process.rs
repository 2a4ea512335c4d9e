//! The `pika` binary as an operator runs it: config errors exit 2, the seed
//! YAML starts, kill -9 loses no acknowledged write, SIGTERM drains.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

const PIKA: &str = env!("CARGO_BIN_EXE_pika");

/// A pika process on a free loopback port, killed when dropped.
struct Proc {
    child: Child,
    url: String,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(data: &Path, config_file: Option<&Path>) -> Proc {
    let mut cmd = Command::new(PIKA);
    cmd.env("PIKA_SERVER_HOST", "127.0.0.1")
        .env("PIKA_SERVER_PORT", "0")
        .env("PIKA_STORAGE_BW_PATH", data)
        .env("PIKA_LOG_LEVEL", "info")
        .env_remove("CONFIG_FILE")
        .current_dir(data.parent().unwrap_or(data))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(file) = config_file {
        cmd.arg("--config").arg(file);
    }
    let mut child = cmd.spawn().expect("spawn pika");
    let stderr = child.stderr.take().expect("stderr piped");
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("pika did not start: {:?}", log.lock().unwrap());
        });
    Proc {
        child,
        url: format!("http://{addr}"),
        log,
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

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
fn the_seed_yaml_starts_and_says_clustering_is_inactive() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.yaml");
    std::fs::write(
        &file,
        "storage:\n  bw:\n    path: /tmp/pika1111\ncluster:\n  enabled: true\n  dns_addr: pika.local\n  \
         bind_addr: 127.0.1.1\n  replicas: 3\n  security_key: 123456\nserver:\n  port: 8091\n",
    )
    .unwrap();
    // The env keeps the test off the seed's fixed port and /tmp path; the
    // file itself is loaded unchanged.
    let node = spawn(&dir.path().join("data"), Some(&file));
    let status: Value = client()
        .get(format!("{}/api/v1/cluster/status", node.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["role"], "standalone");
    assert_eq!(status["enabled"], true);
    assert_eq!(status["config"]["cluster"]["dns_addr"], "pika.local");
    assert_eq!(status["config"]["cluster"]["security_key"], "********");
    let log = node.log.lock().unwrap().join("\n");
    assert!(
        log.contains("clustering") && log.contains("not built yet"),
        "{log}"
    );
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
    for (path, version, content) in &acked {
        if latest[path.as_str()] - version >= 20 {
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
        let r = http
            .get(format!("{}/api/v1/file/{path}", node.url))
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        assert!(
            v["version"].as_u64().unwrap() >= version,
            "{path}: acked v{version}, found {v}"
        );
    }
    let status: Value = http
        .get(format!("{}/api/v1/cluster/status", node.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
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
