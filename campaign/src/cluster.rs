//! Real `pika` processes for a campaign round, on 127.0.1.x or each in its
//! own network namespace: start, kill -9, pause, restart, partition, and the
//! test-only fault endpoint.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::netns::NamespaceLab;

/// Where a cluster's nodes live, and so what a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Namespaces when they can be built here (root, iproute2, netns
    /// support), loopback otherwise.
    Auto,
    /// 127.0.1.x; partitions go through pika's transport fault layer.
    Loopback,
    /// A network namespace per node ([`NamespaceLab`]); partitions are
    /// blackhole routes. Fails when namespaces can't be built.
    Namespaces,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        match s {
            "auto" => Ok(Network::Auto),
            "loopback" => Ok(Network::Loopback),
            "netns" => Ok(Network::Namespaces),
            other => Err(format!(
                "unknown network {other:?}: expected auto, loopback or netns"
            )),
        }
    }
}

/// How [`Cluster::start_with`] runs its nodes.
#[derive(Debug, Clone)]
pub struct Options {
    pub network: Network,
    /// `PIKA_TEST_FAULTS=1` and the per-node clock rate: what campaigns
    /// need, and what benchmarks leave out so they measure the product.
    pub test_hooks: bool,
    /// Extra `PIKA_*` variables, applied after the harness's own.
    pub env: Vec<(String, String)>,
    /// Each node's data directory on a tmpfs of this many MiB, so that a
    /// round can fill one node's disk. Mounting needs root; without it the
    /// directories stay where they are (said once) and
    /// [`Cluster::fill_disk`] fills nothing.
    pub tmpfs_mb: Option<u64>,
    /// The last this many nodes start only once the others elected a
    /// leader, one at a time, each once it reports itself a learner (a
    /// StatefulSet scaled past `replicas`; give `PIKA_CLUSTER_REPLICAS` in
    /// `env`).
    pub learners: usize,
}

