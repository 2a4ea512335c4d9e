//! `pika` processes forming a cluster on 127.0.1.x from the example YAMLs:
//! full membership, a kill -9 noticed and a restart welcomed back (without
//! unseating the leader), and outsiders without the key kept out.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::Cluster;
use support::{Proc, client, free_udp_port, spawn_with};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(1);

fn example(n: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("example/cluster/{n}.yaml"))
}

/// Node `n` from `example/cluster/{n}.yaml`, loaded unchanged; the env moves
/// it to a free cluster port, a temp data dir and test-speed heartbeats, and
/// lists the loopback addresses in place of `pika.local`.
fn start(dir: &Path, n: u8, port: u16, extra: &[(&str, &str)]) -> Proc {
    let port = port.to_string();
    let host = format!("127.0.1.{n}");
    let mut env = vec![
        ("PIKA_SERVER_HOST", host.as_str()),
        // As `make demo` does: the addresses pika.local would resolve to.
        ("PIKA_CLUSTER_DNS_ADDR", "127.0.1.1,127.0.1.2,127.0.1.3"),
        ("PIKA_CLUSTER_PORT", port.as_str()),
        ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "200ms"),
        ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "1s"),
    ];
    env.extend_from_slice(extra);
    spawn_with(&dir.join(format!("node{n}")), Some(&example(n)), &env)
}

fn status(node: &Proc) -> Value {
    client()
        .get(format!("{}/api/v1/cluster/status", node.url))
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

/// The state `node` reports for the member at `addr`, with its generation.
fn member(node: &Proc, addr: &str) -> Option<(String, u64)> {
    let s = status(node);
    s["nodes"].as_array()?.iter().find_map(|m| {
        (m["address"] == addr).then(|| {
            (
                m["state"].as_str().unwrap_or_default().to_string(),
                m["generation"].as_u64().unwrap_or_default(),
            )
        })
    })
}

/// One string field of every entry of a status's `nodes`.
fn field_of_nodes<'a>(status: &'a Value, field: &str) -> Vec<&'a str> {
    status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|m| m[field].as_str().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn three_processes_from_the_example_yamls_form_a_cluster_and_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port(&[1, 2, 3]);
    let mut nodes: Vec<Proc> = (1..=3).map(|n| start(dir.path(), n, port, &[])).collect();

    let formed = wait_until(Duration::from_secs(15), || {
        nodes.iter().all(|n| status(n)["online_nodes"] == 3)
    })
    .expect("every node reports online_nodes: 3");
    eprintln!("3 processes: online_nodes 3 everywhere {formed:?} after the last one listened");
    // Without PIKA_TEST_FAULTS=1 (and in a build without the test-faults
    // feature, whatever the environment) there is no fault hook.
    let hook = client()
        .post(format!("{}/debug/faults", nodes[0].url))
        .json(&serde_json::json!({"block_in": []}))
        .send()
        .expect("an answer");
    assert_eq!(
        hook.status().as_u16(),
        404,
        "no fault hook in an ordinary node"
    );
    // Metadata rides the heartbeats; it follows membership within a round.
    wait_until(Duration::from_secs(5), || {
        nodes.iter().all(|n| {
            status(n)["nodes"]
                .as_array()
                .is_some_and(|ms| ms.iter().all(|m| m["http_address"] != ""))
        })
    })
    .expect("every node knows every node's HTTP address");
    let s = status(&nodes[0]);
    assert_eq!(s["peer_count"], 2);
    assert_eq!(s["has_quorum"], true);
    assert_eq!(s["replicas_mismatch"], false);
    assert_eq!(s["quorum_nodes_required"], 2);
    let https: Vec<&str> = field_of_nodes(&s, "http_address");
    for n in 1..=3 {
        assert!(
            https
                .iter()
                .any(|h| h.starts_with(&format!("127.0.1.{n}:"))),
            "{https:?}"
        );
    }

    // kill -9 node 3: down on both others within timeout + 2 intervals.
    let victim = format!("127.0.1.3:{port}");
    let mut killed = nodes.pop().unwrap();
    killed.child.kill().unwrap();
    let _ = killed.child.wait();
    let down = wait_until(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| member(n, &victim).is_some_and(|(state, _)| state == "down"))
    })
    .expect("the killed node is reported down");
    eprintln!("killed node down on every survivor {down:?} after kill -9");
    assert!(
        down <= TIMEOUT + INTERVAL * 2,
        "down after {down:?}: more than heartbeat_timeout + 2 heartbeat intervals"
    );
    assert_eq!(status(&nodes[0])["online_nodes"], 2);
    drop(killed);

    // Restarted on the same data dir: alive again, a generation later.
    let before = member(&nodes[0], &victim).map_or(0, |(_, g)| g);
    nodes.push(start(dir.path(), 3, port, &[]));
    let back = wait_until(Duration::from_secs(10), || {
        nodes[..2]
            .iter()
            .all(|n| member(n, &victim).is_some_and(|(state, g)| state == "alive" && g > before))
    })
    .expect("the restarted node is alive with a higher generation");
    eprintln!("restarted node alive again {back:?} after it listened");
}

