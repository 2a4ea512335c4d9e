//! Real nodes, real QUIC, on 127.0.1.x: membership forms, notices deaths and
//! restarts, and keeps out peers without the key.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pika_membership::{MemberState, Membership};

async fn start_all(hosts: &[u8], port: u16, key: &[u8]) -> Vec<Membership> {
    let dns = list(hosts);
    let mut nodes = Vec::new();
    for h in hosts {
        nodes.push(
            Membership::start(config(*h, port, &dns, key, 1))
                .await
                .expect("node starts"),
        );
    }
    nodes
}

async fn converge(hosts: &[u8]) {
    let port = free_port(hosts);
    let nodes = start_all(hosts, port, KEY).await;
    let addrs: Vec<SocketAddr> = addrs(hosts, port);
    let took = wait_until(Duration::from_secs(10), || all_alive(&nodes, &addrs)).await;
    for n in &nodes {
        n.shutdown().await;
    }
    let took = took.expect("every node lists every node alive");
    eprintln!(
        "{} nodes: full membership {took:?} after the last start",
        hosts.len()
    );
    assert!(
        took <= INTERVAL * 3,
        "{} nodes took {took:?}, more than 3 heartbeat intervals",
        hosts.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_list_each_other_alive_within_three_intervals() {
    converge(&[11, 12, 13]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_list_each_other_alive_within_three_intervals() {
    converge(&[21, 22, 23, 24, 25]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_goes_down_and_returns_with_a_higher_generation() {
    let hosts = [31, 32, 33];
    let port = free_port(&hosts);
    let mut nodes = start_all(&hosts, port, KEY).await;
    let addrs: Vec<SocketAddr> = addrs(&hosts, port);
    wait_until(Duration::from_secs(10), || all_alive(&nodes, &addrs))
        .await
        .expect("membership forms");

    let victim = nodes.pop().expect("three nodes");
    let victim_addr = addrs[2];
    victim.shutdown().await;
    drop(victim);
    let down = wait_until(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| state_of(n, victim_addr) == Some(MemberState::Down))
    })
    .await
    .expect("the stopped node is down on the others");
    eprintln!("down on every survivor {down:?} after the stop");
    assert!(
        down <= TIMEOUT + INTERVAL * 2,
        "down after {down:?}, more than heartbeat_timeout + 2 intervals"
    );

    // Same node id and address, next boot generation.
    // The old endpoint lets go of its socket once its tasks have wound down.
    let mut restarted = None;
    for _ in 0..100 {
        match Membership::start(config(33, port, &list(&hosts), KEY, 2)).await {
            Ok(node) => {
                restarted = Some(node);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let restarted = restarted.expect("restart binds the same address");
    nodes.push(restarted);
    let back = wait_until(Duration::from_secs(10), || {
        nodes[..2].iter().all(|n| {
            n.members().iter().any(|m| {
                m.id.addr == victim_addr && m.id.generation == 2 && m.state == MemberState::Alive
            })
        })
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
    let back = back.expect("the restarted node is alive again with generation 2");
    eprintln!("alive again {back:?} after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_key_never_appear_and_are_counted() {
    // 41-43 hold the key; 44 has another key, 45 none. Everyone's dns_addr
    // names all five, so the outsiders dial in and are dialled.
    let hosts = [41, 42, 43, 44, 45];
    let port = free_port(&hosts);
    let dns = list(&hosts);
    let mut members = Vec::new();
    for h in &hosts[..3] {
        members.push(
            Membership::start(config(*h, port, &dns, KEY, 1))
                .await
                .expect("member"),
        );
    }
    let wrong = Membership::start(config(
        44,
        port,
        &dns,
        b"another key of 32 bytes, not ours",
        1,
    ))
    .await
    .expect("outsider with a wrong key");
    let keyless = Membership::start(config(45, port, &dns, b"", 1))
        .await
        .expect("outsider without a key");
    assert!(!keyless.security_enabled());
    assert!(members[0].security_enabled());

    let good: Vec<SocketAddr> = addrs(&hosts[..3], port);
    wait_until(Duration::from_secs(10), || all_alive(&members, &good))
        .await
        .expect("the members find each other");
    // Give the outsiders several heartbeat rounds to try.
    tokio::time::sleep(INTERVAL * 5).await;

    for m in &members {
        let seen: Vec<SocketAddr> = m.members().iter().map(|v| v.id.addr).collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.iter().all(|a| good.contains(a)),
            "outsider listed: {seen:?}"
        );
        assert!(m.stats().handshakes_rejected > 0, "rejections not counted");
    }
    // The outsiders see no member either: nothing they sent was processed,
    // and nothing of ours reached them.
    for outsider in [&wrong, &keyless] {
        assert_eq!(outsider.members().len(), 1, "{:?}", outsider.members());
    }
    for n in members.iter().chain([&wrong, &keyless]) {
        n.shutdown().await;
    }
}

/// Nodes bound to `::` (every address, both families) with IPv4 peers:
/// quinn names such a peer `[::ffff:127.0.0.1]`, which the pool used to
/// keep its connections under, so no lookup by the dialled address ever
/// hit and heartbeats were refused for claiming another address; the
/// nodes never saw each other. Skipped where IPv6 is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_bound_to_every_address_of_both_families_form_with_ipv4_peers() {
    let any6 = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let ports: Vec<u16> = (0..2)
        .filter_map(|_| std::net::UdpSocket::bind((any6, 0)).ok())
        .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
        .collect();
    if ports.len() < 2 || ports[0] == ports[1] {
        eprintln!("no IPv6 here: skipped");
        return;
    }
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::new(lo, *p)).collect();
    let dns = format!("{},{}", addrs[0], addrs[1]);
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut c = config(41 + i as u8, *port, &dns, KEY, 1);
        c.bind = SocketAddr::new(any6, *port);
        c.advertise = Some(addrs[i]);
        match Membership::start(c).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                eprintln!("cannot bind [::]:{port} here ({e}): skipped");
                for n in &nodes {
                    n.shutdown().await;
                }
                return;
            }
        }
    }
    let took = wait_until(Duration::from_secs(10), || all_alive(&nodes, &addrs)).await;
    for n in &nodes {
        n.shutdown().await;
    }
    took.expect("both nodes list both alive");
}
