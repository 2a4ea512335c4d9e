//! A snapshot session's install is a job for the apply thread, not a
//! transaction on the protocol thread (`replica/snapshot.rs`): the core
//! goes on handling messages while it is written, and what arrives
//! meanwhile does not undo it.

use std::time::Duration;

use pika_replication::log::{LogStore, MemLog};
use pika_replication::replica::core::{CoreConfig, Output, ReplicaCore};
use pika_replication::store::Snapshot;
use pika_replication::sync;
use pika_replication::wire::PeerMessage;
use pika_replication::{ConfigPath, Format, Meta, Op, Store};

mod common;

fn put(path: &str, data: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    Op::put(
        ConfigPath::new(path).expect("a path"),
        meta,
        data.as_bytes().to_vec(),
        None,
    )
    .expect("an op")
}

/// Answers every snapshot ask `core` sent n0 from `snapshot`, until it
/// asks for nothing more.
fn answer_session(core: &mut ReplicaCore<MemLog>, snapshot: &Snapshot, now: Duration) {
    for _ in 0..1000 {
        let asks: Vec<(u64, sync::SyncAsk)> = core
            .drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    message: PeerMessage::SyncRequest { session, ask },
                } if to == "n0" => Some((session, ask)),
                _ => None,
            })
            .collect();
        if asks.is_empty() {
            return;
        }
        for (session, ask) in asks {
            let answer = sync::answer(snapshot, &ask, 1 << 20, usize::MAX).expect("an answer");
            let reply = PeerMessage::SyncReply {
                session,
                leader_epoch: 1,
                revision: snapshot.revision,
                epoch: snapshot.epoch,
                answer,
            };
            core.handle("n0".into(), reply, now);
        }
    }
    panic!("a session of more than 1000 asks");
}

/// A new leader took over while the install was being written. The
/// install is of a committed revision, so it stands: once written, the log
/// starts there and the follower asks the new leader for what follows.
/// (Had the new leader ended the session, as it ends one still asking,
/// the written state would have been taken for an apply of entries: the
/// commit index and the log left behind it.)
#[test]
fn an_install_being_written_when_another_leader_takes_over_still_lands() {
    let leader = Store::open_in_memory(16).expect("a store");
    let ops: Vec<Op> = (0..50)
        .map(|i| put(&format!("app/{i}"), "from the snapshot"))
        .collect();
    for op in ops.chunks(10) {
        leader.execute(op, 1, 0).expect("written");
    }
    let snapshot = leader.snapshot().expect("a snapshot");
    let at = snapshot.revision;
    assert!(at >= 5);

    let (store, mut core) = common::core::open("n1", CoreConfig::quick(3));
    let now = common::core::following_n0(&mut core);
    core.handle("n0".into(), PeerMessage::SyncNeeded { epoch: 1 }, now);
    answer_session(&mut core, &snapshot, now);

    let job = core
        .begin_apply()
        .expect("the install, for the apply thread");
    assert!(job.is_install());
    assert_eq!(core.installing(), Some(at));
    // n2 leads epoch 2 while the apply thread writes, which takes 5 s.
    let now = now + Duration::from_secs(5);
    let heartbeat = pika_replication::election::ElectionMessage::Heartbeat {
        epoch: 2,
        leader: "n2".into(),
        round: 1,
        replicas: 3,
        voters: 0,
    };
    core.handle("n2".into(), PeerMessage::Election(heartbeat), now);
    let _ = core.drain();
    let result = job.write(&store);
    core.finish_apply(at, result);

    assert_eq!(store.revision(), at);
    assert_eq!(core.installing(), None);
    assert!(
        core.commit_index() >= at,
        "commit index {} behind the installed state at {at}",
        core.commit_index()
    );
    assert_eq!(
        core.log_mut().start().revision,
        at,
        "the log starts at the snapshot"
    );
    let asked: Vec<(String, u64)> = core
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                message: PeerMessage::CatchUp { from, .. },
            } => Some((to, from.revision)),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        [("n2".to_string(), at)],
        "the new leader is asked for what follows"
    );
    // Asked at the finish, not 5 s before it: the next tick does not ask
    // again (a second chain of catch-up requests, every entry twice).
    core.tick(now + Duration::from_millis(10));
    let again = core
        .drain()
        .into_iter()
        .filter(|o| {
            matches!(
                o,
                Output::Send {
                    message: PeerMessage::CatchUp { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        again, 0,
        "the tick after the install asked to catch up again"
    );
    assert_eq!(
        store.get("app/49", None).expect("read").map(|c| c.version),
        Some(1)
    );
}

/// The session's last answer plans the install and nothing more: the
/// state moves only when the apply thread writes it, and until then the
/// core takes messages as usual (it used to install inside that step,
/// seconds for 100 000 paths, answering no vote meanwhile).
#[test]
fn the_last_answer_plans_the_install_for_the_apply_thread() {
    let leader = Store::open_in_memory(16).expect("a store");
    leader
        .execute(&[put("app/a", "1"), put("app/b", "2")], 1, 0)
        .expect("written");
    let snapshot = leader.snapshot().expect("a snapshot");
    let (store, mut core) = common::core::open("n1", CoreConfig::quick(3));
    let now = common::core::following_n0(&mut core);
    core.handle("n0".into(), PeerMessage::SyncNeeded { epoch: 1 }, now);
    answer_session(&mut core, &snapshot, now);
    assert_eq!(
        store.revision(),
        0,
        "nothing installed by the protocol step"
    );
    assert!(core.install_waiting());
    core.apply();
    assert_eq!(store.revision(), snapshot.revision);
    assert_eq!(
        store.merkle().expect("digests").root(),
        snapshot.merkle().root()
    );
    assert!(!core.install_waiting());
}
