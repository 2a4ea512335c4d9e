//! Who votes (DESIGN.md, "Who votes"), on real nodes: a node whose data
//! directory was wiped comes back under a new id, as a learner, and cannot
//! vote away writes it forgot.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Cluster, TIMEOUT};
use support::{client, put};

/// The voter set node `i` reports (empty when it does not answer).
fn voters(c: &Cluster, i: usize) -> Vec<String> {
    c.status(i)["voters"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// In a five-node cluster with `replicas: 3`: the first three elect and
/// become the voters while nodes 3 and 4 are down (every node waits a
/// lease after boot, so they are stopped before the first election), then
/// 3 and 4 join as learners. Returns the leader and the voters' ids.
fn learners_join(c: &mut Cluster) -> (usize, Vec<String>) {
    c.kill(3);
    c.kill(4);
    let (leader, _) = c.leader(Duration::from_secs(20));
    let first: Vec<String> = (0..3).map(|i| c.node_id(i)).collect();
    let want = sorted(first.clone());
    assert!(
        wait_for(Duration::from_secs(15), || (0..3)
            .all(|i| sorted(voters(c, i)) == want)),
        "the first three are the voters"
    );
    c.restart(3);
    c.restart(4);
    for learner in [3, 4] {
        assert!(
            wait_for(Duration::from_secs(15), || c.status(learner)["voter"]
                == false),
            "node {learner} is a learner: {}",
            c.status(learner)
        );
    }
    (leader, first)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The value of `path` on node `i`, once it serves the read.
fn read(c: &Cluster, i: usize, path: &str) -> Option<String> {
    use base64::Engine as _;
    let r = client()
        .get(format!("{}/api/v1/file/{path}", c.url(i)))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let body: Value = r.json().ok()?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(body["data"].as_str()?)
        .ok()?;
    String::from_utf8(data).ok()
}

/// Leader A and follower B acknowledge writes while C is down; B's data
/// directory is wiped and B restarted; A is killed; C is started. B (a new
/// id, not a voter) and C (behind) must elect no leader; once A is back,
/// every acknowledged write is on every node.
#[test]
fn a_wiped_node_cannot_vote_away_writes_it_forgot() {
    let mut c = Cluster::start(&[101, 102, 103]);
    let (a, _) = c.leader(Duration::from_secs(20));
    let (b, cc) = ((a + 1) % 3, (a + 2) % 3);
    let ids: Vec<String> = (0..3).map(|i| c.node_id(i)).collect();
    assert!(
        wait_for(Duration::from_secs(15), || (0..3).all(|i| {
            let mut v = voters(&c, i);
            v.sort();
            let mut all = ids.clone();
            all.sort();
            v == all
        })),
        "every node names all three as voters: {:?}",
        (0..3).map(|i| voters(&c, i)).collect::<Vec<_>>()
    );

    c.kill(cc);
    let mut acked = Vec::new();
    for n in 0..20 {
        let path = format!("wipe/k{n}");
        let value = format!("v{n}");
        let (status, _) = put(&c.url(a), &path, &value, None);
        if status == 201 {
            acked.push((path, value));
        }
    }
    assert!(
        acked.len() >= 15,
        "A and B acknowledge writes: {}",
        acked.len()
    );

    // B loses its disk: a new data directory, so a new node id.
    let b_id = c.wipe(b);
    assert!(
        !b_id.is_empty() && b_id != ids[b],
        "a wiped node comes back under a new id: {b_id:?}"
    );
    c.kill(a);
    c.restart(cc);

    // B and C: no leader, and writes are refused, for several leases.
    let quiet_until = Instant::now() + TIMEOUT * 6;
    while Instant::now() < quiet_until {
        for i in [b, cc] {
            let status = c.status(i);
            assert_ne!(
                status["is_leader"], true,
                "node {i} leads with only a wiped node and a stale one: {status}"
            );
        }
        let (status, _) = put(&c.url(cc), "wipe/after", "lost?", None);
        assert_ne!(status, 201, "a write was acknowledged without A");
        std::thread::sleep(Duration::from_millis(200));
    }

    c.restart(a);
    c.leader(Duration::from_secs(20));
    for i in 0..3 {
        for (path, value) in &acked {
            assert!(
                wait_for(Duration::from_secs(15), || read(&c, i, path).as_deref()
                    == Some(value.as_str())),
                "node {i} has {path} = {value}"
            );
        }
    }
    // Caught up, the wiped node knows the voter set and is not in it.
    assert!(
        wait_for(Duration::from_secs(10), || c.status(b)["voter"] == false),
        "the wiped node is a learner: {}",
        c.status(b)
    );
    let mut old = ids.clone();
    old.sort();
    for i in 0..3 {
        let mut v = voters(&c, i);
        v.sort();
        assert_eq!(v, old, "node {i} names the original voters");
    }
}

/// Three voters and two learners (`replicas: 3`, five nodes): the learners
/// serve reads that never miss an acknowledged write, and a voter down
/// longer than `dead_voter_timeout` is replaced by a learner while writes
/// go on; every node then names the same voter set.
#[test]
fn learners_serve_reads_and_replace_a_dead_voter() {
    let mut c = Cluster::start_with_env(
        &[104, 105, 106, 107, 108],
        &[
            ("PIKA_CLUSTER_REPLICAS", "3"),
            ("PIKA_CLUSTER_DEAD_VOTER_TIMEOUT", "3s"),
        ],
    );
    let (leader, first) = learners_join(&mut c);

    // Each write, read right after its 201 on a learner.
    for n in 0..10 {
        let path = format!("learn/k{n}");
        let value = format!("v{n}");
        let (status, _) = put(&c.url(leader), &path, &value, None);
        assert_eq!(status, 201);
        let learner = 3 + n % 2;
        assert!(
            wait_for(Duration::from_secs(5), || read(&c, learner, &path)
                .is_some()),
            "learner {learner} serves reads"
        );
        assert_eq!(read(&c, learner, &path).as_deref(), Some(value.as_str()));
    }

    // A voter (not the leader) dies for good: a learner takes its place.
    let dead = (leader + 1) % 3;
    let dead_id = first[dead].clone();
    c.kill(dead);
    let live: Vec<usize> = (0..5).filter(|i| *i != dead).collect();
    assert!(
        wait_for(Duration::from_secs(30), || live.iter().all(|i| {
            let v = voters(&c, *i);
            v.len() == 3 && !v.contains(&dead_id)
        })),
        "the dead voter was replaced: {:?}",
        live.iter().map(|i| voters(&c, *i)).collect::<Vec<_>>()
    );
    let set = sorted(voters(&c, live[0]));
    for i in &live {
        assert_eq!(
            sorted(voters(&c, *i)),
            set,
            "node {i} names the same voter set"
        );
    }
    let (leader, _) = c.leader(Duration::from_secs(20));
    let (status, _) = put(&c.url(leader), "learn/after", "still writing", None);
    assert_eq!(status, 201, "writes go on");
}

/// The ids node `i` reports in `replicas_conflicts`, with their `replicas`.
fn conflicts(c: &Cluster, i: usize) -> Vec<(String, u64)> {
    c.status(i)["replicas_conflicts"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| Some((x["id"].as_str()?.to_string(), x["replicas"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A new cluster in which one node of three says `replicas: 5`: it cannot
/// lead (a candidate without a voter set is granted only by nodes with the
/// same `replicas`), the other two elect one of them, and the difference
/// is reported on both sides. Once the cluster has a voter set, the odd
/// node follows it and serves reads like any voter.
#[test]
fn a_node_with_different_replicas_is_refused_and_reported() {
    let mut c = Cluster::start(&[109, 110, 111]);
    // Every node waits a lease (1 s) after boot before granting: the odd
    // configuration is in place before the first election.
    c.restart_with_env(2, &[("PIKA_CLUSTER_REPLICAS", "5")]);
    let (leader, _) = c.leader(Duration::from_secs(20));
    assert_ne!(leader, 2, "the node with replicas 5 must not lead");
    let odd = c.node_id(2);
    let leader_id = c.node_id(leader);
    assert!(
        wait_for(Duration::from_secs(10), || conflicts(&c, leader)
            .contains(&(odd.clone(), 5))),
        "the leader reports the odd node's replicas: {}",
        c.status(leader)
    );
    assert!(
        wait_for(Duration::from_secs(10), || conflicts(&c, 2)
            .contains(&(leader_id.clone(), 3))),
        "the odd node reports the leader's replicas: {}",
        c.status(2)
    );
    let (status, _) = put(&c.url(leader), "odd/k", "v", None);
    assert_eq!(status, 201);
    assert!(
        wait_for(Duration::from_secs(5), || read(&c, 2, "odd/k").as_deref()
            == Some("v")),
        "the odd node follows and serves reads"
    );
    // Fixed: the difference is forgotten on the next message.
    c.restart_with_env(2, &[]);
    assert!(
        wait_for(Duration::from_secs(15), || conflicts(&c, leader).is_empty()
            && c.status(2)["replicas_conflicts"]
                .as_array()
                .is_some_and(|v| v.is_empty())),
        "fixed on both sides: {} / {}",
        c.status(leader),
        c.status(2)
    );
}

/// `pika recover --force-new-voter-set` on node `i`'s data directory.
fn recover(c: &Cluster, i: usize) -> std::process::Output {
    std::process::Command::new(support::PIKA)
        .args(["recover", "--force-new-voter-set", "--data-dir"])
        .arg(c.data_dir(i))
        .env("PIKA_LOG_LEVEL", "error")
        .output()
        .expect("run pika recover")
}

/// Two voters of three are lost for good (their disks are gone): the one
/// left has every acknowledged write but no quorum. `pika recover` refuses
/// while that node runs; on the stopped node it makes a voter set of one,
/// which leads with every write, and nodes on new, empty data directories
/// join as learners and are promoted back to three voters.
#[test]
fn a_lost_quorum_is_recovered_with_a_new_voter_set_of_one() {
    let mut c = Cluster::start(&[112, 113, 114]);
    let (a, _) = c.leader(Duration::from_secs(20));
    let mut acked = Vec::new();
    for n in 0..10 {
        let path = format!("recover/k{n}");
        let value = format!("v{n}");
        let (status, _) = put(&c.url(a), &path, &value, None);
        assert_eq!(status, 201);
        acked.push((path, value));
    }
    let a_id = c.node_id(a);
    let others: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    for &i in &others {
        c.kill(i);
        std::fs::remove_dir_all(c.data_dir(i)).expect("lose the disk");
    }
    let (status, _) = put(&c.url(a), "recover/lost", "no quorum", None);
    assert_ne!(status, 201, "one voter of three acknowledges nothing");

    let refused = recover(&c, a);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "refused while the node runs: {refused:?}"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("still running"),
        "{refused:?}"
    );
    let missing = std::process::Command::new(support::PIKA)
        .args(["recover", "--force-new-voter-set", "--data-dir"])
        .arg(c.dir.path().join("nowhere"))
        .output()
        .expect("run pika recover");
    assert_eq!(missing.status.code(), Some(2), "not a data directory");

    c.kill(a);
    let done = recover(&c, a);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    c.restart(a);
    assert!(
        wait_for(Duration::from_secs(20), || voters(&c, a)
            == vec![a_id.clone()]
            && c.status(a)["is_leader"] == true),
        "the recovered node leads a set of one: {}",
        c.status(a)
    );
    for (path, value) in &acked {
        assert_eq!(read(&c, a, path).as_deref(), Some(value.as_str()));
    }
    let (status, _) = put(&c.url(a), "recover/after", "writes again", None);
    assert_eq!(status, 201);

    for &i in &others {
        c.restart(i);
    }
    assert!(
        wait_for(Duration::from_secs(30), || (0..3)
            .all(|i| voters(&c, i).len() == 3)),
        "the set grows back to three: {:?}",
        (0..3).map(|i| voters(&c, i)).collect::<Vec<_>>()
    );
    for i in 0..3 {
        for (path, value) in &acked {
            assert!(
                wait_for(Duration::from_secs(10), || read(&c, i, path).as_deref()
                    == Some(value.as_str())),
                "node {i} has {path}"
            );
        }
    }
}

/// Three voters and two learners fed in batches
/// (`cluster.learner_feed: batched`): the learners stay out of the
/// replication set and catch up from the leader's tick, yet a read on one
/// right after a write's 201 returns that write (it asks the leader for
/// its commit index and applies through it first); writes never wait for
/// them.
#[test]
fn learners_fed_in_batches_stay_out_of_the_set_and_read_after_one_round_trip() {
    let mut c = Cluster::start_with_env(
        &[112, 113, 114, 115, 116],
        &[
            ("PIKA_CLUSTER_REPLICAS", "3"),
            ("PIKA_CLUSTER_LEARNER_FEED", "batched"),
        ],
    );
    let (leader, _) = learners_join(&mut c);
    for n in 0..20 {
        let path = format!("batched/k{n}");
        let value = format!("v{n}");
        let (status, _) = put(&c.url(leader), &path, &value, None);
        assert_eq!(status, 201);
        let learner = 3 + n % 2;
        assert_eq!(
            read(&c, learner, &path).as_deref(),
            Some(value.as_str()),
            "learner {learner} reads the write acknowledged just before"
        );
    }
    assert!(
        c.counter(3, "pika_reads_by_read_index_total") > 0.0,
        "the learner read by the leader's commit index"
    );
    // A write through a learner goes to the leader like any follower's.
    let (status, body) = put(&c.url(3), "batched/via-learner", "w", None);
    assert_eq!(status, 201, "{body}");
    assert_eq!(read(&c, 4, "batched/via-learner").as_deref(), Some("w"));
    let set = c.replication_set(leader).unwrap_or_default();
    assert_eq!(set.len(), 2, "only the voters are in the set: {set:?}");
    // Caught up, an idle learner is sent nothing but heartbeats: no batch
    // goes out again.
    std::thread::sleep(Duration::from_secs(1));
    let fed = c.counter(leader, "pika_catch_up_entries_total");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.counter(leader, "pika_catch_up_entries_total"), fed);
    // Writes go on with both learners gone.
    c.kill(3);
    c.kill(4);
    let (status, _) = put(&c.url(leader), "batched/after", "x", None);
    assert_eq!(status, 201);
}
