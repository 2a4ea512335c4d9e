//! The store's contract: versions, compare-and-set, deletes, bounded history,
//! folder listings, durability across reopen, and Merkle digests that always
//! equal a from-scratch recomputation.

use pika_replication::store::Snapshot;
use pika_replication::{ConfigPath, Format, Meta, Op, OpError, Store};
use proptest::prelude::*;

fn path(p: &str) -> ConfigPath {
    ConfigPath::new(p).expect("valid test path")
}

fn put(p: &str, data: &str, expected: Option<u64>) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    Op::put(path(p), meta, data.as_bytes().to_vec(), expected).expect("valid text")
}

fn open(dir: &tempfile::TempDir, history: u64) -> Store {
    Store::open(dir.path(), history).expect("open store")
}

fn data_of(store: &Store, p: &str, version: Option<u64>) -> Option<Vec<u8>> {
    match store.get(p, version).expect("read")?.kind {
        pika_replication::ChangeKind::Put { data, .. } => Some(data),
        pika_replication::ChangeKind::Delete => None,
    }
}

#[test]
fn versions_and_revisions_count_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 20);
    let r = store
        .execute(
            &[
                put("a/x", "1", None),
                put("a/y", "1", None),
                put("a/x", "2", None),
            ],
            0,
            7,
        )
        .unwrap();
    let applied: Vec<_> = r.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        applied
            .iter()
            .map(|a| (a.version, a.revision))
            .collect::<Vec<_>>(),
        [(1, 1), (1, 2), (2, 3)]
    );
    assert_eq!(store.revision(), 3);
    assert_eq!(data_of(&store, "a/x", None).unwrap(), b"2");
    assert_eq!(data_of(&store, "a/x", Some(1)).unwrap(), b"1");
    let change = store.get("a/x", None).unwrap().unwrap();
    assert_eq!(
        (change.version, change.revision, change.created_at_ms),
        (2, 3, 7)
    );
}

#[test]
fn compare_and_set_refuses_stale_versions_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 20);
    store.execute(&[put("k", "v1", Some(0))], 0, 0).unwrap()[0]
        .clone()
        .unwrap();
    let root_before = store.merkle().unwrap().root();
    let r = store
        .execute(
            &[put("k", "stale", Some(0)), put("k", "stale", Some(2))],
            0,
            0,
        )
        .unwrap();
    assert_eq!(
        r[0],
        Err(OpError::VersionMismatch {
            path: "k".into(),
            expected: 0,
            current: 1
        })
    );
    assert!(matches!(
        r[1],
        Err(OpError::VersionMismatch {
            expected: 2,
            current: 1,
            ..
        })
    ));
    assert_eq!(data_of(&store, "k", None).unwrap(), b"v1");
    assert_eq!(store.merkle().unwrap().root(), root_before);
    assert_eq!(store.revision(), 1);
    // The right version wins, and an op sees the effect of the one before it in a batch.
    let r = store
        .execute(&[put("k", "v2", Some(1)), put("k", "v3", Some(2))], 0, 0)
        .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(data_of(&store, "k", None).unwrap(), b"v3");
}

#[test]
fn deletes_leave_a_tombstone_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 20);
    store.execute(&[put("k", "v1", None)], 0, 0).unwrap();
    let r = store
        .execute(&[Op::delete(path("k"), Some(1))], 0, 0)
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap().version, 2);
    let entry = store.entry("k").unwrap().unwrap();
    assert!(entry.deleted);
    assert!(store.get("k", None).unwrap().unwrap().is_delete());
    // Deleting again, or a path never written, is NotFound.
    let r = store
        .execute(
            &[Op::delete(path("k"), None), Op::delete(path("nope"), None)],
            0,
            0,
        )
        .unwrap();
    assert_eq!(r[0], Err(OpError::NotFound("k".into())));
    assert_eq!(r[1], Err(OpError::NotFound("nope".into())));
    // A deleted path is "absent" for CAS, and versions keep counting.
    let r = store.execute(&[put("k", "again", Some(0))], 0, 0).unwrap();
    assert_eq!(r[0].as_ref().unwrap().version, 3);
    let history = store.versions("k").unwrap().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|v| (v.version, v.deleted))
            .collect::<Vec<_>>(),
        [(1, false), (2, true), (3, false)]
    );
    assert_eq!(store.versions("nope").unwrap(), None);
}

