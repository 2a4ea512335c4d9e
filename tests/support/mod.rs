//! Running the `pika` binary in tests: spawn on a free port, read its log.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const PIKA: &str = env!("CARGO_BIN_EXE_pika");
/// The admin token test nodes run with; [`client`] sends it.
pub use pika_campaign::TEST_ADMIN_TOKEN as ADMIN_TOKEN;

pub mod cluster;

/// A pika process on a free loopback port, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(data: &Path, config_file: Option<&Path>) -> Proc {
    spawn_with(data, config_file, &[])
}

/// Like [`spawn`], with extra environment variables applied last.
pub fn spawn_with(data: &Path, config_file: Option<&Path>, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(PIKA);
    cmd.env("PIKA_SERVER_HOST", "127.0.0.1")
        .env("PIKA_SERVER_PORT", "0")
        .env("PIKA_STORAGE_BW_PATH", data)
        .env("PIKA_LOG_LEVEL", "info")
        .env("PIKA_AUTH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("CONFIG_FILE")
        .current_dir(data.parent().unwrap_or(data))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
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
            if let Some(rest) = line.split("listening on ").nth(1) {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(url);
            }
            sink.lock().unwrap().push(line);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("pika did not start: {:?}", log.lock().unwrap());
        });
    Proc { child, url, log }
}

/// A client that sends the admin token.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A UDP port free on every 127.0.1.`host` address given: cluster nodes on
/// different loopback addresses share one cluster port, as they would share
/// it on different machines.
pub fn free_udp_port(hosts: &[u8]) -> u16 {
    let names: Vec<String> = hosts.iter().map(|h| format!("127.0.1.{h}")).collect();
    pika_campaign::cluster::free_udp_port(&names).expect("a UDP port free on every test address")
}

/// One item of a server-sent-event stream as a test reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sse {
    /// An event: its name (empty for the default), id and JSON data.
    Event {
        name: String,
        id: Option<String>,
        data: serde_json::Value,
    },
    /// A `:` comment line (keep-alive).
    Comment(String),
    /// The server closed the stream.
    Closed,
}

/// Opens `url` as an event stream; items arrive on the channel. The reader
/// thread ends when the stream does, or at the first item after the
/// receiver is dropped (keep-alives make that happen within seconds).
pub fn sse(url: &str, headers: &[(&str, &str)]) -> std::sync::mpsc::Receiver<Sse> {
    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .timeout(None)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut request = http.get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().expect("the watch request is answered");
    assert_eq!(
        response.status().as_u16(),
        200,
        "watch {url}: {:?}",
        response.text()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut name, mut id, mut data) = (String::new(), None, String::new());
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { break };
            let item = if let Some(comment) = line.strip_prefix(':') {
                Some(Sse::Comment(comment.trim().to_string()))
            } else if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
                None
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
                None
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
                None
            } else if line.is_empty() && !data.is_empty() {
                let parsed = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                data.clear();
                Some(Sse::Event {
                    name: std::mem::take(&mut name),
                    id: id.take(),
                    data: parsed,
                })
            } else {
                None
            };
            if let Some(item) = item
                && tx.send(item).is_err()
            {
                return;
            }
        }
        let _ = tx.send(Sse::Closed);
    });
    rx
}

/// The next `n` change events from a watch (comments skipped), or what
/// arrived before `limit` ran out.
pub fn next_events(
    rx: &std::sync::mpsc::Receiver<Sse>,
    n: usize,
    limit: Duration,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Sse::Event { name, data, .. }) if name.is_empty() => out.push(data),
            Ok(Sse::Event { name, data, .. }) => panic!("unexpected {name} event: {data}"),
            Ok(Sse::Comment(_)) => {}
            Ok(Sse::Closed) | Err(_) => break,
        }
    }
    out
}

/// Saves `value` as text under `path` through `url`, with an optional
/// request id: the status (0 when the node did not answer) and the body.
pub fn put(
    url: &str,
    path: &str,
    value: &str,
    request_id: Option<&str>,
) -> (u16, serde_json::Value) {
    use base64::Engine as _;
    let mut request = client()
        .post(format!("{url}/api/v1/file/{path}"))
        .timeout(Duration::from_secs(5))
        .json(&serde_json::json!({
            "data": base64::engine::general_purpose::STANDARD.encode(value)
        }));
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    match request.send() {
        Ok(r) => (
            r.status().as_u16(),
            r.json().unwrap_or(serde_json::Value::Null),
        ),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Waits (at most 15 s) until the node at `url` hears a healthy leader,
/// so it holds a read lease: reads, and API token checks, are served.
pub fn wait_until_it_may_read(url: &str) {
    let may_read = (0..150).any(|_| {
        let healthy = client()
            .get(format!("{url}/api/v1/cluster/status"))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .is_ok_and(|s| s["leader_healthy"] == true);
        if !healthy {
            std::thread::sleep(Duration::from_millis(100));
        }
        healthy
    });
    assert!(may_read, "{url} may read within 15 s");
}
