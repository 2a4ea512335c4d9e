//! A private network for one campaign cluster, built from Linux network
//! namespaces, so that partitions cut the kernel's path and not only
//! pika's own fault layer: SWIM probes, heartbeats, dials and replication
//! streams all lose the same packets.
//!
//! Layout for cluster `base` (one /24 per cluster, so concurrent clusters
//! with different bases never share a subnet):
//!
//! ```text
//!   root ns: pk{pid}x{base} 10.213.{base}.254 ──┐
//!   hub ns (pika-{pid}-{base}-hub): bridge br0 ─┼── veth ── node 0 ns: eth0 10.213.{base}.1
//!                                               ├── veth ── node 1 ns: eth0 10.213.{base}.2
//!                                               └── ...
//! ```
//!
//! The campaign's clients live in the root namespace and reach every node's
//! HTTP API through the root veth. A cut `from → to` is a blackhole route
//! for `to`'s address inside `from`'s namespace: `from`'s packets to `to` are
//! dropped at `from`'s send, while `to → from` still flows, which is exactly
//! a one-way partition; two cuts make a two-way one.
//!
//! Packet delay and loss would need the `netem` qdisc, which this kernel
//! lacks, so they stay on pika's transport fault layer (`/debug/faults`).
//!
//! Everything is created with `ip` (iproute2) and needs root. The lab is
//! torn down on drop; labs left behind by a killed campaign are swept the
//! next time one is built (their owner pid is in the name).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Network namespaces, veths and a bridge for `n` nodes.
pub struct NamespaceLab {
    prefix: String,
    base: u8,
    nodes: usize,
    cuts: BTreeSet<(usize, usize)>,
    /// Nodes at their second address (see [`NamespaceLab::relocate`]).
    moved: BTreeSet<usize>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes namespaces named `pika-{pid}-...` whose campaign process is gone.
fn sweep_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("pika-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

impl NamespaceLab {
    /// Builds the lab, or says why it can't (not root, no `ip`, no netns
    /// support in this container); a half-built lab is torn down first.
    pub fn create(base: u8, nodes: usize) -> anyhow::Result<NamespaceLab> {
        anyhow::ensure!(nodes < 254, "at most 253 nodes in one lab");
        sweep_stale();
        let lab = NamespaceLab {
            prefix: format!("pika-{}-{base}", std::process::id()),
            base,
            nodes,
            cuts: BTreeSet::new(),
            moved: BTreeSet::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// Node `i`'s address: 10.213.`base`.`i + 1`, or `i + 101` once it
    /// moved.
    pub fn host(&self, i: usize) -> String {
        let last = if self.moved.contains(&i) {
            i + 101
        } else {
            i + 1
        };
        format!("10.213.{}.{last}", self.base)
    }

    /// Moves node `i` to its other address: the old one leaves its
    /// interface, so nothing answers there (packets to it are lost, as to
    /// a pod gone from its IP). Returns the new address. Cuts name
    /// addresses, so none may be in place.
    pub fn relocate(&mut self, i: usize) -> anyhow::Result<String> {
        anyhow::ensure!(self.cuts.is_empty(), "a node moved while cuts are in place");
        let (ns, old) = (self.namespace(i), self.host(i));
        if !self.moved.remove(&i) {
            self.moved.insert(i);
        }
        let new = self.host(i);
        ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{old}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{new}/24"),
            "dev",
            "eth0",
        ])?;
        Ok(new)
    }

    fn root_link(&self) -> String {
        // Interface names are at most 15 bytes; a pid has at most 7 digits.
        format!("pk{}x{}", std::process::id(), self.base)
    }

    fn build(&self) -> anyhow::Result<()> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let root = self.root_link();
        // Possibly left by this process's previous lab, still being torn down.
        let _ = ip(&["link", "delete", &root]);
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", "uplink", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "uplink", "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.254/24", self.base),
            "dev",
            &root,
        ])?;
        ip(&["link", "set", &root, "up"])?;
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            let port = format!("node{i}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.host(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(i)])
            .arg(program);
        command
    }

    /// Adds (`verb` "add") or removes ("del") the blackhole route for
    /// `to` inside `from`'s namespace.
    fn blackhole(&self, verb: &str, from: usize, to: usize) -> anyhow::Result<()> {
        let target = format!("{}/32", self.host(to));
        ip(&[
            "-n",
            &self.namespace(from),
            "route",
            verb,
            "blackhole",
            &target,
        ])
    }

    /// Drops every packet node `from` sends to node `to`.
    pub fn cut(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        if self.cuts.insert((from, to)) {
            self.blackhole("add", from, to)?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for (from, to) in std::mem::take(&mut self.cuts) {
            self.blackhole("del", from, to)?;
        }
        Ok(())
    }
}

impl Drop for NamespaceLab {
    fn drop(&mut self) {
        // Namespaces are destroyed asynchronously after their name goes,
        // and the root link with the hub; delete the link now so the next
        // lab for this base can take its name.
        let _ = ip(&["link", "delete", &self.root_link()]);
        for i in 0..self.nodes {
            let _ = ip(&["netns", "delete", &self.namespace(i)]);
        }
        let _ = ip(&["netns", "delete", &self.hub()]);
    }
}
