//! The version history in slots (`store/history.rs`): the window of
//! `storage.history` versions holds across writes, a change of depth
//! between starts, installs from a leader that keeps fewer versions, and
//! the first open of a file store format 2 wrote (keyed by version).

mod common;

use pika_replication::store::DB_FILE;
use pika_replication::{ConfigPath, Format, Meta, Op, Store};
use redb::{ReadableTable, TableDefinition};

const SLOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("version_slots");
const LEGACY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");

fn put(p: &str, data: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    let path = ConfigPath::new(p).expect("valid test path");
    Op::put(path, meta, data.as_bytes().to_vec(), None).expect("valid text")
}

fn write(store: &Store, p: &str, times: u64) {
    for _ in 0..times {
        let next = store.entry(p).unwrap().map_or(1, |e| e.version + 1);
        store
            .execute(&[put(p, &format!("{p} v{next}"))], 1, 0)
            .unwrap();
    }
}

/// The versions `store` keeps of `p`, oldest first, each checked to read
/// back with its own content.
fn kept(store: &Store, p: &str) -> Vec<u64> {
    let versions: Vec<u64> = store
        .versions(p)
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|v| v.version)
        .collect();
    for v in &versions {
        let change = store
            .get(p, Some(*v))
            .unwrap()
            .expect("a kept version reads");
        assert_eq!(change.version, *v);
        match change.kind {
            pika_replication::ChangeKind::Put { data, .. } => {
                assert_eq!(data, format!("{p} v{v}").into_bytes())
            }
            pika_replication::ChangeKind::Delete => panic!("no deletes here"),
        }
    }
    versions
}

#[test]
fn the_window_moves_with_each_write_and_follows_a_change_of_depth_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 5).unwrap();
    write(&store, "a", 3);
    write(&store, "b", 8);
    assert_eq!(kept(&store, "a"), [1, 2, 3]);
    assert_eq!(kept(&store, "b"), [4, 5, 6, 7, 8]);
    assert!(
        store.get("b", Some(3)).unwrap().is_none(),
        "left the window"
    );
    let root = store.merkle().unwrap().root();
    store.close().unwrap();

    // Shallower: only the newest three of each path stay.
    let store = Store::open(dir.path(), 3).unwrap();
    assert_eq!(kept(&store, "a"), [1, 2, 3]);
    assert_eq!(kept(&store, "b"), [6, 7, 8]);
    assert!(store.get("b", Some(5)).unwrap().is_none());
    assert_eq!(store.merkle().unwrap().root(), root, "entries untouched");
    store.close().unwrap();

    // Deeper: nothing comes back, and the window grows with new writes.
    let store = Store::open(dir.path(), 10).unwrap();
    assert_eq!(kept(&store, "b"), [6, 7, 8]);
    write(&store, "b", 9);
    assert_eq!(kept(&store, "b"), (8..=17).collect::<Vec<_>>());
    store.close().unwrap();
    let store = Store::open(dir.path(), 10).unwrap();
    assert_eq!(kept(&store, "b"), (8..=17).collect::<Vec<_>>());
}

#[test]
fn a_store_of_format_2_opens_with_its_history_laid_out_in_slots() {
    let dir = tempfile::tempdir().unwrap();
    let history = 4;
    let store = Store::open(dir.path(), history).unwrap();
    write(&store, "a", 2);
    write(&store, "b", 7);
    let revision = store.revision();
    let root = store.merkle().unwrap().root();
    let node_id = store.node_id().to_string();
    store.close().unwrap();

    // Turn the file into what format 2 wrote: the history keyed by
    // (path, version), no slots, format key 2. Plus a version format 2
    // would have pruned, which must not come back.
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let slots = txn.open_table(SLOTS).unwrap();
            let mut legacy = txn.open_table(LEGACY).unwrap();
            let mut oldest_of_b = None;
            for item in slots.iter().unwrap() {
                let (key, value) = item.unwrap();
                let (path, slot) = key.value();
                let top: u64 = if path == "a" { 2 } else { 7 };
                // The version in that slot: the one in the window with that
                // remainder.
                let version = ((top + 1).saturating_sub(history).max(1)..=top)
                    .find(|v| v % history == slot)
                    .unwrap();
                legacy.insert((path, version), value.value()).unwrap();
                if path == "b" && version == 4 {
                    oldest_of_b = Some(value.value().to_vec());
                }
            }
            legacy
                .insert(("b", 1), oldest_of_b.unwrap().as_slice())
                .unwrap();
            let mut node = txn.open_table(NODE).unwrap();
            node.insert("record_format", 2u64.to_le_bytes().as_slice())
                .unwrap();
            node.remove("history_slots").unwrap();
        }
        txn.delete_table(SLOTS).unwrap();
        txn.commit().unwrap();
    }

    let store = Store::open(dir.path(), history).unwrap();
    assert_eq!(store.node_id(), node_id);
    assert_eq!(store.revision(), revision);
    assert_eq!(store.merkle().unwrap().root(), root);
    assert_eq!(kept(&store, "a"), [1, 2]);
    assert_eq!(kept(&store, "b"), [4, 5, 6, 7]);
    write(&store, "b", 1);
    assert_eq!(kept(&store, "b"), [5, 6, 7, 8]);
    store.close().unwrap();

    // Laid out once: the file is of the current format now and has no
    // legacy table.
    common::assert_laid_out(dir.path(), &["versions"]);
}

#[test]
fn an_install_from_a_leader_keeping_fewer_versions_leaves_only_the_window() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = Store::open(leader_dir.path(), 2).unwrap();
    let follower = Store::open(follower_dir.path(), 6).unwrap();
    // Both apply the same first two changes, then the follower falls behind.
    write(&leader, "k", 2);
    write(&follower, "k", 2);
    assert_eq!(follower.revision(), 2);
    write(&leader, "k", 8);

    // Catch-up by snapshot from revision 2: the leader sends what it keeps
    // of k after it, versions 9 and 10; 1 and 2 are outside the
    // follower's window (4, 10] and must go.
    let snapshot = leader.snapshot().unwrap();
    let buckets: Vec<u16> = (0..pika_replication::merkle::BUCKETS as u16).collect();
    let contents = snapshot.bucket_contents(&buckets, Some(2)).unwrap();
    follower
        .install(
            &buckets,
            &contents,
            snapshot.revision,
            snapshot.epoch,
            Some(2),
        )
        .unwrap();
    assert_eq!(kept(&follower, "k"), [9, 10]);
    assert!(follower.get("k", Some(2)).unwrap().is_none());
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );

    // Its own writes from there fill its window of six.
    write(&follower, "k", 5);
    assert_eq!(kept(&follower, "k"), [10, 11, 12, 13, 14, 15]);
}
