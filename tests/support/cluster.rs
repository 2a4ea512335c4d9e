//! A cluster of real `pika` processes on 127.0.1.x for tests: heartbeat
//! 200 ms, timeout (lease) 1 s, forward timeout 2 s, the test-only fault
//! endpoint open.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, client, free_udp_port, spawn_with};

pub const INTERVAL: Duration = Duration::from_millis(200);
pub const TIMEOUT: Duration = Duration::from_secs(1);
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Cluster {
    pub dir: tempfile::TempDir,
    hosts: Vec<u8>,
    port: u16,
    pub nodes: Vec<Option<Proc>>,
    /// Environment every node of this test gets on top of the usual.
    env: Vec<(&'static str, &'static str)>,
    /// Data directories on a tmpfs of their own, unmounted at drop.
    mounts: Vec<std::path::PathBuf>,
}

impl Cluster {
    pub fn start(hosts: &[u8]) -> Cluster {
        Self::start_with_env(hosts, &[])
    }

    pub fn start_with_env(hosts: &[u8], env: &[(&'static str, &'static str)]) -> Cluster {
        let c = Self::unstarted(hosts, env);
        c.started()
    }

    /// Every node's data directory on a tmpfs of `mb` MiB, so that a test
    /// can fill one node's disk. `None` (after saying why) where mounting
    /// is not allowed: it needs root.
    pub fn start_on_tmpfs(
        hosts: &[u8],
        mb: u64,
        env: &[(&'static str, &'static str)],
    ) -> Option<Cluster> {
        let mut c = Self::unstarted(hosts, env);
        for i in 0..hosts.len() {
            let dir = c.data_dir(i);
            if !pika_campaign::cluster::mount_tmpfs(&dir, mb) {
                eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
                return None;
            }
            c.mounts.push(dir);
        }
        Some(c.started())
    }

