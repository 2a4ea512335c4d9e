//! The election rules one message at a time: what is persisted before a
//! grant leaves, vote restriction, fencing, and the replicas guard.

use std::time::Duration;

use pika_replication::election::{
    Action, Election, ElectionConfig, ElectionMessage, Position, Role,
};

const T0: Duration = Duration::from_secs(100);

fn node(me: &str, promised: u64, last: Position) -> Election {
    let mut e = Election::new(
        me,
        ElectionConfig {
            replicas: 3,
            heartbeat_interval: Duration::from_millis(100),
            lease: Duration::from_millis(500),
            drift: 0.1,
        },
        promised,
        last,
        7,
        T0,
    );
    e.set_members(["a", "b", "c"].map(String::from), 3);
    e
}

fn request(epoch: u64, last: Position) -> ElectionMessage {
    ElectionMessage::LeaseRequest {
        epoch,
        candidate: "a".into(),
        last,
    }
}

fn reply_granted(actions: &[Action]) -> Option<bool> {
    actions.iter().find_map(|a| match a {
        Action::Send {
            message: ElectionMessage::LeaseReply { granted, .. },
            ..
        } => Some(*granted),
        _ => None,
    })
}

#[test]
fn a_grant_is_persisted_before_it_is_sent() {
    let mut b = node("b", 0, Position::default());
    b.handle("a", request(1, Position::default()), T0);
    let actions = b.drain_actions();
    assert_eq!(
        actions.first(),
        Some(&Action::Persist { promised_epoch: 1 }),
        "{actions:?}"
    );
    assert_eq!(reply_granted(&actions), Some(true));
    assert_eq!(b.promised(), 1);

    // The same epoch again (a duplicate, or another candidate) is refused.
    b.handle("a", request(1, Position::default()), T0);
    assert_eq!(reply_granted(&b.drain_actions()), Some(false));
}

#[test]
fn a_candidate_behind_the_voter_is_refused() {
    let mine = Position {
        epoch: 2,
        revision: 10,
    };
    let mut b = node("b", 2, mine);
    let later = T0 + Duration::from_secs(1); // past the restart quiet period
    b.handle(
        "a",
        request(
            3,
            Position {
                epoch: 2,
                revision: 9,
            },
        ),
        later,
    );
    let actions = b.drain_actions();
    assert_eq!(reply_granted(&actions), Some(false));
    assert!(!actions.iter().any(|a| matches!(a, Action::Persist { .. })));
    b.handle(
        "a",
        request(
            3,
            Position {
                epoch: 2,
                revision: 10,
            },
        ),
        later,
    );
    assert_eq!(reply_granted(&b.drain_actions()), Some(true));
}

#[test]
fn a_restarted_voter_grants_nothing_for_one_lease() {
    let mut b = node("b", 4, Position::default());
    b.handle(
        "a",
        request(5, Position::default()),
        T0 + Duration::from_millis(499),
    );
    assert_eq!(reply_granted(&b.drain_actions()), Some(false));
    b.handle(
        "a",
        request(5, Position::default()),
        T0 + Duration::from_millis(500),
    );
    assert_eq!(reply_granted(&b.drain_actions()), Some(true));
}

#[test]
fn heartbeats_from_a_deposed_epoch_are_fenced_off() {
    let mut b = node("b", 0, Position::default());
    b.handle("a", request(3, Position::default()), T0);
    b.drain_actions();
    b.handle(
        "c",
        ElectionMessage::Heartbeat {
            epoch: 2,
            leader: "c".into(),
            round: 9,
        },
        T0,
    );
    let actions = b.drain_actions();
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Send {
                message: ElectionMessage::HeartbeatAck {
                    ok: false,
                    promised: 3,
                    ..
                },
                ..
            }
        )),
        "{actions:?}"
    );
    assert_eq!(b.leader(T0), None, "a fenced leader is not followed");
}

#[test]
fn more_live_members_than_replicas_means_no_campaign_and_no_grant() {
    let mut b = node("b", 0, Position::default());
    b.set_members(["a", "b", "c", "d"].map(String::from), 4);
    assert!(b.replicas_mismatch());
    b.handle("a", request(1, Position::default()), T0);
    assert_eq!(reply_granted(&b.drain_actions()), Some(false));
    for ms in 0..50 {
        b.tick(T0 + Duration::from_millis(ms * 10));
    }
    assert_eq!(b.role(), Role::Follower);
    assert!(
        b.drain_actions()
            .iter()
            .all(|a| matches!(a, Action::Send { .. }))
    );
}

#[test]
fn a_single_node_cluster_elects_itself_and_keeps_its_lease() {
    let mut a = Election::new(
        "a",
        ElectionConfig {
            replicas: 1,
            heartbeat_interval: Duration::from_millis(100),
            lease: Duration::from_millis(500),
            drift: 0.1,
        },
        0,
        Position::default(),
        1,
        T0,
    );
    a.set_members([], 1);
    for ms in 0..300 {
        a.tick(T0 + Duration::from_millis(ms * 10));
    }
    let now = T0 + Duration::from_millis(2990);
    assert_eq!(a.role(), Role::Leader);
    assert_eq!(
        a.leader(now).map(|(id, _)| id.to_string()),
        Some("a".into())
    );
}
