//! Backups (`pika_replication::backup`): a backup restores to the same
//! state, with its history, the same Merkle root and a new node id, as
//! the only voter of a new voter set; a damaged or truncated file is
//! refused and nothing is written.

use pika_replication::backup::{self, BackupError};
use pika_replication::log::{LOG_DIR, LogOptions, ReplicatedLog};
use pika_replication::{ChangeKind, ConfigPath, Format, Meta, Op, Store};

fn put(p: &str, data: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: format!("about {p}"),
        flags: 7,
    };
    Op::put(
        ConfigPath::new(p).unwrap(),
        meta,
        data.as_bytes().to_vec(),
        None,
    )
    .unwrap()
}

fn data(store: &Store, p: &str, version: Option<u64>) -> Option<Vec<u8>> {
    match store.get(p, version).unwrap()?.kind {
        ChangeKind::Put { data, .. } => Some(data),
        ChangeKind::Delete => None,
    }
}

/// A store with 300 paths over many buckets, several versions each, and
/// a deletion.
fn source(dir: &std::path::Path) -> Store {
    let store = Store::open(dir, 10).unwrap();
    for round in 0..3 {
        let ops: Vec<Op> = (0..300)
            .map(|i| {
                put(
                    &format!("app/{}/k{i}", i % 7),
                    &format!("value {i} round {round}"),
                )
            })
            .collect();
        store.execute(&ops, 0, 0).unwrap();
    }
    store
        .execute(
            &[Op::delete(ConfigPath::new("app/0/k0").unwrap(), None)],
            0,
            0,
        )
        .unwrap();
    store
}

#[test]
fn a_backup_restores_the_same_state_as_a_new_voter_set_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = source(&dir.path().join("src"));
    let file = dir.path().join("state.backup");
    let revision = backup::write_file(&store, &file, 1).unwrap();
    assert_eq!(revision, store.revision());
    // Written after the backup: not in it.
    store.execute(&[put("app/later", "x")], 0, 0).unwrap();

    let header = backup::verify(&file).unwrap();
    assert_eq!(header.revision, revision);
    let target = dir.path().join("restored");
    let restored = backup::restore(&file, &target, 10, "pika/voters").unwrap();
    assert_eq!(restored.paths, 300);
    assert_eq!(restored.voters.at.revision, revision + 1);

    let copy = Store::open(&target, 10).unwrap();
    assert_ne!(
        copy.node_id(),
        store.node_id(),
        "a restored copy has a new id"
    );
    assert_eq!(copy.revision(), revision);
    assert_eq!(copy.recompute_merkle().unwrap().root(), header.root);
    assert_eq!(copy.merkle().unwrap().root(), header.root);
    assert_eq!(
        data(&copy, "app/3/k3", None),
        Some(b"value 3 round 2".to_vec())
    );
    assert_eq!(
        data(&copy, "app/3/k3", Some(1)),
        Some(b"value 3 round 0".to_vec()),
        "history comes along"
    );
    assert_eq!(data(&copy, "app/0/k0", None), None, "deleted");
    assert!(copy.get("app/later", None).unwrap().is_none());
    let meta = match copy.get("app/3/k3", None).unwrap().unwrap().kind {
        ChangeKind::Put { meta, .. } => meta,
        ChangeKind::Delete => panic!("a put"),
    };
    assert_eq!(
        (meta.description.as_str(), meta.flags),
        ("about app/3/k3", 7)
    );
    drop(copy);

    // The log continues the state with a committed voter set of one.
    let log = ReplicatedLog::open(&target.join(LOG_DIR), &LogOptions::default()).unwrap();
    assert_eq!(log.start().revision, revision);
    assert_eq!(log.committed().revision, revision + 1);
    let set = log.read(revision + 1, revision + 1, usize::MAX).unwrap();
    assert_eq!(set[0].path, "pika/voters");

    // Not into a directory that holds something.
    assert!(matches!(
        backup::restore(&file, &target, 10, "pika/voters"),
        Err(BackupError::NotEmpty(_))
    ));
}

#[test]
fn a_damaged_or_truncated_backup_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = source(&dir.path().join("src"));
    let file = dir.path().join("state.backup");
    backup::write_file(&store, &file, 1).unwrap();
    let good = std::fs::read(&file).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for at in [3, 20, good.len() / 2, good.len() - 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        cases.push(("flipped", bad));
    }
    for len in [0, 8, 100, good.len() / 2, good.len() - 33, good.len() - 1] {
        cases.push(("truncated", good[..len].to_vec()));
    }
    let mut longer = good.clone();
    longer.push(0);
    cases.push(("extended", longer));
    for (n, (what, bytes)) in cases.into_iter().enumerate() {
        let damaged = dir.path().join(format!("damaged-{n}"));
        std::fs::write(&damaged, &bytes).unwrap();
        let target = dir.path().join(format!("target-{n}"));
        let result = backup::restore(&damaged, &target, 10, "pika/voters");
        assert!(result.is_err(), "{what} case {n} was accepted");
        assert!(
            !target.exists(),
            "{what} case {n} wrote {}",
            target.display()
        );
    }
}

/// A backup whose checksum is right but whose header names another Merkle
/// root than its content has (a backup of a damaged store, or a bug in
/// writing it) is refused after the install, and what the restore wrote
/// is removed: an empty directory given to it stays, emptied.
#[test]
fn a_backup_whose_content_does_not_match_its_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = source(&dir.path().join("src"));
    let file = dir.path().join("state.backup");
    backup::write_file(&store, &file, 1).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    // The header frame follows the 8-byte magic; its last 32 bytes are the
    // root. Change one, then write the checksum the changed bytes have.
    let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[12 + header_len - 1] ^= 1;
    let body = bytes.len() - 32;
    let sum = *blake3::hash(&bytes[..body]).as_bytes();
    bytes[body..].copy_from_slice(&sum);
    let forged = dir.path().join("forged.backup");
    std::fs::write(&forged, &bytes).unwrap();
    backup::verify(&forged).expect("the checksum holds");

    let target = dir.path().join("mount-point");
    std::fs::create_dir(&target).unwrap();
    let result = backup::restore(&forged, &target, 10, "pika/voters");
    let message = result.expect_err("refused").to_string();
    assert!(message.contains("Merkle root"), "{message}");
    assert!(target.is_dir(), "a directory the caller made stays");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "and is left empty"
    );
    let fresh = dir.path().join("fresh");
    assert!(backup::restore(&forged, &fresh, 10, "pika/voters").is_err());
    assert!(!fresh.exists(), "a directory the restore made is removed");
}

/// A restore installs its chunks one transaction each: killed half way, it
/// leaves a partial state that a node would have served as a whole one
/// (its log empty, "everything in it committed"). The directory is marked
/// while it is built, and a store beside the mark does not open.
#[test]
fn a_restore_that_did_not_finish_leaves_a_directory_no_node_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = source(&dir.path().join("src"));
    let file = dir.path().join("state.backup");
    backup::write_file(&store, &file, 1).unwrap();
    let target = dir.path().join("restored");
    backup::restore(&file, &target, 10, "pika/voters").unwrap();
    assert!(
        !target.join(backup::RESTORING).exists(),
        "a finished restore leaves no mark"
    );
    drop(Store::open(&target, 10).unwrap());

    // What a restore killed after its first chunks leaves.
    std::fs::write(target.join(backup::RESTORING), "").unwrap();
    let refused = Store::open(&target, 10).err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("did not finish") && e.contains("restore again")),
        "{refused:?}"
    );
}
