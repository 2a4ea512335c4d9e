//! Discovery through a real DNS server: an in-process hickory server answers
//! the cluster name with A records; adding one brings a node in, removing a
//! dead one lets it be forgotten, with no restarts.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::*;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use pika_membership::{DiscoveryConfig, MemberState, Membership};

const CLUSTER_NAME: &str = "pika.cluster.test.";

/// Answers A queries for one name from a list the test edits; anything else
/// gets an empty answer.
#[derive(Clone)]
struct ClusterRecords {
    name: Name,
    addrs: Arc<Mutex<Vec<Ipv4Addr>>>,
    /// Answer SERVFAIL to everything (a server in trouble, not an answer).
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl RequestHandler for ClusterRecords {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let failing = self.failing.load(Ordering::Relaxed);
        if failing {
            metadata.response_code = ResponseCode::ServFail;
        }
        let asks_for_us = request.request_info().is_ok_and(|info| {
            Name::from(info.query.name()) == self.name && info.query.query_type() == RecordType::A
        });
        let records: Vec<Record> = if asks_for_us && !failing {
            self.addrs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|ip| Record::from_rdata(self.name.clone(), 0, RData::A(A(*ip))))
                .collect()
        } else {
            Vec::new()
        };
        let message = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            records.iter(),
            [],
            [],
            [],
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(_) => ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            }),
        }
    }
}

fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_dns_joins_and_a_dead_one_removed_from_dns_is_forgotten() {
    let hosts = [51, 52, 53, 54];
    let port = free_port(&hosts);

    let records = ClusterRecords {
        name: Name::from_ascii(CLUSTER_NAME).expect("name"),
        addrs: Arc::new(Mutex::new(vec![v4(51), v4(52), v4(53)])),
        failing: Arc::new(AtomicBool::new(false)),
    };
    let dns_socket = tokio::net::UdpSocket::bind((v4(50), 0))
        .await
        .expect("dns socket");
    let dns_addr = dns_socket.local_addr().expect("dns addr");
    let mut server = Server::new(records.clone());
    server.register_socket(dns_socket);

    let by_dns = |host: u8| {
        let mut c = config(host, port, "127.0.1.1", KEY, 1);
        c.discovery = DiscoveryConfig::parse(CLUSTER_NAME, port, Some(dns_addr)).expect("dns_addr");
        c.refresh_interval = Duration::from_millis(300);
        c
    };
    let mut nodes = Vec::new();
    for h in &hosts[..3] {
        nodes.push(Membership::start(by_dns(*h)).await.expect("node"));
    }
    let addr = |h: u8| SocketAddr::new(ip(h), port);
    let first: Vec<SocketAddr> = hosts[..3].iter().map(|h| addr(*h)).collect();
    wait_until(Duration::from_secs(10), || all_alive(&nodes, &first))
        .await
        .expect("the three nodes in DNS find each other");

    // The newcomer knows only itself, so it cannot introduce itself: the
    // others must find it through DNS.
    let newcomer = Membership::start(config(54, port, &list(&[54]), KEY, 1))
        .await
        .expect("newcomer");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        nodes.iter().all(|n| state_of(n, addr(54)).is_none()),
        "the newcomer was found before DNS named it"
    );
    records
        .addrs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(v4(54));
    let joined = wait_until(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| state_of(n, addr(54)) == Some(MemberState::Alive))
    })
    .await
    .expect("the node added to DNS joins without restarts");
    eprintln!("joined {joined:?} after its A record appeared (refresh every 300ms)");
    wait_until(Duration::from_secs(5), || newcomer.members().len() == 4)
        .await
        .unwrap_or_else(|| {
            panic!(
                "the newcomer never learned the cluster back: {:?}",
                newcomer.members()
            )
        });

    // Dead while the DNS server fails (SERVFAIL is no answer, not an empty
    // one): down, but not forgotten, since the name may still hold it.
    // Taken for an empty answer, the failure made every node forget it.
    records.failing.store(true, Ordering::Relaxed);
    newcomer.shutdown().await;
    drop(newcomer);
    wait_until(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| state_of(n, addr(54)) == Some(MemberState::Down))
    })
    .await
    .expect("the stopped node goes down");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        nodes
            .iter()
            .all(|n| state_of(n, addr(54)) == Some(MemberState::Down)),
        "a failing DNS server made a down member look gone from DNS"
    );
    records.failing.store(false, Ordering::Relaxed);

    // Gone from DNS and dead: forgotten.
    records
        .addrs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|ip| *ip != v4(54));
    let forgotten = wait_until(Duration::from_secs(10), || {
        nodes.iter().all(|n| state_of(n, addr(54)).is_none())
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
    let _ = server.shutdown_gracefully().await;
    forgotten.expect("a down node that left DNS is forgotten");
}