#[test]
fn history_is_pruned_to_the_configured_depth() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 3);
    for i in 1..=10 {
        store
            .execute(&[put("k", &i.to_string(), None)], 0, 0)
            .unwrap();
    }
    let kept: Vec<u64> = store
        .versions("k")
        .unwrap()
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, [8, 9, 10]);
    assert!(store.get("k", Some(7)).unwrap().is_none());
    assert_eq!(data_of(&store, "k", Some(8)).unwrap(), b"8");
}

#[test]
fn folders_list_live_children_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 20);
    let ops = [
        put("team/app/prod.yaml", "a", None),
        put("team/app/dev.yaml", "a", None),
        put("team/app-b", "a", None),
        put("team/readme", "a", None),
        put("team/gone/x", "a", None),
        put("other", "a", None),
    ];
    store.execute(&ops, 0, 0).unwrap();
    store
        .execute(&[Op::delete(path("team/gone/x"), None)], 0, 0)
        .unwrap();
    let names = |folder: &str| -> Vec<(String, bool)> {
        store
            .list_folder(folder)
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.file.is_some()))
            .collect()
    };
    assert_eq!(
        names("team"),
        [
            ("app".into(), false),
            ("app-b".into(), true),
            ("readme".into(), true)
        ]
    );
    assert_eq!(names(""), [("other".into(), true), ("team".into(), false)]);
    assert_eq!(
        names("team/app"),
        [("dev.yaml".into(), true), ("prod.yaml".into(), true)]
    );
    assert!(names("nothing").is_empty());
}

/// The shell applies sooner while anyone waits on the store's changes
/// (watches, blocking queries): it learns that from this count.
#[test]
fn a_subscriber_is_counted_as_a_watcher_until_it_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 20);
    assert_eq!(store.watchers(), 0);
    let first = store.subscribe();
    let second = store.subscribe();
    assert_eq!(store.watchers(), 2);
    drop(first);
    assert_eq!(store.watchers(), 1);
    store.execute(&[put("a", "1", None)], 0, 0).unwrap();
    assert!(
        second.has_changed().unwrap(),
        "the one left hears of the write"
    );
    drop(second);
    assert_eq!(store.watchers(), 0);
}

#[test]
fn everything_survives_reopen_including_the_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let (id, root) = {
        let store = open(&dir, 20);
        assert_eq!(store.generation(), 1, "first boot");
        store
            .execute(&[put("a", "1", None), put("b", "2", None)], 0, 0)
            .unwrap();
        let out = (store.node_id().to_string(), store.merkle().unwrap().root());
        store.close().unwrap();
        out
    };
    let store = open(&dir, 20);
    assert_eq!(store.node_id(), id);
    assert_eq!(store.generation(), 2, "each open is a new boot generation");
    assert_eq!(store.revision(), 2);
    assert_eq!(store.merkle().unwrap().root(), root);
    assert_eq!(data_of(&store, "b", None).unwrap(), b"2");
}

/// A node raises its generation to the wall clock at each start: kept
/// durably, counted on from at the next open, and never lowered (a clock
/// set back does not make a later start look older).
#[test]
fn a_raised_generation_is_kept_and_never_lowered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir, 20);
        assert_eq!(store.raise_generation(1_000).unwrap(), 1_000);
        assert_eq!(store.generation(), 1_000);
        store.close().unwrap();
    }
    let store = open(&dir, 20);
    assert_eq!(store.generation(), 1_001, "the next open counts on");
    assert_eq!(store.raise_generation(5).unwrap(), 1_001, "never lowered");
    assert_eq!(store.generation(), 1_001);
}

