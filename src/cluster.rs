//! The node's side of clustering: `cluster.*` mapped onto membership, and
//! membership shown back as status fields and metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pika_membership::{
    DiscoveryConfig, MemberMeta, MemberState, MemberView, Membership, MembershipConfig, SwimConfig,
};
use pika_replication::ConfigPath;
use pika_replication::Store;
use pika_replication::replica::{Replica, ReplicaConfig, ReplicaTasks};
use serde_json::{Value, json};

use crate::config::Config;

/// The role a node gossips before its election driver reports one.
const INITIAL_ROLE: &str = "follower";

/// Starts replication (election, fan-out, forwarding) over a running
/// membership.
pub fn start_replica(
    config: &Config,
    store: Arc<Store>,
    membership: Arc<Membership>,
    http_addr: SocketAddr,
) -> anyhow::Result<(Replica, ReplicaTasks)> {
    let c = &config.cluster;
    let lock_path = ConfigPath::new(format!("{}/{}", c.prefix, c.lock_key)).with_context(|| {
        format!(
            "cluster.prefix/cluster.lock_key `{}/{}` is not a valid path",
            c.prefix, c.lock_key
        )
    })?;
    let voters_path = ConfigPath::new(c.voters_path())
        .with_context(|| format!("cluster.prefix `{}` makes no valid path", c.prefix))?;
    let http = if http_addr.ip().is_unspecified() {
        SocketAddr::new(membership.me().addr.ip(), http_addr.port())
    } else {
        http_addr
    };
    let replica_config = ReplicaConfig {
        replicas: c.replicas as usize,
        heartbeat_interval: c.heartbeat_interval.0,
        lease: c.heartbeat_timeout.0,
        ack_timeout: c.ack_timeout.0,
        forward_timeout: c.forward_timeout.0,
        sync_interval: c.sync_interval.0,
        lock_path,
        voters_path,
        dead_voter_timeout: c.dead_voter_timeout.0,
        learner_feed: c.learner_feed,
        http_addr: http.to_string(),
        log_dir: config.storage.bw.path.join(pika_replication::log::LOG_DIR),
        checkpoint_interval: config.storage.checkpoint_interval.0,
        log_retention: config.storage.log_retention,
        max_frame: (c.max_frame_mb as usize) << 20,
        pipeline_depth: c.pipeline_depth as usize,
    };
    Replica::start(store, membership, replica_config)
        .map_err(|e| anyhow::anyhow!("starting replication: {e}"))
}

/// Starts membership for a node whose store is open and whose HTTP server is
/// bound at `http_addr`.
pub async fn start(
    config: &Config,
    store: &Store,
    http_addr: SocketAddr,
) -> anyhow::Result<Membership> {
    let c = &config.cluster;
    let bind_ip: IpAddr = c
        .bind_addr
        .parse()
        .with_context(|| format!("cluster.bind_addr `{}` is not an IP address", c.bind_addr))?;
    let dns_server = match c.dns_server.as_str() {
        "" => None,
        s => Some(
            s.parse()
                .with_context(|| format!("cluster.dns_server `{s}`"))?,
        ),
    };
    let discovery =
        DiscoveryConfig::parse(&c.dns_addr, c.port, dns_server).context("cluster.dns_addr")?;
    let membership_config = MembershipConfig {
        node_id: store.node_id().to_string(),
        generation: store
            .raise_generation(wall_clock_ms(std::time::SystemTime::now()))
            .context("recording this start's generation")?,
        bind: SocketAddr::new(bind_ip, c.port),
        advertise: None,
        discovery,
        refresh_interval: c.refresh_interval.0.max(Duration::from_millis(100)),
        swim: SwimConfig {
            heartbeat_interval: c.heartbeat_interval.0,
            heartbeat_timeout: c.heartbeat_timeout.0,
            expected_members: c.replicas,
        },
        security_key: c.security_key.value.as_bytes().to_vec(),
        prefix: c.prefix.clone(),
        max_frame: (c.max_frame_mb as usize) << 20,
        meta: meta(http_addr, http_addr.ip(), store),
    };
    let membership = Membership::start(membership_config)
        .await
        .context("starting cluster membership (cluster.bind_addr, cluster.port)")?;
    // With the HTTP server on every interface, tell peers the address they
    // reach this node's peer endpoint at.
    if http_addr.ip().is_unspecified() {
        membership.set_meta(meta(http_addr, membership.me().addr.ip(), store));
    }
    Ok(membership)
}

