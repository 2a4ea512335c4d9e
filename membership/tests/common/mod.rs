//! Starting real membership nodes on 127.0.1.x loopback addresses.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use pika_membership::{
    DiscoveryConfig, MemberMeta, MemberState, Membership, MembershipConfig, SwimConfig,
};

pub const INTERVAL: Duration = Duration::from_millis(200);
pub const TIMEOUT: Duration = Duration::from_secs(1);
pub const KEY: &[u8] = b"a test key of 32 bytes, not more";

pub fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))
}

/// A UDP port free on every address the test will use. Each test uses its
/// own block of loopback addresses, so a port taken elsewhere on 127.0.0.1
/// does not matter; checking every address covers the rest.
pub fn free_port(hosts: &[u8]) -> u16 {
    for _ in 0..50 {
        let Ok(probe) = UdpSocket::bind((ip(hosts[0]), 0)) else {
            continue;
        };
        let Ok(port) = probe.local_addr().map(|a| a.port()) else {
            continue;
        };
        if hosts[1..]
            .iter()
            .all(|h| UdpSocket::bind((ip(*h), port)).is_ok())
        {
            return port;
        }
    }
    panic!("no UDP port free on all of {hosts:?}");
}

pub fn config(
    host: u8,
    port: u16,
    dns_addr: &str,
    key: &[u8],
    generation: u64,
) -> MembershipConfig {
    MembershipConfig {
        node_id: format!("node-{host}"),
        generation,
        bind: SocketAddr::new(ip(host), port),
        advertise: None,
        discovery: DiscoveryConfig::parse(dns_addr, port, None).expect("dns_addr"),
        refresh_interval: Duration::from_secs(1),
        swim: SwimConfig {
            heartbeat_interval: INTERVAL,
            heartbeat_timeout: TIMEOUT,
            expected_members: 3,
        },
        security_key: key.to_vec(),
        prefix: "pika".into(),
        max_frame: 1 << 20,
        meta: MemberMeta {
            http_addr: format!("{}:8080", ip(host)),
            role: "follower".into(),
            applied_revision: 0,
            epoch: 0,
        },
    }
}

/// The peer addresses of `hosts` on `port`.
pub fn addrs(hosts: &[u8], port: u16) -> Vec<SocketAddr> {
    hosts
        .iter()
        .map(|h| SocketAddr::new(ip(*h), port))
        .collect()
}

pub fn list(hosts: &[u8]) -> String {
    hosts
        .iter()
        .map(|h| ip(*h).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// How `node` currently sees the member at `addr`.
pub fn state_of(node: &Membership, addr: SocketAddr) -> Option<MemberState> {
    node.members()
        .into_iter()
        .find(|m| m.id.addr == addr)
        .map(|m| m.state)
}

/// Polls every 10 ms until `done` holds or `limit` passes; returns how long
/// it took, or `None`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done().then(|| start.elapsed())
}

/// True when every node lists every address in `addrs` as alive.
pub fn all_alive(nodes: &[Membership], addrs: &[SocketAddr]) -> bool {
    nodes.iter().all(|n| {
        addrs
            .iter()
            .all(|a| state_of(n, *a) == Some(MemberState::Alive))
    })
}