#[test]
fn created_revision_is_kept_across_updates_and_restarts_after_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 20);
    store.execute(&[put("k", "1", None)], 0, 0).unwrap(); // revision 1
    store.execute(&[put("other", "x", None)], 0, 0).unwrap(); // 2
    store.execute(&[put("k", "2", None)], 0, 0).unwrap(); // 3
    let latest = store.get("k", None).unwrap().expect("k");
    assert_eq!((latest.revision, latest.created_revision), (3, 1));
    store.execute(&[Op::delete(path("k"), None)], 0, 0).unwrap(); // 4
    let tombstone = store.entry("k").unwrap().expect("a tombstone");
    assert_eq!(
        tombstone.created_revision, 1,
        "a delete keeps what it ended"
    );
    store.execute(&[put("k", "3", None)], 0, 0).unwrap(); // 5
    let reborn = store.get("k", None).unwrap().expect("k");
    assert_eq!((reborn.revision, reborn.created_revision), (5, 5));
    let under = store.latest_under("", |p| p != "other").unwrap();
    assert_eq!(under.live.len(), 1);
    assert_eq!(under.index, 5, "the hidden path counts toward nothing");
}

/// Writes `value` under `key` in the node table of the store file in
/// `dir`, as another release would have left it.
fn set_node_key(dir: &std::path::Path, key: &str, value: u64) {
    let db = redb::Database::create(dir.join(pika_replication::store::DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let node: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("node");
        let mut table = txn.open_table(node).unwrap();
        table.insert(key, value.to_le_bytes().as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// Why the store in `dir` does not open.
fn refusal(dir: &std::path::Path) -> String {
    Store::open(dir, 20).err().expect("refused").to_string()
}

#[test]
fn a_data_directory_in_a_format_this_release_does_not_read_is_refused_with_the_reason() {
    // What format 1 left: a node table with a revision, no format key.
    let dir = tempfile::tempdir().unwrap();
    set_node_key(dir.path(), "revision", 7);
    let error = refusal(dir.path());
    assert!(error.contains("record format 1"), "{error}");
    assert!(error.contains("empty data directory"), "{error}");

    // A file a newer release wrote: refused, saying so, never laid out.
    let newer = tempfile::tempdir().unwrap();
    open(&newer, 20).close().unwrap();
    set_node_key(newer.path(), "record_format", 99);
    let error = refusal(newer.path());
    assert!(error.contains("newer pika, in store format 99"), "{error}");
    assert!(error.contains("run the release that wrote it"), "{error}");

    // A fresh directory gets the current format, and opens again.
    let fresh = tempfile::tempdir().unwrap();
    open(&fresh, 20).close().unwrap();
    assert_eq!(open(&fresh, 20).revision(), 0);
}

#[derive(Debug, Clone)]
enum Action {
    Put(u8, u8),
    Delete(u8),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0u8..40, any::<u8>()).prop_map(|(p, v)| Action::Put(p, v)),
        1 => (0u8..40).prop_map(Action::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The digests maintained write by write equal the digests recomputed
    /// from the stored entries, whatever the mix and batching of ops.
    #[test]
    fn incremental_merkle_equals_recomputed(batches in prop::collection::vec(prop::collection::vec(action(), 1..12), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 4);
        for batch in batches {
            let ops: Vec<Op> = batch.iter().map(|a| match a {
                Action::Put(p, v) => put(&format!("p/{p}"), &v.to_string(), None),
                Action::Delete(p) => Op::delete(path(&format!("p/{p}")), None),
            }).collect();
            store.execute(&ops, 0, 0).unwrap();
            prop_assert_eq!(store.merkle().unwrap(), store.recompute_merkle().unwrap());
        }
    }

    /// The digests at an earlier revision, rebuilt from the state now and
    /// the changes since (a follower verifying at a revision it applied
    /// past), equal the digests the store had there; or there is no
    /// answer, only when some path changed more often since than the
    /// history keeps.
    #[test]
    fn digests_before_the_last_changes_equal_the_earlier_ones(batches in prop::collection::vec(prop::collection::vec(action(), 1..12), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let history = 4;
        let store = open(&dir, history);
        let mut points = vec![(store.merkle().unwrap(), 0usize)];
        let mut changes: Vec<pika_replication::record::SharedChange> = Vec::new();
        for batch in batches {
            let ops: Vec<Op> = batch.iter().map(|a| match a {
                Action::Put(p, v) => put(&format!("p/{p}"), &v.to_string(), None),
                Action::Delete(p) => Op::delete(path(&format!("p/{p}")), None),
            }).collect();
            let (_, made) = store.execute_then(&ops, 0, 0, |_| {}).unwrap();
            changes.extend(made.into_iter().map(std::sync::Arc::new));
            points.push((store.merkle().unwrap(), changes.len()));
        }
        for (then, at) in &points {
            let since = &changes[*at..];
            let mut counts = std::collections::HashMap::new();
            for c in since {
                *counts.entry(c.path.as_str()).or_insert(0u64) += 1;
            }
            match store.merkle_before(since).unwrap() {
                Some(rebuilt) => prop_assert_eq!(&rebuilt, then),
                None => prop_assert!(counts.values().any(|n| *n >= history)),
            }
        }
    }
}

/// Same content reached by different histories gives different roots only
/// where the versions differ: two stores fed the same ops agree exactly.
#[test]
fn identical_histories_give_identical_roots() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(&a_dir, 20), open(&b_dir, 20));
    let ops: Vec<Op> = (0..100)
        .map(|i| put(&format!("x/{}", i % 37), &i.to_string(), None))
        .collect();
    a.execute(&ops, 0, 0).unwrap();
    for op in &ops {
        b.execute(std::slice::from_ref(op), 0, 1).unwrap();
    }
    assert_eq!(a.merkle().unwrap().root(), b.merkle().unwrap().root());
    b.execute(&[put("x/1", "diverge", None)], 0, 0).unwrap();
    let differing = a.merkle().unwrap().differing(&b.merkle().unwrap());
    assert_eq!(differing, [pika_replication::merkle::bucket_of("x/1")]);
}

#[test]
fn a_follower_applying_the_leaders_changes_ends_identical() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(&ld, 3), open(&fd, 3));
    let mut shipped = Vec::new();
    for round in 0..5u32 {
        let ops = [
            put("a", &round.to_string(), None).with_author(Some(format!("deploy-{round}"))),
            put(&format!("b/{round}"), "x", None),
            Op::delete(path("nope"), None), // refused: not shipped
        ];
        let (results, changes) = leader
            .execute_then(&ops, 7, 1, |before| shipped.push(before.to_vec()))
            .unwrap();
        assert!(results[2].is_err());
        assert_eq!(shipped.last(), Some(&changes), "the hook sees what commits");
        follower.apply(&changes).unwrap();
    }
    assert_eq!(follower.revision(), leader.revision());
    assert_eq!(follower.position(), leader.position());
    assert_eq!(follower.position().epoch, 7);
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    let history = follower.versions("a").unwrap().unwrap();
    assert_eq!(Some(&history), leader.versions("a").unwrap().as_ref());
    assert_eq!(
        history.last().and_then(|v| v.author.as_deref()),
        Some("deploy-4"),
        "the author travels with the change to the follower"
    );
    assert_eq!(
        follower.recompute_merkle().unwrap().root(),
        follower.merkle().unwrap().root()
    );

    // Anything that does not continue the log is refused whole.
    let (_, next) = leader
        .execute_then(&[put("c", "1", None), put("d", "1", None)], 8, 1, |_| {})
        .unwrap();
    let before = follower.revision();
    assert!(matches!(
        follower.apply(&next[1..]),
        Err(pika_replication::store::ApplyError::Gap { .. })
    ));
    assert!(matches!(
        follower.apply(&shipped[0]),
        Err(pika_replication::store::ApplyError::Gap { .. })
    ));
    assert_eq!(follower.revision(), before);
    follower.apply(&next).unwrap();
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
}

#[test]
fn the_promised_epoch_and_position_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir, 20);
        assert_eq!(store.promised_epoch(), 0);
        store.set_promised_epoch(5).unwrap();
        store.execute(&[put("a", "1", None)], 4, 0).unwrap();
        store.close().unwrap();
    }
    let store = open(&dir, 20);
    assert_eq!(store.promised_epoch(), 5);
    assert_eq!(
        store.position(),
        pika_replication::election::Position {
            epoch: 4,
            revision: 1
        }
    );
}

