//! The replica's per-peer writers (`Peers`, issue 14 item 5): one per node
//! it sends to, ended once that node has been gone from membership for a
//! while, so that nodes replaced long ago do not each keep a task and a
//! queue. A real membership endpoint on 127.0.2.9; no traffic leaves it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pika_membership::{DiscoveryConfig, MemberMeta, Membership, MembershipConfig, SwimConfig};
use pika_replication::peers::Peers;
use pika_replication::wire::PeerMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_for_a_node_that_is_gone_ends_and_a_later_send_starts_another() {
    let port = UdpSocket::bind("127.0.2.9:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let bind = SocketAddr::from(([127, 0, 2, 9], port));
    let membership = Membership::start(MembershipConfig {
        node_id: "me".into(),
        generation: 1,
        bind,
        advertise: None,
        discovery: DiscoveryConfig::parse(&bind.to_string(), port, None).expect("dns_addr"),
        refresh_interval: Duration::from_secs(1),
        swim: SwimConfig {
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_secs(1),
            expected_members: 1,
        },
        security_key: b"a test key of 32 bytes, not more".to_vec(),
        prefix: "pika".into(),
        max_frame: 1 << 20,
        meta: MemberMeta {
            http_addr: "127.0.2.9:8080".into(),
            role: "follower".into(),
            applied_revision: 0,
            epoch: 0,
        },
    })
    .await
    .expect("membership");
    let membership = Arc::new(membership);
    // One retry every 10 ms: a writer gives up on a node after 60.
    let (peers, _inboxes) =
        Peers::start("me".into(), membership.clone(), Duration::from_millis(10));
    let ghost = || PeerMessage::Alive { seq: 1, boot: 1 };

    peers.send("ghost", ghost());
    assert_eq!(peers.writers(), 1);
    let started = Instant::now();
    while peers.writers() > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        peers.writers(),
        0,
        "the writer for a node nobody knows ended"
    );
    peers.send("ghost", ghost());
    assert_eq!(peers.writers(), 1, "a later send starts another");
    membership.shutdown().await;
}
