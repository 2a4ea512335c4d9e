//! The watch API (`GET /api/v1/watch`): changes in revision order, prefix
//! filters, resumption by `from_revision` and `Last-Event-ID`, keep-alives,
//! and no gap across a follower's restart.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod support;

use support::{Sse, client, next_events, spawn, sse, wait_until_it_may_read};

fn put(url: &str, path: &str, value: &str) -> Value {
    let (status, ack) = support::put(url, path, value, None);
    assert_eq!(status, 201, "write {path}: {ack}");
    ack
}

fn delete(url: &str, path: &str) {
    let response = client()
        .delete(format!("{url}/api/v1/file/{path}"))
        .send()
        .expect("the delete is answered");
    assert_eq!(response.status().as_u16(), 204, "delete {path}");
}

fn summary(events: &[Value]) -> Vec<(u64, String, u64, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap_or(0),
                e["path"].as_str().unwrap_or_default().to_string(),
                e["version"].as_u64().unwrap_or(0),
                e["op"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_watch_sends_matching_changes_in_order_resumes_and_keeps_alive() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = &node.url;
    put(url, "other/before", "0");

    // From now, under app/ only.
    let watch = sse(&format!("{url}/api/v1/watch?prefix=app/"), &[]);
    put(url, "app/a", "1");
    put(url, "other/b", "1");
    put(url, "app/a", "2");
    delete(url, "app/a");
    let events = next_events(&watch, 3, Duration::from_secs(10));
    assert_eq!(
        summary(&events),
        vec![
            (2, "app/a".into(), 1, "put".into()),
            (4, "app/a".into(), 2, "put".into()),
            (5, "app/a".into(), 3, "delete".into()),
        ]
    );
    assert!(events.iter().all(|e| e["epoch"] == 0), "{events:?}");

    // Idle: a keep-alive comment within its interval.
    let idle = watch
        .recv_timeout(Duration::from_secs(8))
        .expect("something within 8 s");
    assert!(
        matches!(idle, Sse::Comment(ref c) if c == "keep-alive"),
        "{idle:?}"
    );

    // Every change from revision 3, ids are revisions.
    let from = sse(&format!("{url}/api/v1/watch?from_revision=3"), &[]);
    match from.recv_timeout(Duration::from_secs(5)) {
        Ok(Sse::Event { id, data, .. }) => {
            assert_eq!(id.as_deref(), Some("3"));
            assert_eq!(data["path"], "other/b");
        }
        other => panic!("expected revision 3, got {other:?}"),
    }
    // Last-Event-ID (what EventSource sends on reconnect) wins over
    // from_revision: the changes after it.
    let resumed = sse(
        &format!("{url}/api/v1/watch?from_revision=1"),
        &[("Last-Event-ID", "4")],
    );
    let events = next_events(&resumed, 1, Duration::from_secs(5));
    assert_eq!(
        summary(&events),
        vec![(5, "app/a".into(), 3, "delete".into())]
    );

    for (query, header) in [
        ("from_revision=soon", None),
        ("prefix=a&unknown=1", None),
        ("", Some("not a number")),
    ] {
        let mut request = client().get(format!("{url}/api/v1/watch?{query}"));
        if let Some(h) = header {
            request = request.header("Last-Event-ID", h);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query} {header:?}");
        let body: Value = response.json().expect("a JSON error");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// A client watching a follower loses nothing when the follower restarts:
/// it resumes with `from_revision` after its last event and gets every
/// change the leader made meanwhile, in order, with no gap.
#[test]
fn a_follower_watch_resumed_from_a_revision_has_no_gap_across_a_restart() {
    use pika_campaign::cluster::{Cluster, Options};
    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    let options = Options {
        network: pika_campaign::Network::Loopback,
        test_hooks: false,
        env: Vec::new(),
        tmpfs_mb: None,
        learners: 0,
    };
    let mut cluster = Cluster::start_with(pika, 140, &[1.0, 1.0, 1.0], options).expect("3 nodes");
    let leader = cluster
        .leader(Duration::from_secs(15))
        .expect("a leader elected");
    let follower = (leader + 1) % 3;
    let leader_url = cluster.nodes[leader].url.clone();
    let follower_url = cluster.nodes[follower].url.clone();

    wait_until_it_may_read(&follower_url);
    let watch = sse(&format!("{follower_url}/api/v1/watch?from_revision=1"), &[]);
    for i in 0..20 {
        put(&leader_url, &format!("w/{}", i % 7), &i.to_string());
    }
    let mut seen = next_events(&watch, 20, Duration::from_secs(15));
    assert_eq!(seen.len(), 20, "the follower's watch saw {seen:?}");

    cluster.kill(follower);
    for i in 20..40 {
        put(&leader_url, &format!("w/{}", i % 7), &i.to_string());
    }
    cluster.restart(follower).expect("the follower restarts");
    wait_until_it_may_read(&follower_url);
    let last = seen
        .last()
        .and_then(|e| e["revision"].as_u64())
        .expect("a last revision");
    let resumed = sse(
        &format!("{follower_url}/api/v1/watch?from_revision={}", last + 1),
        &[],
    );
    seen.extend(next_events(&resumed, 20, Duration::from_secs(20)));

    let truth = sse(&format!("{leader_url}/api/v1/watch?from_revision=1"), &[]);
    let truth = next_events(&truth, 40, Duration::from_secs(10));
    assert_eq!(truth.len(), 40);
    // The leader's lock records (under the reserved `pika/`) take
    // revisions too but are never streamed: "no gap" is "every change the
    // leader's own watch shows", in order.
    let revisions: Vec<u64> = summary(&seen).iter().map(|s| s.0).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in order: {revisions:?}"
    );
    assert_eq!(summary(&seen), summary(&truth), "no gap");
}

/// A watch on a follower is a read that goes on: once the follower is cut
/// off from the leader and its read permission has run out, the stream
/// ends with an `unavailable` event naming the revision to resume from.
/// It used to send keep-alives and nothing else while the cluster moved on.
#[test]
fn a_watch_on_a_follower_cut_off_from_the_leader_ends_unavailable() {
    use support::cluster::Cluster;
    let c = Cluster::start(&[177, 178, 179]);
    let (leader, _) = c.leader(Duration::from_secs(20));
    let cut = (leader + 1) % 3;
    wait_until_it_may_read(&c.url(cut));
    let rx = sse(&format!("{}/api/v1/watch?prefix=cut/", c.url(cut)), &[]);
    let ack = put(&c.url(leader), "cut/a", "1");
    assert_eq!(next_events(&rx, 1, Duration::from_secs(5)).len(), 1);
    let others: Vec<String> = (0..3).filter(|&i| i != cut).map(|i| c.node_id(i)).collect();
    c.fault(
        cut,
        serde_json::json!({"block_in": others, "block_out": others}),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let said = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(Sse::Event { name, data, .. }) if name == "unavailable" => break data,
            Ok(Sse::Event { name, data, .. }) => panic!("unexpected {name:?} event: {data}"),
            Ok(Sse::Comment(_)) => continue,
            Ok(Sse::Closed) => panic!("the watch ended without saying why"),
            Err(_) => panic!("the watch went on for 15 s on a node cut off from the leader"),
        }
    };
    assert!(
        said["last_revision"].as_u64() >= ack["revision"].as_u64(),
        "{said} after {ack}"
    );
    assert!(
        matches!(rx.recv_timeout(Duration::from_secs(5)), Ok(Sse::Closed)),
        "the stream ends after saying so"
    );
}

/// A watch opened with an API token goes on only while the token does:
/// revoked, the stream ends with an `unauthorized` event within about a
/// second. It used to go on streaming paths, versions and authors to a
/// token every other request refused.
#[test]
fn a_watch_ends_when_its_token_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let created: Value = client()
        .post(format!("{url}/api/v1/tokens"))
        .json(&serde_json::json!({"name": "watcher", "scopes": ["w/**:read"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = created["token"].as_str().expect("a token").to_string();
    let bearer = format!("Bearer {token}");
    let rx = sse(
        &format!("{url}/api/v1/watch?prefix=w/"),
        &[("authorization", bearer.as_str())],
    );
    put(url, "w/a", "1");
    assert_eq!(next_events(&rx, 1, Duration::from_secs(5)).len(), 1);
    let revoked = client()
        .delete(format!("{url}/api/v1/tokens/watcher"))
        .send()
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(Sse::Event { name, .. }) if name == "unauthorized" => break,
            Ok(Sse::Event { name, data, .. }) => panic!("unexpected {name:?} event: {data}"),
            Ok(Sse::Comment(_)) => continue,
            Ok(Sse::Closed) => panic!("the watch ended without saying why"),
            Err(_) => panic!("the watch went on for 10 s after its token was revoked"),
        }
    }
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(Sse::Closed)
    ));
}