    fn unstarted(hosts: &[u8], env: &[(&'static str, &'static str)]) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            hosts: hosts.to_vec(),
            port: free_udp_port(hosts),
            nodes: Vec::new(),
            env: env.to_vec(),
            mounts: Vec::new(),
        }
    }

    pub fn data_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn started(mut self) -> Cluster {
        let c = &mut self;
        for i in 0..c.hosts.len() {
            let node = c.spawn(i);
            c.nodes.push(Some(node));
        }
        self
    }

    pub fn spawn(&self, i: usize) -> Proc {
        self.spawn_with_env(i, &[])
    }

    /// Starts a node that is not one of the cluster's, on 127.0.1.`host`
    /// with `data` as its data directory, configured like the cluster's
    /// nodes (the same port and key) and resolving their addresses and its
    /// own: as if it were deployed under the cluster's DNS name.
    pub fn spawn_stranger(&self, host: u8, data: &std::path::Path) -> Proc {
        let mut hosts = self.hosts.clone();
        hosts.push(host);
        self.spawn_node(host, &hosts, data, &[])
    }

    /// Starts node `i` with `extra` on top of the cluster's environment.
    pub fn spawn_with_env(&self, i: usize, extra: &[(&str, &str)]) -> Proc {
        let mut with_faults = vec![("PIKA_TEST_FAULTS", "1")];
        with_faults.extend(extra.iter().copied());
        self.spawn_node(self.hosts[i], &self.hosts, &self.data_dir(i), &with_faults)
    }

    /// A node on 127.0.1.`host` resolving `dns_hosts`, with the cluster's
    /// port, key and timings, the cluster's environment, then `extra`.
    fn spawn_node(
        &self,
        host: u8,
        dns_hosts: &[u8],
        data: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Proc {
        let addr = format!("127.0.1.{host}");
        let dns = dns_hosts
            .iter()
            .map(|h| format!("127.0.1.{h}"))
            .collect::<Vec<_>>()
            .join(",");
        let port = self.port.to_string();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("example/cluster/1.yaml");
        let mut env: Vec<(&str, &str)> = vec![
            ("PIKA_SERVER_HOST", &addr),
            ("PIKA_CLUSTER_BIND_ADDR", &addr),
            ("PIKA_CLUSTER_DNS_ADDR", &dns),
            ("PIKA_CLUSTER_PORT", &port),
            ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "200ms"),
            ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "1s"),
            ("PIKA_CLUSTER_FORWARD_TIMEOUT", "2s"),
        ];
        env.extend(self.env.iter().copied());
        env.extend(extra.iter().copied());
        spawn_with(data, Some(&example), &env)
    }

    /// The node ids in node `i`'s replication set (it leads), if it answers.
    pub fn replication_set(&self, i: usize) -> Option<Vec<String>> {
        let set = self.status(i)["replication_set"].as_array()?.clone();
        Some(
            set.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Node `i`'s `/readyz` status (0 when it does not answer).
    pub fn readyz(&self, i: usize) -> u16 {
        client()
            .get(format!("{}/readyz", self.url(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .map_or(0, |r| r.status().as_u16())
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .map(|n| n.url.clone())
            .unwrap_or_default()
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let node = self.spawn(i);
        self.nodes[i] = Some(node);
    }

    /// Kills node `i`, empties its data directory and starts it again, as
    /// after a lost disk; returns the node id it comes back under (new),
    /// once it answers its status (10 s at most; empty if it never does).
    pub fn wipe(&mut self, i: usize) -> String {
        self.kill(i);
        std::fs::remove_dir_all(self.data_dir(i)).expect("wipe the data directory");
        self.restart(i);
        wait_until(Duration::from_secs(10), || {
            Some(self.node_id(i)).filter(|id| !id.is_empty())
        })
        .unwrap_or_default()
    }

    /// Restarts node `i` (killing it first if it runs) with `extra` on top
    /// of the cluster's environment.
    pub fn restart_with_env(&mut self, i: usize, extra: &[(&str, &str)]) {
        self.kill(i);
        let node = self.spawn_with_env(i, extra);
        self.nodes[i] = Some(node);
    }

    /// Kills node `i` and starts it again on its data directory at
    /// 127.0.1.`host`, as a pod back with its volume and a new IP. It
    /// resolves the new address with the old ones; the others resolve what
    /// they did, so they learn the new address by gossip.
    pub fn relocate(&mut self, i: usize, host: u8) {
        self.kill(i);
        let mut dns = self.hosts.clone();
        dns.push(host);
        self.hosts[i] = host;
        let node = self.spawn_node(host, &dns, &self.data_dir(i), &[("PIKA_TEST_FAULTS", "1")]);
        self.nodes[i] = Some(node);
    }

    pub fn status(&self, i: usize) -> Value {
        client()
            .get(format!("{}/api/v1/cluster/status", self.url(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    }

    /// The single live node that says it leads, once every live node
    /// agrees on it and on the epoch.
    pub fn leader(&self, limit: Duration) -> (usize, u64) {
        let found = wait_until(limit, || {
            let statuses: Vec<(usize, Value)> = self
                .live()
                .into_iter()
                .map(|i| (i, self.status(i)))
                .collect();
            pika_campaign::cluster::agreed_leader(&statuses)
        });
        found.expect("one leader that every live node agrees on")
    }

    pub fn fault(&self, i: usize, body: Value) {
        let r = client()
            .post(format!("{}/debug/faults", self.url(i)))
            .json(&body)
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Node `i`'s /metrics page ("" when it does not answer).
    pub fn metrics(&self, i: usize) -> String {
        client()
            .get(format!("{}/metrics", self.url(i)))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    /// A counter's value from node `i`'s /metrics (0 when absent).
    pub fn counter(&self, i: usize, name: &str) -> f64 {
        self.metrics(i)
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn node_id(&self, i: usize) -> String {
        self.status(i)["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test shows what each node logged last.
        if std::thread::panicking() {
            for (i, node) in self.nodes.iter().enumerate() {
                let Some(node) = node else { continue };
                let log = node.log.lock().unwrap_or_else(|e| e.into_inner());
                let tail = &log[log.len().saturating_sub(60)..];
                eprintln!(
                    "--- node {i} ({}), last lines:\n{}",
                    node.url,
                    tail.join("\n")
                );
            }
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for dir in &self.mounts {
            let _ = std::process::Command::new("umount").arg(dir).status();
        }
    }
}

pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// POSTs `value` to `path`; returns the status code and the body.
/// Reads `path` from one node: `Some` on 200, `None` on 404. A 503 (no read
/// lease yet, e.g. just after a leader change or a sync) is retried for a
/// few seconds: it is the node refusing to guess, not an answer.
pub fn read(url: &str, path: &str) -> Option<String> {
    let start = Instant::now();
    loop {
        let r = client()
            .get(format!("{url}/api/v1/data/{path}"))
            .timeout(Duration::from_secs(2))
            .send();
        match r {
            Ok(r) if r.status() == 200 => return Some(r.text().unwrap_or_default()),
            Ok(r) if r.status() == 404 => return None,
            other if start.elapsed() > Duration::from_secs(5) => {
                panic!("no answer for {path} from {url}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
