//! Data written before the replicated log existed opens without loss: the
//! store becomes the checkpoint and the log starts at its position
//! (issue 12, item 10). The same path serves a node whose log is behind its
//! state for any other reason (a snapshot installed just before a crash).

use std::sync::Arc;
use std::time::Duration;

use pika_replication::election::Position;
use pika_replication::log::{LogOptions, LogStore, MemDisk, MemLog};
use pika_replication::pending::SharedPending;
use pika_replication::replica::core::{CoreConfig, ReplicaCore};
use pika_replication::{ConfigPath, Format, Meta, Op, Store};

fn config() -> CoreConfig {
    CoreConfig::quick(3)
}

fn put(path: &str, value: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    Op::put(
        ConfigPath::new(path).expect("a valid path"),
        meta,
        value.as_bytes().to_vec(),
        None,
    )
    .expect("text content")
}

#[test]
fn a_store_without_a_log_opens_as_the_checkpoint_and_the_log_starts_there() {
    let dir = tempfile::tempdir().expect("a temp dir");
    {
        // What the previous release wrote: durable batches straight into
        // redb, epoch 4, no log beside it.
        let store = Store::open(dir.path(), 20).expect("open the store");
        let ops: Vec<Op> = (0..30).map(|i| put(&format!("cfg/{i}"), "v1")).collect();
        store.execute(&ops, 4, 0).expect("write");
        store.close().expect("close");
    }
    let store = Arc::new(Store::open(dir.path(), 20).expect("reopen the store"));
    let at = store.position();
    assert_eq!(
        at,
        Position {
            epoch: 4,
            revision: 30
        }
    );
    let log = pika_replication::log::DiskLog::open(
        &dir.path().join("log"),
        &LogOptions::default(),
        |_, _| {},
    )
    .expect("a new log");
    let core = ReplicaCore::new(
        "n1",
        config(),
        store.clone(),
        log,
        SharedPending::default(),
        1,
        7,
        Duration::ZERO,
    )
    .expect("the core opens on the old store");
    assert_eq!(core.log().start(), at, "the log starts at the store");
    assert_eq!(core.log().last(), at);
    assert_eq!(
        core.commit_index(),
        30,
        "everything in the store is committed"
    );
    assert_eq!(store.revision(), 30, "nothing was lost or replayed twice");
    let status = core.status(Duration::ZERO);
    assert_eq!((status.applied, status.pending), (30, 0));
}

/// A snapshot install is durable in the state before the log's truncation
/// of an old leader's uncommitted suffix is: a crash in between leaves the
/// state at (5, 20) and the log holding (4, 1..25) with its commit record
/// at 10. The node starts, its log at the state (nothing in the suffix was
/// committed: it disagrees with the committed state at 20), where it used
/// to refuse to start ("the log holds another entry there").
#[test]
fn a_crash_after_an_install_over_an_uncommitted_suffix_opens_at_the_state() {
    use pika_replication::record::{Change, SharedChange};
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Arc::new(Store::open(dir.path(), 20).expect("open the store"));
    let ops: Vec<Op> = (0..20).map(|i| put(&format!("cfg/{i}"), "v1")).collect();
    store.execute(&ops, 5, 0).expect("write");
    let at = Position {
        epoch: 5,
        revision: 20,
    };
    assert_eq!(store.position(), at);
    let mut log = MemLog::open(MemDisk::default());
    let suffix: Vec<SharedChange> = (1..=25)
        .map(|revision| {
            SharedChange::new(Change {
                revision,
                epoch: 4,
                path: format!("old/{revision}"),
                version: 1,
                created_at_ms: 1,
                created_revision: revision,
                kind: pika_replication::ChangeKind::Put {
                    meta: Meta::default(),
                    data: b"old".to_vec(),
                },
                request_id: None,
                author: None,
            })
        })
        .collect();
    log.append(&suffix).expect("appended");
    log.save_commit(Position {
        epoch: 4,
        revision: 10,
    })
    .expect("commit recorded");
    let core = ReplicaCore::new(
        "n1",
        config(),
        store.clone(),
        log,
        SharedPending::default(),
        1,
        7,
        Duration::ZERO,
    )
    .expect("the core opens at the installed state");
    assert_eq!(core.log().start(), at, "the log starts at the state");
    assert_eq!(core.log().last(), at, "the old suffix is gone");
    assert_eq!(core.commit_index(), 20);
    let status = core.status(Duration::ZERO);
    assert_eq!((status.applied, status.pending), (20, 0));
}

