//! Request ids in generations (`store/requests.rs`): an id is answered for
//! exactly `REQUEST_WINDOW` revisions after its change, across the start
//! of new generations and restarts, and the first open of a file store
//! format 3 wrote (one table pruned per write) keeps the ids in the window.

mod common;

use pika_replication::store::{DB_FILE, REQUEST_WINDOW};
use pika_replication::{Applied, ConfigPath, Format, Meta, Op, Store};
use redb::{ReadableDatabase, TableDefinition};

const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");
const TABLES: [TableDefinition<&str, (u64, u64, u64)>; 2] = [
    TableDefinition::new("requests_0"),
    TableDefinition::new("requests_1"),
];
const LEGACY: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("requests");
const LEGACY_ORDER: TableDefinition<u64, &str> = TableDefinition::new("request_order");

fn put(p: &str, id: Option<&str>) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    let path = ConfigPath::new(p).expect("valid test path");
    Op::put(path, meta, b"x".to_vec(), None)
        .expect("valid text")
        .with_request_id(id.map(str::to_string))
}

/// Writes until the store is at `revision`, the last write carrying `id`.
fn write_to(store: &Store, revision: u64, id: Option<&str>) -> Option<Applied> {
    let mut last = None;
    while store.revision() < revision {
        let n = (revision - store.revision()).min(8192) as usize;
        let mut ops: Vec<Op> = (0..n).map(|_| put("fill", None)).collect();
        if store.revision() + n as u64 == revision {
            ops[n - 1] = put("with-id", id);
        }
        let results = store.execute(&ops, 1, 0).unwrap();
        last = results.last().cloned().map(Result::unwrap);
    }
    last
}

fn known(store: &Store, id: &str) -> Option<Applied> {
    store.applied_request(id).unwrap()
}

#[test]
fn an_id_is_answered_for_exactly_the_window_across_generations_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 2).unwrap();
    let w = REQUEST_WINDOW;
    // Late in generation 0, then early in generation 1 (a table of its own).
    let a = write_to(&store, w - 10, Some("a")).unwrap();
    let b = write_to(&store, w + 5, Some("b")).unwrap();
    assert_eq!(known(&store, "a"), Some(a));
    assert_eq!(known(&store, "b"), Some(b));

    // The edge of a's window: still answered at a + W, not one after.
    write_to(&store, a.revision + w, None);
    assert_eq!(known(&store, "a"), Some(a));
    write_to(&store, a.revision + w + 1, None);
    assert_eq!(known(&store, "a"), None, "a left the window");

    // Generation 2 starts in table 0 again, which held a: b (generation 1)
    // is still inside the window and answered, c too, after a restart.
    let c = write_to(&store, 2 * w + 3, Some("c")).unwrap();
    assert_eq!(known(&store, "b"), Some(b));
    assert_eq!(known(&store, "c"), Some(c));
    store.close().unwrap();
    let store = Store::open(dir.path(), 2).unwrap();
    assert_eq!(known(&store, "b"), Some(b));
    assert_eq!(known(&store, "c"), Some(c));
    assert_eq!(known(&store, "a"), None);
    write_to(&store, b.revision + w + 1, None);
    assert_eq!(known(&store, "b"), None, "b left the window");
    assert_eq!(known(&store, "c"), Some(c));
    store.close().unwrap();

    // Generation 0's ids were dropped with their table, not one by one.
    let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let even = txn.open_table(TABLES[0]).unwrap();
    assert!(even.get("a").unwrap().is_none());
    assert!(even.get("c").unwrap().is_some());
}

#[test]
fn a_store_of_format_3_opens_with_the_ids_of_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 2).unwrap();
    let w = REQUEST_WINDOW;
    let old = write_to(&store, 100, Some("old")).unwrap();
    let recent = write_to(&store, w + 200, Some("recent")).unwrap();
    let newest = write_to(&store, 2 * w + 50, Some("newest")).unwrap();
    let root = store.merkle().unwrap().root();
    store.close().unwrap();

    // Turn the file into what format 3 wrote: every id (the pruned one
    // too, which must not come back) in one table, with its order.
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut legacy = txn.open_table(LEGACY).unwrap();
            let mut order = txn.open_table(LEGACY_ORDER).unwrap();
            for (id, a) in [("old", old), ("recent", recent), ("newest", newest)] {
                legacy.insert(id, (a.version, a.revision, a.epoch)).unwrap();
                order.insert(a.revision, id).unwrap();
            }
            let mut node = txn.open_table(NODE).unwrap();
            node.insert("record_format", 3u64.to_le_bytes().as_slice())
                .unwrap();
            node.remove("requests_0_generation").unwrap();
            node.remove("requests_1_generation").unwrap();
        }
        txn.delete_table(TABLES[0]).unwrap();
        txn.delete_table(TABLES[1]).unwrap();
        txn.commit().unwrap();
    }

    let store = Store::open(dir.path(), 2).unwrap();
    assert_eq!(store.merkle().unwrap().root(), root);
    assert_eq!(known(&store, "old"), None);
    assert_eq!(known(&store, "recent"), Some(recent));
    assert_eq!(known(&store, "newest"), Some(newest));
    // And the generations go on from there.
    write_to(&store, recent.revision + w + 1, None);
    assert_eq!(known(&store, "recent"), None);
    assert_eq!(known(&store, "newest"), Some(newest));
    store.close().unwrap();

    common::assert_laid_out(dir.path(), &["requests", "request_order"]);
}
