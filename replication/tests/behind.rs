//! A follower behind the leader asks for each entry it lacks once: by
//! catch-up, one request per answer, and by snapshot, after applying the
//! committed entries its log already holds.

use std::time::Duration;

use pika_replication::election::Position;
use pika_replication::log::MemLog;
use pika_replication::record::SharedChange;
use pika_replication::replica::core::{CoreConfig, Output, ReplicaCore};
use pika_replication::sync::SyncAsk;
use pika_replication::wire::PeerMessage;
use pika_replication::{Change, ChangeKind, Meta};

mod common;

fn change(revision: u64) -> SharedChange {
    SharedChange::new(Change {
        revision,
        epoch: 1,
        path: format!("app/{revision}"),
        version: 1,
        created_at_ms: 1,
        created_revision: revision,
        kind: ChangeKind::Put {
            meta: Meta::default(),
            data: vec![b'x'; 1024],
        },
        request_id: None,
        author: None,
    })
}

/// Whether `core` asked `to` to start a snapshot session.
fn session_started(core: &mut ReplicaCore<MemLog>, to: &str) -> bool {
    core.drain().into_iter().any(|o| {
        matches!(o, Output::Send {
            to: ref t,
            message: PeerMessage::SyncRequest { ask: SyncAsk::Start, .. },
        } if t == to)
    })
}

/// Catch-up requests `core` sent to `to`, by the log end they ask from.
fn catch_ups(core: &mut ReplicaCore<MemLog>, to: &str) -> Vec<u64> {
    core.drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send {
                to: t,
                message: PeerMessage::CatchUp { from, .. },
            } if t == to => Some(from.revision),
            _ => None,
        })
        .collect()
}

/// Two catch-up requests in flight get two answers over the same entries.
/// The last frame of each says there is more, and each used to ask again:
/// two chains of requests went on side by side and every entry of a long
/// catch-up came twice (1.38× the changed bytes in the fanout bench's
/// rejoin, 1.15× with one chain). Only the frame that ends the log asks,
/// once.
#[test]
fn a_catch_up_answer_received_twice_asks_for_the_rest_once() {
    let (_store, mut core) = common::core::open("n1", CoreConfig::quick(3));
    let now = common::core::following_n0(&mut core);
    let frame = || PeerMessage::Diff {
        epoch: 1,
        prev: Position::default(),
        changes: (1..=3).map(change).collect::<Vec<_>>().into(),
        commit: 3,
        more: true,
    };
    core.handle("n0".into(), frame(), now);
    assert_eq!(catch_ups(&mut core, "n0"), [3], "the rest is asked for");
    core.handle("n0".into(), frame(), now);
    assert_eq!(
        catch_ups(&mut core, "n0"),
        Vec::<u64>::new(),
        "the same answer again asked for the rest a second time"
    );
}

/// A catch-up cut short by the leader's log purge leaves the follower with
/// committed entries its state lacks. Told to install a snapshot, it used
/// to start the session at once, from its state, and the leader shipped
/// those entries' changes a second time. It now applies them first.
#[test]
fn a_follower_behind_applies_what_it_holds_before_its_snapshot_session() {
    let (store, mut core) = common::core::open("n1", CoreConfig::quick(3));
    let mut now = common::core::following_n0(&mut core);
    // A catch-up frame: five committed entries, then the leader's log is
    // purged past this node's end.
    core.handle(
        "n0".into(),
        PeerMessage::Diff {
            epoch: 1,
            prev: Position::default(),
            changes: (1..=5).map(change).collect::<Vec<_>>().into(),
            commit: 5,
            more: false,
        },
        now,
    );
    common::core::flush_all(&mut core, now);
    let _ = core.drain();
    assert_eq!(store.revision(), 0, "nothing applied yet");

    core.handle("n0".into(), PeerMessage::SyncNeeded { epoch: 1 }, now);
    core.tick(now);
    assert!(
        !session_started(&mut core, "n0"),
        "a snapshot session started with committed entries not applied: it would ship them again"
    );
    core.apply();
    assert_eq!(store.revision(), 5);
    now += Duration::from_millis(25);
    core.tick(now);
    assert!(
        session_started(&mut core, "n0"),
        "no snapshot session once the state holds what the log did"
    );
}