fn meta(http_addr: SocketAddr, ip: IpAddr, store: &Store) -> MemberMeta {
    MemberMeta {
        http_addr: SocketAddr::new(ip, http_addr.port()).to_string(),
        role: INITIAL_ROLE.into(),
        applied_revision: store.revision(),
        epoch: 0,
    }
}

/// The cluster part of `/api/v1/cluster/status`.
pub fn status(
    config: &Config,
    membership: &Membership,
    replica: Option<&Replica>,
    store: &Store,
) -> serde_json::Map<String, Value> {
    let members = membership.members();
    let replicas = config.cluster.replicas;
    let quorum = replicas / 2 + 1;
    let online = members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count() as u32;
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    let r = replica.map(Replica::status).unwrap_or_default();
    let leader_member = r
        .leader_id
        .as_ref()
        .and_then(|id| members.iter().find(|m| &m.id.node_id == id));
    let leader_revision = leader_member
        .and_then(|m| m.meta.as_ref())
        .map(|meta| meta.applied_revision)
        .unwrap_or_default();
    put("role", r.role.clone().into());
    put("is_leader", r.is_leader.into());
    put("leader", r.leader_id.clone().into());
    put(
        "leader_addr",
        leader_member.map(|m| m.id.addr.to_string()).into(),
    );
    put(
        "leader_http_address",
        leader_member
            .and_then(|m| m.meta.as_ref())
            .map(|meta| meta.http_addr.clone())
            .into(),
    );
    put("leader_healthy", r.leader_healthy.into());
    put("epoch", r.epoch.into());
    put("promised_epoch", r.promised_epoch.into());
    put("behind", r.behind.into());
    put(
        "replication_set",
        r.replication_set
            .iter()
            .map(|(id, acked)| json!({"id": id, "acked_revision": acked}))
            .collect::<Vec<_>>()
            .into(),
    );
    let lock_path = format!("{}/{}", config.cluster.prefix, config.cluster.lock_key);
    let lock = store
        .get(&lock_path, None)
        .ok()
        .flatten()
        .and_then(|c| match c.kind {
            pika_replication::ChangeKind::Put { data, .. } => {
                serde_json::from_slice::<Value>(&data).ok()
            }
            pika_replication::ChangeKind::Delete => None,
        });
    put("lock", lock.unwrap_or(Value::Null));
    put(
        "last_sync",
        serde_json::to_value(&r.last_sync).unwrap_or(Value::Null),
    );
    put(
        "log",
        json!({
            "start": r.log_start,
            "last": r.log_last,
            "commit": r.commit,
            "applied": r.applied,
            "pending": r.pending,
        }),
    );
    put("disk_error", r.disk_error.clone().into());
    // Who votes (DESIGN.md, "Who votes"): the voter set of this node's log
    // (empty before a new cluster's first leader wrote one), and whether
    // this node is in it or a learner.
    put("voters", r.voters.clone().into());
    // The cluster's id, from the voter set: replica streams from nodes of
    // another cluster (a restored copy, say) are refused.
    put("cluster_id", r.cluster_id.clone().into());
    put("voter", r.voter.into());
    put("local_addr", membership.me().addr.to_string().into());
    put("generation", membership.me().generation.into());
    put("peer_count", (members.len() - 1).into());
    put("online_nodes", online.into());
    put("expected_replicas", replicas.into());
    // Once the cluster has a voter set, only its alive members count
    // toward a quorum (DESIGN.md, "Who votes": learners do not): with
    // learners up and a majority of voters down, writes stop.
    let (quorum, quorum_online) = if r.voters.is_empty() {
        (quorum, online)
    } else {
        let alive_voters = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && r.voters.contains(&m.id.node_id))
            .count() as u32;
        (r.voters.len() as u32 / 2 + 1, alive_voters)
    };
    put("online_voters", quorum_online.into());
    put("quorum_nodes_required", quorum.into());
    put("has_quorum", (quorum_online >= quorum).into());
    // More live members than `replicas` stops elections only before the
    // cluster has a voter set; after, the extra members are learners.
    put(
        "replicas_mismatch",
        (online > replicas && r.voters.is_empty()).into(),
    );
    // Members that said (in a lease request, heartbeat or ack) they have
    // a different `replicas`, with theirs. Before a voter set exists they
    // and this node do not grant each other's campaigns.
    put(
        "replicas_conflicts",
        json!(
            r.replicas_conflicts
                .iter()
                .map(|(id, theirs)| json!({"id": id, "replicas": theirs}))
                .collect::<Vec<_>>()
        ),
    );
    put("security_enabled", membership.security_enabled().into());
    put(
        "nodes",
        members
            .iter()
            .map(|m| node(m, leader_revision, &r.replication_set))
            .collect::<Vec<_>>()
            .into(),
    );
    out
}