#[test]
fn committed_entries_after_the_checkpoint_are_replayed_from_the_log() {
    let store = Arc::new(Store::open_in_memory(20).expect("a store"));
    let disk = MemDisk::default();
    let mut log = MemLog::open(disk.clone());
    // Entries 1..=5, committed through 4 and flushed; the state never
    // applied them (a crash right after the last checkpoint at 0).
    let changes: Vec<_> = {
        let scratch = Store::open_in_memory(20).expect("a scratch store");
        let ops: Vec<Op> = (0..5).map(|i| put(&format!("cfg/{i}"), "v1")).collect();
        let decided = scratch.execute_then(&ops, 2, 0, |_| {}).expect("decide").1;
        decided.into_iter().map(Arc::new).collect()
    };
    log.append(&changes).expect("append");
    log.save_commit(Position {
        epoch: 2,
        revision: 4,
    })
    .expect("commit");
    log.flush(1).expect("flush");
    assert_eq!(log.complete_flush(), Some(1));
    let pending = SharedPending::default();
    let core = ReplicaCore::new(
        "n1",
        config(),
        store.clone(),
        MemLog::open(disk),
        pending.clone(),
        2,
        7,
        Duration::ZERO,
    )
    .expect("the core opens");
    assert_eq!(
        store.revision(),
        4,
        "committed entries replayed, no further"
    );
    assert_eq!(
        pending.lock().highest("cfg/4"),
        Some(5),
        "the uncommitted entry is pending: a read of its path waits"
    );
    assert_eq!(core.log().last().revision, 5);
}

/// A voter set written before sets carried a cluster id gets one from the
/// next leader, once its epoch has committed an entry: the same members,
/// now with an id that replica streams of other clusters are refused by.
#[test]
fn a_voter_set_without_a_cluster_id_gets_one_from_the_next_leader() {
    use pika_replication::replica::core::Output;
    use pika_replication::replica::voters;

    let store = Arc::new(Store::open_in_memory(20).expect("a store"));
    let meta = Meta {
        format: Format::Json,
        description: "pika voter set".into(),
        flags: 0,
    };
    let old_record = Op::put(
        ConfigPath::new("pika/voters").expect("a valid path"),
        meta,
        br#"{"voters":["n1"]}"#.to_vec(),
        None,
    )
    .expect("JSON");
    store.execute(&[old_record], 1, 0).expect("write");
    let mut core = ReplicaCore::new(
        "n1",
        CoreConfig::quick(1),
        store.clone(),
        MemLog::open(MemDisk::default()),
        SharedPending::default(),
        1,
        7,
        Duration::ZERO,
    )
    .expect("the core opens");
    core.set_members(Vec::new(), Vec::new());
    assert_eq!(core.cluster_id(), "", "the old set names no cluster");

    let mut now = Duration::ZERO;
    let mut written = None;
    for _ in 0..1000 {
        now += Duration::from_millis(5);
        core.tick(now);
        for output in core.drain() {
            if let Output::BecameLeader { epoch } = output {
                // What the driver writes as a new epoch's first entry.
                core.propose(epoch, &[put("pika-leader", "n1")], 0, now)
                    .expect("the leader proposes");
            }
        }
        if let Some(ticket) = core.log_mut().complete_flush() {
            core.flushed(ticket, Ok(()), now);
        }
        core.drain();
        core.apply();
        let record = store.get("pika/voters", None).expect("read");
        if let Some(cluster) = record.as_ref().and_then(voters::parse_cluster) {
            written = Some((cluster, record.as_ref().and_then(voters::parse)));
            break;
        }
    }
    let (cluster, members) = written.expect("the set got a cluster id within 5 s");
    assert_eq!(cluster.len(), 32);
    assert_eq!(core.cluster_id(), cluster);
    assert_eq!(
        members,
        Some(["n1".to_string()].into_iter().collect()),
        "the same members"
    );
}