#[test]
fn installing_the_differing_buckets_makes_a_diverged_follower_identical() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(&ld, 5), open(&fd, 5));
    // A common past of 200 paths.
    let common: Vec<Op> = (0..200)
        .map(|i| put(&format!("p/{i}"), "v1", None))
        .collect();
    let (_, changes) = leader.execute_then(&common, 1, 0, |_| {}).unwrap();
    follower.apply(&changes).unwrap();
    // The follower misses three writes (one a delete) and keeps one write
    // that was never acknowledged.
    leader
        .execute(
            &[
                put("p/1", "v2", None),
                put("new/x", "x", None),
                Op::delete(path("p/2"), None),
            ],
            2,
            0,
        )
        .unwrap();
    follower
        .execute(&[put("ghost", "unacked", None)], 1, 0)
        .unwrap();

    let snapshot = leader.snapshot().unwrap();
    let differing = snapshot.merkle().differing(&follower.merkle().unwrap());
    assert!(
        (1..=4).contains(&differing.len()),
        "buckets to move: {differing:?}"
    );
    let moved = install_buckets(&follower, &snapshot, &differing);
    assert!(moved <= 8, "moved {moved} paths of 201");

    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    assert_eq!(
        follower.recompute_merkle().unwrap(),
        follower.merkle().unwrap()
    );
    assert_eq!(follower.position(), leader.position());
    assert_eq!(data_of(&follower, "p/1", None).unwrap(), b"v2");
    assert!(follower.entry("p/2").unwrap().unwrap().deleted);
    assert_eq!(
        follower.versions("p/2").unwrap(),
        leader.versions("p/2").unwrap()
    );
    assert!(
        follower.entry("ghost").unwrap().is_none(),
        "the unacked write is gone"
    );
    // And the follower continues the leader's log from there.
    let (_, next) = leader
        .execute_then(&[put("after", "1", None)], 2, 0, |_| {})
        .unwrap();
    follower.apply(&next).unwrap();
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
}

