//! What the replication tests share: what the store's upgrade tests check
//! of a file once an older format was opened, and a protocol core driven
//! by hand ([`core`]).
// Each test file uses some of these.
#![allow(dead_code)]

use std::path::Path;

pub mod core;

use pika_replication::store::DB_FILE;
use redb::{ReadableDatabase, TableDefinition, TableHandle};

const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");

/// The file says the current store format, and none of the `legacy`
/// tables is left in it.
pub fn assert_laid_out(dir: &Path, legacy: &[&str]) {
    let db = redb::Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let node = txn.open_table(NODE).unwrap();
    let format = node.get("record_format").unwrap().unwrap().value().to_vec();
    assert_eq!(format, 4u64.to_le_bytes(), "the current store format");
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    for name in legacy {
        assert!(
            !tables.iter().any(|t| t == name),
            "the legacy table {name} is gone"
        );
    }
}