/// Mounts a tmpfs of `mb` MiB on `dir` (created if missing). False where
/// that is not allowed (it needs root).
pub fn mount_tmpfs(dir: &Path, mb: u64) -> bool {
    std::fs::create_dir_all(dir).is_ok()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Fills the filesystem holding `dir` with one file, leaving `leave` bytes
/// free; removing the returned file frees the space again.
pub fn fill_filesystem(dir: &Path, leave: u64) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![0xa5u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    // The last write may have been partial: measure.
    let len = file.metadata()?.len();
    file.set_len(len.saturating_sub(leave))?;
    file.sync_all()?;
    Ok(path)
}

pub struct Node {
    pub host: String,
    child: Option<Child>,
    pub url: String,
    pub node_id: String,
    clock_rate: f64,
}

pub struct Cluster {
    pika: PathBuf,
    dir: tempfile::TempDir,
    /// QUIC port, the same on every node.
    port: u16,
    /// HTTP port, the same on every node and kept across restarts, so a
    /// client's URL for a node stays good after the node comes back.
    http_port: u16,
    pub nodes: Vec<Node>,
    http: reqwest::blocking::Client,
    /// Declared after `nodes`' processes are killed (in `Drop`), so the
    /// namespaces go away empty.
    lab: Option<NamespaceLab>,
    /// Cuts made through the fault layer when there is no lab: (from, to).
    fault_cuts: BTreeSet<(usize, usize)>,
    test_hooks: bool,
    env: Vec<(String, String)>,
    /// Data directories on a tmpfs of their own, unmounted at drop.
    mounts: Vec<PathBuf>,
    /// Lines any node logged saying its Merkle root differed from the
    /// leader's at the same revision ([`MISMATCH_LINE`]).
    mismatches: Arc<AtomicU64>,
    /// Snapshots any node installed ([`INSTALLED_LINE`]).
    installs: Arc<AtomicU64>,
}

/// What a follower logs when a verification finds its state differs from
/// the leader's at the same revision. No fault a campaign injects changes a
/// state behind the protocol's back, so any such line is a bug.
pub const MISMATCH_LINE: &str = "this node's state differs from the leader's";

/// What a node logs once a snapshot session's install is written.
pub const INSTALLED_LINE: &str = "snapshot installed";

/// The one node of `statuses` (node index, `/api/v1/cluster/status` body)
/// that says it leads, with the epoch, when every node reports that epoch.
pub fn agreed_leader(statuses: &[(usize, Value)]) -> Option<(usize, u64)> {
    let leaders: Vec<usize> = statuses
        .iter()
        .filter(|(_, s)| s["is_leader"] == true)
        .map(|(i, _)| *i)
        .collect();
    let epoch = &statuses.first()?.1["epoch"];
    (leaders.len() == 1 && statuses.iter().all(|(_, s)| s["epoch"] == *epoch))
        .then(|| (leaders[0], epoch.as_u64().unwrap_or(0)))
}

/// Waits for a spawned `pika` (stderr piped) to log its HTTP address.
pub fn wait_for_listen(child: &mut Child) -> anyhow::Result<String> {
    let nothing = || Arc::new(AtomicU64::new(0));
    wait_for_listen_counting(child, nothing(), nothing())
}

/// Like [`wait_for_listen`], and counts the node's [`MISMATCH_LINE`]s in
/// `mismatches` and [`INSTALLED_LINE`]s in `installs` for as long as it
/// runs.
fn wait_for_listen_counting(
    child: &mut Child,
    mismatches: Arc<AtomicU64>,
    installs: Arc<AtomicU64>,
) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("stderr is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(MISMATCH_LINE) {
                mismatches.fetch_add(1, Ordering::Relaxed);
            }
            if line.contains(INSTALLED_LINE) {
                installs.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .context("pika did not start")?;
    Ok(format!("http://{addr}"))
}

/// A port number `bind` accepts on every host: the first host picks one,
/// the others must take the same.
fn free_port(
    hosts: &[String],
    kind: &str,
    bind: impl Fn(&str, u16) -> std::io::Result<u16>,
) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = bind(&hosts[0], 0)?;
        if hosts.iter().all(|h| bind(h, port).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no {kind} port free on all of {hosts:?}")
}

pub fn free_udp_port(hosts: &[String]) -> anyhow::Result<u16> {
    free_port(hosts, "UDP", |host, port| {
        std::net::UdpSocket::bind((host, port))?
            .local_addr()
            .map(|a| a.port())
    })
}

fn free_tcp_port(hosts: &[String]) -> anyhow::Result<u16> {
    free_port(hosts, "TCP", |host, port| {
        std::net::TcpListener::bind((host, port))?
            .local_addr()
            .map(|a| a.port())
    })
}

/// A loopback node's other address: 127.0.1.x and 127.0.3.x swap.
fn loopback_elsewhere(host: &str) -> String {
    match host.strip_prefix("127.0.1.") {
        Some(last) => format!("127.0.3.{last}"),
        None => host.replacen("127.0.3.", "127.0.1.", 1),
    }
}

/// The lab for `network`, or `None` for loopback. `Auto` says once per
/// process why it fell back.
fn lab_for(network: Network, base: u8, nodes: usize) -> anyhow::Result<Option<NamespaceLab>> {
    static FELL_BACK: std::sync::Once = std::sync::Once::new();
    match network {
        Network::Loopback => Ok(None),
        Network::Namespaces => NamespaceLab::create(base, nodes)
            .map(Some)
            .context("building network namespaces"),
        Network::Auto => match NamespaceLab::create(base, nodes) {
            Ok(lab) => Ok(Some(lab)),
            Err(e) => {
                FELL_BACK.call_once(|| {
                    eprintln!(
                        "campaign: network namespaces unavailable ({e:#}); nodes run on 127.0.1.x and partitions use the transport fault layer"
                    );
                });
                Ok(None)
            }
        },
    }
}

impl Cluster {
    /// Starts `rates.len()` nodes, node i with its protocol clock running
    /// at `rates[i]`: on 127.0.1.`base`.. or in namespaces with addresses
    /// 10.213.`base`.1.. (see [`Network`]).
    pub fn start(
        pika: &Path,
        base: u8,
        rates: &[f64],
        network: Network,
    ) -> anyhow::Result<Cluster> {
        let options = Options {
            network,
            test_hooks: true,
            env: Vec::new(),
            tmpfs_mb: None,
            learners: 0,
        };
        Cluster::start_with(pika, base, rates, options)
    }

    /// [`Cluster::start`] with every option.
    pub fn start_with(
        pika: &Path,
        base: u8,
        rates: &[f64],
        options: Options,
    ) -> anyhow::Result<Cluster> {
        let lab = lab_for(options.network, base, rates.len())?;
        let hosts: Vec<String> = match &lab {
            Some(lab) => (0..rates.len()).map(|i| lab.host(i)).collect(),
            None => (0..rates.len())
                .map(|i| format!("127.0.1.{}", base as usize + i))
                .collect(),
        };
        // Each namespace has its own port space, so any fixed port is free.
        // On loopback the ports must also be free where nodes move to.
        let (port, http_port) = match &lab {
            Some(_) => (7946, 8080),
            None => {
                let everywhere: Vec<String> = hosts
                    .iter()
                    .flat_map(|h| [h.clone(), loopback_elsewhere(h)])
                    .collect();
                (free_udp_port(&everywhere)?, free_tcp_port(&everywhere)?)
            }
        };
        let mut cluster = Cluster {
            pika: pika.to_path_buf(),
            dir: tempfile::tempdir()?,
            port,
            http_port,
            lab,
            fault_cuts: BTreeSet::new(),
            test_hooks: options.test_hooks,
            env: options.env,
            mounts: Vec::new(),
            mismatches: Arc::new(AtomicU64::new(0)),
            installs: Arc::new(AtomicU64::new(0)),
            nodes: hosts
                .into_iter()
                .zip(rates)
                .map(|(host, rate)| Node {
                    host,
                    child: None,
                    url: String::new(),
                    node_id: String::new(),
                    clock_rate: *rate,
                })
                .collect(),
            http: reqwest::blocking::Client::builder()
                .default_headers(crate::admin_headers())
                .timeout(Duration::from_secs(3))
                .build()?,
        };
        if let Some(mb) = options.tmpfs_mb {
            for i in 0..cluster.nodes.len() {
                let dir = cluster.data_dir(i);
                if !mount_tmpfs(&dir, mb) {
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        eprintln!("campaign: cannot mount a tmpfs (needs root): data directories stay on disk and DiskFull rounds fill nothing");
                    });
                    break;
                }
                cluster.mounts.push(dir);
            }
        }
        let voters = cluster.nodes.len() - options.learners.min(cluster.nodes.len());
        for i in 0..voters {
            cluster.spawn(i)?;
        }
        if voters < cluster.nodes.len() {
            cluster
                .leader(Duration::from_secs(20))
                .context("no leader among the voters")?;
            for i in voters..cluster.nodes.len() {
                cluster.spawn(i)?;
                let start = Instant::now();
                while cluster.status(i)["voter"] != false {
                    anyhow::ensure!(
                        start.elapsed() < Duration::from_secs(20),
                        "node {i} did not join as a learner"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        for i in 0..cluster.nodes.len() {
            cluster.nodes[i].node_id = cluster.node_id(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let dns = self
            .nodes
            .iter()
            .map(|n| n.host.clone())
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[i];
        let mut command = match &self.lab {
            Some(lab) => lab.command(i, &self.pika),
            None => Command::new(&self.pika),
        };
        command
            .env_remove("CONFIG_FILE")
            .env("PIKA_SERVER_HOST", &node.host)
            .env("PIKA_SERVER_PORT", self.http_port.to_string())
            .env("PIKA_STORAGE_BW_PATH", self.data_dir(i))
            .env(
                "PIKA_LOG_LEVEL",
                "warn,pika::node=info,pika_replication::replica::snapshot=info",
            )
            .env("PIKA_CLUSTER_ENABLED", "true")
            .env("PIKA_AUTH_ADMIN_TOKEN", crate::TEST_ADMIN_TOKEN)
            .env("PIKA_CLUSTER_BIND_ADDR", &node.host)
            .env("PIKA_CLUSTER_DNS_ADDR", dns)
            .env("PIKA_CLUSTER_PORT", self.port.to_string())
            .env("PIKA_CLUSTER_REPLICAS", self.nodes.len().to_string())
            .env(
                "PIKA_CLUSTER_SECURITY_KEY",
                "campaign key, 32 bytes long.....",
            )
            .env("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "200ms")
            .env("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "1s")
            .env("PIKA_CLUSTER_FORWARD_TIMEOUT", "2s")
            .env("PIKA_CLUSTER_SYNC_INTERVAL", "500ms");
        if self.test_hooks {
            command
                .env("PIKA_TEST_FAULTS", "1")
                .env("PIKA_TEST_CLOCK_RATE", node.clock_rate.to_string());
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.pika.display()))?;
        match wait_for_listen_counting(&mut child, self.mismatches.clone(), self.installs.clone()) {
            Ok(url) => self.nodes[i].url = url,
            Err(e) => {
                // Not ours to keep: a node that never said it listens is
                // killed here, since Drop only sees the children it holds.
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// How many times a node logged that its state differed from the
    /// leader's at the same revision, since the cluster started.
    pub fn verification_mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// How many snapshots the nodes installed since the cluster started.
    pub fn snapshots_installed(&self) -> u64 {
        self.installs.load(Ordering::Relaxed)
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// Fills node `i`'s disk to the last byte: the filler to remove, or
    /// `None` when the data directories are not on small disks of their
    /// own (see [`Options::tmpfs_mb`]).
    pub fn fill_disk(&self, i: usize) -> anyhow::Result<Option<PathBuf>> {
        let dir = self.data_dir(i);
        if !self.mounts.contains(&dir) {
            return Ok(None);
        }
        let filler =
            fill_filesystem(&dir, 0).with_context(|| format!("filling {}", dir.display()))?;
        Ok(Some(filler))
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i`, which must be down, on its data directory at its
    /// other address (10.213.`base`.`i + 101` in namespaces, 127.0.3.x on
    /// loopback; a second move goes back). It resolves every node's
    /// current address; the others keep resolving what they did.
    pub fn relocate(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_up(i), "node {i} moves only while it is down");
        self.nodes[i].host = match &mut self.lab {
            Some(lab) => lab.relocate(i)?,
            None => loopback_elsewhere(&self.nodes[i].host),
        };
        self.spawn(i)
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if !self.is_up(i) {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// SIGSTOP (`pause = true`) or SIGCONT.
    pub fn pause(&self, i: usize, pause: bool) -> anyhow::Result<()> {
        let Some(child) = &self.nodes[i].child else {
            return Ok(());
        };
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    /// Node `i`'s `/api/v1/cluster/status`, or `Null` when it is down or
    /// does not answer (callers poll).
    pub fn status(&self, i: usize) -> Value {
        self.try_status(i).unwrap_or(Value::Null)
    }

    fn try_status(&self, i: usize) -> anyhow::Result<Value> {
        anyhow::ensure!(self.is_up(i), "node {i} is not running");
        let url = format!("{}/api/v1/cluster/status", self.nodes[i].url);
        let response = self
            .http
            .get(&url)
            .send()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
        response
            .json()
            .with_context(|| format!("GET {url}: the body is not JSON"))
    }

    /// Node `i`'s id, as its status reports it. Cuts and faults name nodes
    /// by id: an empty one would block nothing, so a node that gives none
    /// within a few seconds is an error.
    fn node_id(&self, i: usize) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let why = match self.try_status(i) {
                Ok(status) => match status["node_id"].as_str() {
                    Some(id) if !id.is_empty() => return Ok(id.to_string()),
                    _ => format!("its status has no node id: {status}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() >= Duration::from_secs(10) {
                bail!("node {i}'s id: {why}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets node `i`'s replica faults (see `/debug/faults`); `{}` heals.
    /// A fault that is not set is an error: a round that goes on without
    /// it tests nothing it claims to. Not retried: `pause_ms` applies
    /// once per request.
    pub fn fault(&self, i: usize, body: Value) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.is_up(i),
            "node {i} is not running: cannot set its faults {body}"
        );
        let url = format!("{}/debug/faults", self.nodes[i].url);
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .with_context(|| format!("POST {url} {body}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response
                .text()
                .unwrap_or_else(|e| format!("(the body could not be read: {e})"));
            bail!(
                "POST {url} {body} answered {status}: {text} (is pika built with \
                 `--features test-faults`?)"
            );
        }
        Ok(())
    }

    /// Whether partitions cut the kernel's path (namespaces) rather than
    /// pika's fault layer.
    pub fn namespaced(&self) -> bool {
        self.lab.is_some()
    }

    /// Drops everything node `from` sends to node `to` until [`heal`].
    ///
    /// [`heal`]: Cluster::heal
    pub fn cut(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        if let Some(lab) = &mut self.lab {
            return lab.cut(from, to);
        }
        self.fault_cuts.insert((from, to));
        let ids = |i: usize| -> Vec<String> {
            self.fault_cuts
                .iter()
                .filter(|(f, _)| *f == i)
                .map(|(_, t)| self.nodes[*t].node_id.clone())
                .collect()
        };
        self.fault(from, json!({"block_out": ids(from)}))
    }

    /// Removes every cut and every fault-layer fault.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(lab) = &mut self.lab {
            lab.heal()?;
        }
        self.fault_cuts.clear();
        // Without test hooks there is no fault endpoint, and so no fault
        // to clear; a node that is down has none either (it starts clean).
        if self.test_hooks {
            for i in (0..self.nodes.len()).filter(|i| self.is_up(*i)) {
                self.fault(i, json!({}))?;
            }
        }
        Ok(())
    }

    /// The node every live node agrees leads, within `limit`.
    pub fn leader(&self, limit: Duration) -> Option<usize> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let statuses: Vec<(usize, Value)> = (0..self.nodes.len())
                .filter(|i| self.is_up(*i))
                .map(|i| (i, self.status(i)))
                .collect();
            if let Some((leader, _)) = agreed_leader(&statuses) {
                return Some(leader);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until every node reports the same Merkle root and revision;
    /// returns that revision.
    pub fn converged(&self, limit: Duration) -> Result<u64, String> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < limit {
            last = (0..self.nodes.len())
                .map(|i| {
                    let s = self.status(i);
                    (
                        s["merkle_root"].as_str().unwrap_or("?").to_string(),
                        s["revision"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            if last.iter().all(|x| *x == last[0] && x.0 != "?") {
                return Ok(last[0].1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "nodes did not converge: (root, revision) per node {last:?}"
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.pause(i, false);
            self.kill(i);
        }
        for dir in &self.mounts {
            let _ = Command::new("umount").arg(dir).status();
        }
    }
}