#[test]
fn nodes_with_a_wrong_or_no_key_never_appear_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port(&[6, 7, 8, 9]);
    let port_s = port.to_string();
    // Two members with the demo key (the example files' key, on other
    // addresses), an outsider with another key and one with none. Everyone
    // lists everyone, so the outsiders both dial and are dialled.
    let all = "127.0.1.6,127.0.1.7,127.0.1.8,127.0.1.9";
    let node = |n: u8, key: Option<&str>| {
        let host = format!("127.0.1.{n}");
        let mut env = vec![
            ("PIKA_SERVER_HOST", host.as_str()),
            ("PIKA_CLUSTER_BIND_ADDR", host.as_str()),
            ("PIKA_CLUSTER_DNS_ADDR", all),
            ("PIKA_CLUSTER_PORT", port_s.as_str()),
            ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "200ms"),
            ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "1s"),
        ];
        if let Some(key) = key {
            env.push(("PIKA_CLUSTER_SECURITY_KEY", key));
        }
        spawn_with(
            &dir.path().join(format!("node{n}")),
            Some(&example(1)),
            &env,
        )
    };
    let members = [node(6, None), node(7, None)];
    let wrong = node(8, Some("a different key, 32 bytes long.."));
    let keyless = node(9, Some(""));

    wait_until(Duration::from_secs(15), || {
        members.iter().all(|n| status(n)["online_nodes"] == 2)
    })
    .expect("the two members find each other");
    let rejected = |n: &Proc| -> f64 {
        let text = client()
            .get(format!("{}/metrics", n.url))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("pika_membership_handshakes_rejected_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(10), || {
        members.iter().all(|m| rejected(m) >= 2.0)
    })
    .expect("each member counts rejected handshakes from both outsiders");
    // Several more heartbeat rounds for the outsiders to try their luck.
    std::thread::sleep(INTERVAL * 5);

    for m in &members {
        let s = status(m);
        let listed: Vec<&str> = field_of_nodes(&s, "address");
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(
            listed
                .iter()
                .all(|a| a.starts_with("127.0.1.6:") || a.starts_with("127.0.1.7:")),
            "an outsider is listed: {listed:?}"
        );
        let log = m.log.lock().unwrap().join("\n");
        assert!(
            log.contains("handshake rejected"),
            "rejection not logged:\n{log}"
        );
    }
    for outsider in [&wrong, &keyless] {
        assert_eq!(status(outsider)["online_nodes"], 1);
    }
    assert_eq!(status(&keyless)["security_enabled"], false);
    let log = keyless.log.lock().unwrap().join("\n");
    assert!(log.contains("security_key is empty"), "{log}");
}

/// A rolling restart must not move the leadership: a follower killed and
/// started again on its data finds the leader before its quiet time after
/// boot (one lease) ends, and so never campaigns. Its old QUIC connections
/// on the others are gone at the first packet they send it (its new
/// process answers with a stateless reset), not after an idle timeout;
/// until then everything sent to it was lost, it heard no leader, and its
/// campaign's promise fenced the leader off.
#[test]
fn a_restarted_follower_finds_the_leader_and_does_not_unseat_it() {
    // The default heartbeat and lease, not the other tests' faster ones:
    // with those the leader reconnected in time even without the reset.
    let (interval, lease) = (Duration::from_secs(1), Duration::from_secs(5));
    let mut c = Cluster::start_with_env(
        &[141, 142, 143],
        &[
            ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "1s"),
            ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "5s"),
        ],
    );
    let (leader, epoch) = c.leader(Duration::from_secs(20));
    let leader_id = c.node_id(leader);
    for round in 0..3 {
        let follower = (leader + 1 + round % 2) % 3;
        let id = c.node_id(follower);
        c.kill(follower);
        // Briefer than the lease: the leader still counts it in its set.
        std::thread::sleep(interval / 2);
        c.restart(follower);
        let rejoined = wait_until(Duration::from_secs(20), || {
            c.status(follower)["leader"] == leader_id.as_str()
                && c.replication_set(leader)
                    .is_some_and(|set| set.contains(&id))
        });
        let rejoined = rejoined.unwrap_or_else(|| {
            panic!("round {round}: node {follower} never followed the leader or rejoined its set")
        });
        // Within a heartbeat or two; an idle timeout (about the lease) had
        // to pass before.
        assert!(
            rejoined < lease / 2,
            "round {round}: node {follower} back only {rejoined:?} after its restart"
        );
        // Past the restarted node's quiet time, when it would campaign had
        // it heard no leader.
        std::thread::sleep(lease + interval * 2);
        assert_eq!(
            c.leader(Duration::from_secs(20)),
            (leader, epoch),
            "round {round}: the restart of node {follower} moved the leadership"
        );
        eprintln!("round {round}: node {follower} back in the set {rejoined:?} after its restart");
    }
}