#[test]
fn request_ids_travel_with_changes_so_a_new_leader_answers_a_retry_once() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(&ld, 5), open(&fd, 5));
    let op = put("x", "1", None).with_request_id(Some("req-7".into()));
    let (results, changes) = leader
        .execute_then(std::slice::from_ref(&op), 1, 0, |_| {})
        .unwrap();
    let applied = results[0].clone().unwrap();
    follower.apply(&changes).unwrap();
    assert_eq!(follower.applied_request("req-7").unwrap(), Some(applied));
    assert_eq!(follower.applied_request("other").unwrap(), None);

    // The follower now leads; the client's retry reaches its committer.
    let follower = std::sync::Arc::new(follower);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (queue, committer) = pika_replication::WriteQueue::start(
        follower.clone(),
        pika_replication::BatchLimits::default(),
    )
    .unwrap();
    let retried = runtime
        .block_on(queue.submit_once(put("x", "1", None), Some("req-7".into())))
        .unwrap();
    assert_eq!(retried, applied, "answered with the first result");
    assert_eq!(follower.revision(), 1, "not applied twice");
    drop(queue);
    committer.join().unwrap();
}

/// The watch API's feed: every change in revision order, paged, on the
/// leader and on a follower that applied the same changes, across reopen.
#[test]
fn the_feed_lists_every_change_in_order_and_survives_reopen() {
    use pika_replication::{FeedEvent, FeedPage};
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(&ld, 5);
    let follower = open(&fd, 5);
    let mut watch = follower.subscribe();
    let (_, changes) = leader
        .execute_then(
            &[
                put("a/x", "1", None),
                put("b/y", "1", None),
                put("a/x", "2", None),
            ],
            3,
            0,
            |_| {},
        )
        .unwrap();
    let (_, more) = leader
        .execute_then(&[Op::delete(path("b/y"), None)], 3, 0, |_| {})
        .unwrap();
    follower.apply(&changes).unwrap();
    follower.apply(&more).unwrap();
    assert!(watch.has_changed().unwrap(), "applying notifies watchers");
    assert_eq!(*watch.borrow_and_update(), 4);

    let event = |revision, path: &str, version, op| FeedEvent {
        revision,
        epoch: 3,
        path: path.into(),
        version,
        op,
        author: None,
    };
    let all = vec![
        event(1, "a/x", 1, "put"),
        event(2, "b/y", 1, "put"),
        event(3, "a/x", 2, "put"),
        event(4, "b/y", 2, "delete"),
    ];
    for store in [&leader, &follower] {
        assert_eq!(
            store.feed_after(0, 100).unwrap(),
            FeedPage::Events {
                events: all.clone(),
                through: 4
            }
        );
        assert_eq!(
            store.feed_after(1, 2).unwrap(),
            FeedPage::Events {
                events: all[1..3].to_vec(),
                through: 3
            },
            "a full page ends at its last event"
        );
        assert_eq!(
            store.feed_after(4, 100).unwrap(),
            FeedPage::Events {
                events: vec![],
                through: 4
            }
        );
    }
    drop(follower);
    let follower = open(&fd, 5);
    assert_eq!(
        follower.feed_after(2, 100).unwrap(),
        FeedPage::Events {
            events: all[2..].to_vec(),
            through: 4
        }
    );
}

