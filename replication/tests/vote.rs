//! A voter compares a candidate's log with its own log as it is when the
//! request arrives, not as it was at its last tick.

use std::time::Duration;

use pika_replication::election::{ElectionMessage, LeaseAsk, Position};
use pika_replication::log::{LogStore, MemLog};
use pika_replication::record::SharedChange;
use pika_replication::replica::core::{CoreConfig, Output, ReplicaCore};
use pika_replication::wire::PeerMessage;
use pika_replication::{Change, ChangeKind, Meta};

mod common;

/// Grants `core` sent to `to` (true or false), in order.
fn grants_to(core: &mut ReplicaCore<MemLog>, to: &str) -> Vec<bool> {
    core.drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send {
                to: t,
                message: PeerMessage::Election(ElectionMessage::LeaseReply { granted, .. }),
            } if t == to => Some(granted),
            _ => None,
        })
        .collect()
}

/// A follower that appended an entry of leader n0 after its last tick,
/// asked for a vote by a candidate whose log lacks that entry once n0's
/// lease ran out here, refuses it. It used to compare with the log end
/// its last tick saw, and grant: the candidate could win without an entry
/// this node had acknowledged as durable, and counted in a commit.
#[test]
fn a_vote_compares_with_the_log_as_it_is_not_as_the_last_tick_saw_it() {
    let (_store, mut core) = common::core::open("n1", CoreConfig::quick(3));
    let peers = || vec!["n0".to_string(), "n2".to_string()];
    // n0 leads epoch 1 and is heard every 100 ms for 2 s (past any quiet
    // period after boot); the follower ticks every 25 ms.
    let mut now = Duration::ZERO;
    let mut round = 0;
    while now < Duration::from_secs(2) {
        core.set_members(peers(), peers());
        if now.as_millis() % 100 == 0 {
            round += 1;
            core.handle("n0".into(), common::core::heartbeat_of_n0(round), now);
        }
        core.tick(now);
        let _ = core.drain();
        now += Duration::from_millis(25);
    }
    let heard = now - Duration::from_millis(25);
    // An entry of n0's after the last tick, flushed.
    let change = SharedChange::new(Change {
        revision: 1,
        epoch: 1,
        path: "app/x".into(),
        version: 1,
        created_at_ms: 1,
        created_revision: 1,
        kind: ChangeKind::Put {
            meta: Meta::default(),
            data: b"acknowledged".to_vec(),
        },
        request_id: None,
        author: None,
    });
    core.handle(
        "n0".into(),
        PeerMessage::Diff {
            epoch: 1,
            prev: Position::default(),
            changes: vec![change].into(),
            commit: 0,
            more: false,
        },
        now,
    );
    while let Some(ticket) = core.log_mut().complete_flush() {
        core.flushed(ticket, Ok(()), now);
    }
    assert_eq!(
        core.log_mut().last(),
        Position {
            epoch: 1,
            revision: 1
        }
    );
    let _ = core.drain();
    // n0 falls silent; past its lease, before this node's next tick, n2
    // asks with a log that ends before the entry.
    let asked_at = heard + Duration::from_millis(800);
    core.handle(
        "n2".into(),
        PeerMessage::Election(ElectionMessage::LeaseRequest(LeaseAsk {
            epoch: 2,
            candidate: "n2".into(),
            last: Position::default(),
            replicas: 3,
            voters: 0,
        })),
        asked_at,
    );
    let replies = grants_to(&mut core, "n2");
    assert_eq!(
        replies,
        [false],
        "a candidate without an entry this node holds was granted"
    );
}

/// A leader that hears a newer epoch's leader promises that epoch and
/// steps down. When the promise cannot be written (the disk failed), it
/// still steps down, and its disk counts as failed: it used to drop the
/// step-down with the rest of the round and go on leading its old epoch,
/// proposing writes nobody would answer and ignoring the new leader.
#[test]
fn a_leader_whose_promise_cannot_be_written_still_steps_down() {
    let (store, mut core) = common::core::open("n0", CoreConfig::quick(1));
    let (epoch, now) = common::core::lead_alone(&mut core);
    store.fail_next_promises(1);
    core.handle(
        "n9".into(),
        PeerMessage::Election(ElectionMessage::Heartbeat {
            epoch: epoch + 1,
            leader: "n9".into(),
            round: 1,
            replicas: 1,
            voters: 0,
        }),
        now,
    );
    let outputs = core.drain();
    assert!(
        core.write_epoch().is_err(),
        "still leading epoch {epoch} after a newer leader was heard"
    );
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::SteppedDown { epoch: e } if *e == epoch)),
        "no step-down reported: {outputs:?}"
    );
}