/// A follower whose data directory was wiped comes back on its address
/// under a new node id, and the others admit that id: it is the member at
/// its address, in the leader's replication set (as a learner), and reads
/// what was written before it came back. Its generation counted from 1
/// again, as low as its predecessor's, and the others kept the
/// predecessor's entry (which the new process answered for): the node
/// waited outside, 30 s and more.
#[test]
fn a_wiped_follower_rejoins_under_its_new_id() {
    let mut c = Cluster::start(&[149, 150, 151]);
    let (leader, _) = c.leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let old_id = c.node_id(follower);
    let (code, body) = support::put(&c.url(leader), "before/wipe", "v1", None);
    assert_eq!(code, 201, "{body}");
    let new_id = c.wipe(follower);
    assert!(
        !new_id.is_empty() && new_id != old_id,
        "a wiped node comes back under a new id: {new_id:?}"
    );
    let addr = c.status(follower)["local_addr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let admitted = wait_until(Duration::from_secs(10), || {
        let s = c.status(leader);
        let at_addr = s["nodes"].as_array().and_then(|nodes| {
            nodes
                .iter()
                .find(|m| m["address"] == addr.as_str())
                .cloned()
        });
        at_addr.is_some_and(|m| m["id"] == new_id.as_str() && m["state"] == "alive")
            && c.replication_set(leader)
                .is_some_and(|set| set.contains(&new_id))
    });
    let admitted = admitted.unwrap_or_else(|| {
        panic!(
            "the leader never admitted the new id {new_id} at {addr}: {}",
            c.status(leader)
        )
    });
    assert_eq!(
        support::cluster::read(&c.url(follower), "before/wipe").as_deref(),
        Some("v1")
    );
    eprintln!("the wiped follower was in the leader's set {admitted:?} after its restart");
}

/// A follower that alone stops hearing the leader (a one-way partition:
/// what it sends still arrives) asks for pre-votes, and the other two,
/// still hearing the leader, refuse them. So it promises nothing new, and
/// when it hears the leader again it follows it: the leadership and the
/// epoch never move. Without the pre-vote its own promise fenced the
/// leader off once the partition healed.
#[test]
fn a_follower_that_stops_hearing_the_leader_does_not_unseat_it() {
    let c = Cluster::start(&[144, 145, 146]);
    let (leader, epoch) = c.leader(Duration::from_secs(20));
    let leader_id = c.node_id(leader);
    let deaf = (leader + 1) % 3;
    c.fault(deaf, serde_json::json!({"block_in": [leader_id]}));
    // Several leases of deafness: long past the point where it would
    // campaign. (Writes stall meanwhile until the leader drops it from its
    // set, after `ack_timeout`: it receives nothing, so it acknowledges
    // nothing.)
    std::thread::sleep(TIMEOUT * 4);
    assert_eq!(
        c.status(deaf)["promised_epoch"],
        epoch,
        "the deaf follower promised a newer epoch"
    );
    c.fault(deaf, serde_json::json!({"block_in": []}));
    let back = wait_until(Duration::from_secs(10), || {
        let s = c.status(deaf);
        s["leader"] == leader_id.as_str() && s["leader_healthy"] == true
    })
    .expect("the follower follows the leader again");
    // A few leases more: a fenced leader would have stepped down by now.
    std::thread::sleep(TIMEOUT * 2);
    assert_eq!(
        c.leader(Duration::from_secs(10)),
        (leader, epoch),
        "the leadership moved"
    );
    let (code, body) = support::put(&c.url(deaf), "after", "v", None);
    assert_eq!(code, 201, "a write through the follower: {body}");
    assert_eq!(
        support::cluster::read(&c.url(deaf), "after").as_deref(),
        Some("v")
    );
    eprintln!("the follower followed the leader again {back:?} after the partition healed");
}