/// A sync installs state without its changes: a watcher behind the
/// installed revision is told to list again, never silently skipped.
#[test]
fn a_sync_moves_the_feed_floor_so_old_watchers_learn_of_the_gap() {
    use pika_replication::FeedPage;
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(&ld, 5), open(&fd, 5));
    let (_, first) = leader
        .execute_then(&[put("p/1", "1", None)], 1, 0, |_| {})
        .unwrap();
    follower.apply(&first).unwrap();
    leader
        .execute(&[put("p/2", "1", None), put("p/3", "1", None)], 1, 0)
        .unwrap();
    let snapshot = leader.snapshot().unwrap();
    let differing = snapshot.merkle().differing(&follower.merkle().unwrap());
    install_buckets(&follower, &snapshot, &differing);
    assert_eq!(
        follower.feed_after(1, 100).unwrap(),
        FeedPage::Compacted {
            oldest: 4,
            current: 3
        }
    );
    let (_, next) = leader
        .execute_then(&[put("p/4", "1", None)], 1, 0, |_| {})
        .unwrap();
    follower.apply(&next).unwrap();
    match follower.feed_after(3, 100).unwrap() {
        FeedPage::Events { events, through } => {
            assert_eq!(through, 4);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].path, "p/4");
        }
        other => panic!("expected events, got {other:?}"),
    }
}

/// A repair that finds nothing to move (the buckets agreed after all, at
/// the revision the follower is at) leaves the feed alone: its watchers
/// missed nothing. It used to move the floor and send every one of them
/// back to list.
#[test]
fn an_install_that_changes_nothing_keeps_the_feed() {
    use pika_replication::FeedPage;
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(&ld, 5), open(&fd, 5));
    for i in 0..3 {
        let (_, batch) = leader
            .execute_then(&[put(&format!("p/{i}"), "1", None)], 1, 0, |_| {})
            .unwrap();
        follower.apply(&batch).unwrap();
    }
    let snapshot = leader.snapshot().unwrap();
    assert_eq!(snapshot.revision, follower.revision());
    assert_eq!(install_buckets(&follower, &snapshot, &[]), 0);
    match follower.feed_after(1, 100).unwrap() {
        FeedPage::Events { events, through } => {
            assert_eq!(through, 3);
            assert_eq!(events.len(), 2);
        }
        other => panic!("expected events, got {other:?}"),
    }
}

/// Installs the snapshot's contents of `buckets` on `follower` (whole
/// buckets, the repair mode); returns how many paths moved.
fn install_buckets(follower: &Store, snapshot: &Snapshot, buckets: &[u16]) -> usize {
    let contents = snapshot.bucket_contents(buckets, None).unwrap();
    follower
        .install(buckets, &contents, snapshot.revision, snapshot.epoch, None)
        .unwrap();
    contents.len()
}
