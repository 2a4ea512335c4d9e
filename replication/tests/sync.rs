//! Merkle sync between two real stores through the sans-IO session: the
//! follower ends equal to the leader's snapshot, and what moves grows with
//! what differs, not with what is stored.

use pika_replication::merkle::BUCKETS;
use pika_replication::sync::{self, SyncAsk, SyncSession, SyncStep};
use pika_replication::{ConfigPath, Format, Meta, Op, Store};

fn put(p: &str, data: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
    };
    Op::put(
        ConfigPath::new(p).unwrap(),
        meta,
        data.as_bytes().to_vec(),
        None,
    )
    .unwrap()
}

/// Runs a session to the end; returns (digests asked for, buckets moved).
fn sync(leader: &Store, follower: &Store) -> (usize, usize) {
    let snapshot = leader.snapshot().unwrap();
    let mut session = SyncSession::new(follower.merkle().unwrap());
    let mut ask = SyncAsk::Start;
    let (mut digests, mut buckets) = (0, 0);
    for _ in 0..10 {
        if let SyncAsk::Level { nodes, .. } = &ask {
            digests += nodes.len();
        }
        let answer = sync::answer(&snapshot, &ask, 64 << 10).unwrap();
        match session.on_answer(snapshot.revision, snapshot.epoch, answer) {
            SyncStep::Ask(next) => ask = next,
            SyncStep::Install {
                buckets: b,
                paths,
                revision,
                epoch,
            } => {
                buckets = b.len();
                follower.install(&b, &paths, revision, epoch).unwrap();
                return (digests, buckets);
            }
            SyncStep::InSync { .. } => return (digests, buckets),
            SyncStep::Failed(why) => panic!("sync failed: {why}"),
        }
    }
    panic!("a sync session took more than 10 rounds");
}

#[test]
fn sync_moves_only_what_differs() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 5).unwrap();
    let follower = Store::open(fd.path(), 5).unwrap();
    let all: Vec<Op> = (0..5000).map(|i| put(&format!("cfg/{i}"), "v1")).collect();
    for chunk in all.chunks(1000) {
        let (_, changes) = leader.execute_then(chunk, 1, 0, |_| {}).unwrap();
        follower.apply(&changes).unwrap();
    }
    assert_eq!(
        sync(&leader, &follower),
        (0, 0),
        "equal stores: the root settles it"
    );

    // The follower misses 10 writes.
    let missed: Vec<Op> = (0..10)
        .map(|i| put(&format!("cfg/{}", i * 397), "v2"))
        .collect();
    leader.execute(&missed, 2, 0).unwrap();
    let changed = leader
        .merkle()
        .unwrap()
        .differing(&follower.merkle().unwrap())
        .len();
    let (digests, buckets) = sync(&leader, &follower);
    eprintln!(
        "10 missed writes over 5000 paths: {changed} buckets differ; asked {digests} digests, moved {buckets} buckets of {BUCKETS}"
    );
    assert_eq!(buckets, changed);
    assert!(
        digests <= 16 + changed * 16 * 2,
        "asked for {digests} digests"
    );
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    assert_eq!(follower.position(), leader.position());
}