fn node(m: &MemberView, leader_revision: u64, set: &[(String, u64)]) -> Value {
    let meta = m.meta.clone().unwrap_or_default();
    json!({
        "lag": leader_revision.saturating_sub(meta.applied_revision),
        "in_replication_set": set.iter().any(|(id, _)| *id == m.id.node_id),
        "id": m.id.node_id,
        "address": m.id.addr.to_string(),
        "http_address": meta.http_addr,
        "state": m.state,
        "last_seen_ms": m.last_seen.as_millis() as u64,
        "self": m.is_self,
        "generation": m.id.generation,
        "role": meta.role,
        "applied_revision": meta.applied_revision,
        "epoch": meta.epoch,
    })
}

/// Copies membership's counters into the Prometheus registry; called when
/// `/metrics` is scraped, so the numbers are current at every scrape.
pub fn record_metrics(membership: &Membership) {
    let members = membership.members();
    for (state, label) in [
        (MemberState::Alive, "alive"),
        (MemberState::Suspect, "suspect"),
        (MemberState::Down, "down"),
    ] {
        let n = members.iter().filter(|m| m.state == state).count();
        metrics::gauge!("pika_membership_members", "state" => label).set(n as f64);
    }
    let s = membership.stats();
    metrics::counter!("pika_membership_datagrams_total", "direction" => "in")
        .absolute(s.datagrams_in);
    metrics::counter!("pika_membership_datagrams_total", "direction" => "out")
        .absolute(s.datagrams_out);
    metrics::counter!("pika_membership_datagram_bytes_total", "direction" => "in")
        .absolute(s.datagram_bytes_in);
    metrics::counter!("pika_membership_datagram_bytes_total", "direction" => "out")
        .absolute(s.datagram_bytes_out);
    metrics::counter!("pika_membership_frames_total", "direction" => "in").absolute(s.frames_in);
    metrics::counter!("pika_membership_frames_total", "direction" => "out").absolute(s.frames_out);
    metrics::counter!("pika_membership_frame_bytes_total", "direction" => "in")
        .absolute(s.frame_bytes_in);
    metrics::counter!("pika_membership_frame_bytes_total", "direction" => "out")
        .absolute(s.frame_bytes_out);
    metrics::counter!("pika_membership_handshakes_rejected_total").absolute(s.handshakes_rejected);
    metrics::counter!("pika_membership_handshakes_refused_total").absolute(s.handshakes_refused);
    metrics::counter!("pika_membership_malformed_dropped_total").absolute(s.malformed_dropped);
    metrics::counter!("pika_membership_datagrams_overflow_total").absolute(s.datagrams_overflow);
    metrics::counter!("pika_membership_dial_records_full_total").absolute(s.dial_records_full);
}

/// Keeps what this node gossips (applied revision, role, epoch) in step.
pub fn keep_meta_current(
    membership: Arc<Membership>,
    store: Arc<Store>,
    replica: Option<Replica>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(meta) = membership
                .members()
                .into_iter()
                .find(|m| m.is_self)
                .and_then(|m| m.meta)
            else {
                continue;
            };
            let mut next = meta.clone();
            next.applied_revision = store.revision();
            if let Some(r) = replica.as_ref().map(Replica::status) {
                next.role = r.role;
                next.epoch = r.epoch;
            }
            if next != meta {
                membership.set_meta(next);
            }
        }
    })
}

/// The wall clock in milliseconds: the floor of each start's generation.
///
/// Two identities at one address are told apart by their generation: the
/// newer replaces the older (`PeerId::is_newer_than`, which foca's
/// address conflicts and the membership's slot per address both ask). A
/// count of starts alone made a node whose data directory was wiped (a new node id,
/// counting from 1 again) lose to its predecessor's entry, which the new
/// process then kept alive by answering its probes: it was not admitted
/// for as long as that lasted (`tests/cluster.rs`,
/// `a_wiped_follower_rejoins_under_its_new_id`). Raised to the clock, each
/// start's generation is about its start time, so the later start wins; a
/// store's generation is durable and only grows, so a clock set back never
/// makes a restart older than the start before it.
fn wall_clock_ms(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
