//! The election rules one message at a time: what is persisted before a
//! grant leaves, vote restriction, fencing, and the replicas guard.

use std::time::Duration;

use pika_replication::election::{
    Action, Election, ElectionConfig, ElectionMessage, LeaseAsk, Position, Role,
};
use pika_replication::quorum::Quorum;

const T0: Duration = Duration::from_secs(100);
/// One lease after the nodes of these tests booted: they may grant.
const BOOTED: Duration = Duration::from_millis(100_500);

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
    e.set_members(
        ["a", "b", "c"].map(String::from),
        ["a", "b", "c"].map(String::from),
    );
    e
}

fn request(epoch: u64, last: Position) -> ElectionMessage {
    ElectionMessage::LeaseRequest(LeaseAsk {
        epoch,
        candidate: "a".into(),
        last,
        replicas: 3,
        voters: 0,
    })
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
    b.handle("a", request(1, Position::default()), BOOTED);
    let actions = b.drain_actions();
    assert_eq!(
        actions.first(),
        Some(&Action::Persist { promised_epoch: 1 }),
        "{actions:?}"
    );
    assert_eq!(reply_granted(&actions), Some(true));
    assert_eq!(b.promised(), 1);

    // The same epoch again (a duplicate, or another candidate) is refused.
    b.handle("a", request(1, Position::default()), BOOTED);
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

/// A node that promised before a crash, and one whose promise reads 0
/// because its data directory was wiped: neither can know whom it granted,
/// so neither grants for a lease after boot (DESIGN.md, election step 6).
#[test]
fn a_booted_voter_grants_nothing_for_one_lease_whatever_it_promised() {
    for promised in [4, 0] {
        let mut b = node("b", promised, Position::default());
        b.handle(
            "a",
            request(5, Position::default()),
            T0 + Duration::from_millis(499),
        );
        assert_eq!(
            reply_granted(&b.drain_actions()),
            Some(false),
            "promised {promised}"
        );
        b.handle(
            "a",
            request(5, Position::default()),
            T0 + Duration::from_millis(500),
        );
        assert_eq!(
            reply_granted(&b.drain_actions()),
            Some(true),
            "promised {promised}"
        );
    }
}

#[test]
fn heartbeats_from_a_deposed_epoch_are_fenced_off() {
    let mut b = node("b", 0, Position::default());
    b.handle("a", request(3, Position::default()), BOOTED);
    b.drain_actions();
    b.handle(
        "c",
        ElectionMessage::Heartbeat {
            epoch: 2,
            leader: "c".into(),
            round: 9,
            replicas: 3,
            voters: 0,
        },
        BOOTED,
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
    b.set_members(
        ["a", "b", "c", "d"].map(String::from),
        ["a", "b", "c", "d"].map(String::from),
    );
    assert!(b.replicas_mismatch());
    b.handle("a", request(1, Position::default()), BOOTED);
    assert_eq!(reply_granted(&b.drain_actions()), Some(false));
    for ms in 0..50 {
        b.tick(BOOTED + Duration::from_millis(ms * 10));
    }
    assert_eq!(b.role(), Role::Follower);
    assert!(
        b.drain_actions()
            .iter()
            .all(|a| matches!(a, Action::Send { .. }))
    );
}

fn request_from(epoch: u64, replicas: u64, voters: u64) -> ElectionMessage {
    ElectionMessage::LeaseRequest(LeaseAsk {
        epoch,
        candidate: "a".into(),
        last: Position::default(),
        replicas,
        voters,
    })
}

#[test]
fn a_new_cluster_grants_only_candidates_with_the_same_replicas() {
    // `a` has `replicas: 1` and would lead on its own grant: `b` (3)
    // must not add to it, and both report the difference.
    let mut b = node("b", 0, Position::default());
    b.handle("a", request_from(1, 1, 0), BOOTED);
    assert_eq!(reply_granted(&b.drain_actions()), Some(false));
    assert_eq!(
        b.replicas_conflicts().get("a"),
        Some(&1),
        "the difference is reported"
    );
    b.handle("a", request_from(2, 3, 0), BOOTED);
    assert_eq!(reply_granted(&b.drain_actions()), Some(true));
    assert!(b.replicas_conflicts().is_empty(), "fixed, and forgotten");
}

#[test]
fn a_node_that_knows_a_voter_set_refuses_a_candidate_that_knows_none() {
    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
    let mut b = node("b", 0, Position::default());
    b.set_quorum(Quorum::new(Some(set(&["a", "b", "c"])), None, 3), 4);
    b.handle("a", request_from(1, 3, 0), BOOTED);
    assert_eq!(
        reply_granted(&b.drain_actions()),
        Some(false),
        "its grant would count in a bootstrap quorum of anyone"
    );
    // With a voter set, `replicas` is only how large the leader grows it.
    b.handle("a", request_from(2, 5, 4), BOOTED);
    assert_eq!(reply_granted(&b.drain_actions()), Some(true));
    assert_eq!(b.replicas_conflicts().get("a"), Some(&5));
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
    a.set_members([], []);
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

/// Two survivors of three, one behind the other (it was down while the
/// other acked writes), elect a leader: the one that is behind campaigns
/// over and over and can never win, and that must not keep the other from
/// winning. Messages take 1 ms; every node ticks every 10 ms.
fn survivors_elect(seed: u64) -> Option<Duration> {
    let config = ElectionConfig {
        replicas: 3,
        heartbeat_interval: Duration::from_millis(200),
        lease: Duration::from_millis(1000),
        drift: 0.1,
    };
    let behind = Position {
        epoch: 1,
        revision: 301,
    };
    let ahead = Position {
        epoch: 1,
        revision: 311,
    };
    let ids = ["a", "b"];
    let mut nodes = [
        Election::new("a", config.clone(), 1, behind, seed, T0),
        Election::new("b", config, 1, ahead, seed.wrapping_mul(31) + 1, T0),
    ];
    for n in &mut nodes {
        n.set_members(["a", "b", "c"].map(String::from), ids.map(String::from));
    }
    let mut in_flight = InFlight::new();
    let step = Duration::from_millis(10);
    let mut now = T0;
    while now < T0 + Duration::from_secs(10) {
        now += step;
        tick_and_deliver(&mut nodes, &ids, &mut in_flight, now, step, |_, _, _| false);
        if nodes[1].role() == Role::Leader {
            return Some(now - T0);
        }
        assert_ne!(nodes[0].role(), Role::Leader, "the node behind won");
    }
    None
}

/// One step of every node: each ticks at `now`, then everything due by the
/// next step is delivered (replies included), except what `dropped(at,
/// to, from)` says is lost.
fn tick_and_deliver(
    nodes: &mut [Election],
    ids: &[&'static str],
    in_flight: &mut InFlight,
    now: Duration,
    step: Duration,
    dropped: impl Fn(Duration, usize, &str) -> bool,
) {
    for (i, node) in nodes.iter_mut().enumerate() {
        node.tick(now);
        post(in_flight, ids, i, node.drain_actions(), now);
    }
    while let Some(k) = in_flight.iter().position(|m| m.0 <= now + step) {
        let (at, to, from, message) = in_flight.remove(k);
        if dropped(at, to, from) {
            continue;
        }
        nodes[to].handle(from, message, at);
        post(in_flight, ids, to, nodes[to].drain_actions(), at);
    }
}

/// A message on its way: due time, receiver (an index into the ids), sender.
type InFlight = Vec<(Duration, usize, &'static str, ElectionMessage)>;

/// Queues the messages among `actions`, sent by `ids[from]` at `at`, for
/// delivery 1 ms later; those to a node not in `ids` (down) are dropped.
fn post(
    in_flight: &mut InFlight,
    ids: &[&'static str],
    from: usize,
    actions: Vec<Action>,
    at: Duration,
) {
    for action in actions {
        if let Action::Send { to, message } = action
            && let Some(to) = ids.iter().position(|id| *id == to)
        {
            in_flight.push((at + Duration::from_millis(1), to, ids[from], message));
        }
    }
}

#[test]
fn a_node_that_is_behind_does_not_keep_the_other_survivor_from_winning() {
    let mut slowest = Duration::ZERO;
    for seed in 1..=50 {
        let took =
            survivors_elect(seed).unwrap_or_else(|| panic!("seed {seed}: no leader within 10 s"));
        slowest = slowest.max(took);
    }
    // Both start inside the restart quiet period (one lease), then it takes
    // a few back-off rounds at most.
    assert!(
        slowest < Duration::from_secs(3),
        "slowest election {slowest:?}"
    );
}

/// Two of three nodes (`a` and `b`; `c` is down), heartbeat 200 ms, lease
/// 1 s, ticking every 10 ms and hearing each other: runs until one of them
/// leads, then `more` longer; returns them and the time.
fn two_of_three_elect(more: Duration) -> ([Election; 2], Duration) {
    let config = ElectionConfig {
        replicas: 3,
        heartbeat_interval: Duration::from_millis(200),
        lease: Duration::from_millis(1000),
        drift: 0.1,
    };
    let ids = ["a", "b"];
    let mut nodes = [
        Election::new("a", config.clone(), 0, Position::default(), 3, T0),
        Election::new("b", config, 0, Position::default(), 11, T0),
    ];
    for n in &mut nodes {
        n.set_members(["a", "b", "c"].map(String::from), ids.map(String::from));
    }
    let mut in_flight = InFlight::new();
    let step = Duration::from_millis(10);
    let mut now = T0;
    let mut led_since = None;
    while led_since.is_none_or(|since| now < since + more) {
        assert!(now < T0 + Duration::from_secs(20), "no leader within 20 s");
        now += step;
        tick_and_deliver(&mut nodes, &ids, &mut in_flight, now, step, |_, _, _| false);
        if led_since.is_none() && nodes.iter().any(|n| n.role() == Role::Leader) {
            led_since = Some(now);
        }
    }
    (nodes, now)
}

/// A leader reads only within its own lease, which is shortened for clock
/// drift. Once that has run out it reads no more, though it steps down only
/// at its next tick: before, it fell back to "L after it last heard the
/// leader", itself at the time it won, and kept reading for up to a tenth
/// of L past its lease (steps other than ticks publish the read permission
/// too).
#[test]
fn a_leader_whose_lease_ran_out_reads_no_more_before_its_next_tick() {
    let (nodes, now) = two_of_three_elect(Duration::ZERO);
    let leader = nodes
        .iter()
        .find(|n| n.role() == Role::Leader)
        .expect("a leader");
    // From here on it hears nothing (no round is acknowledged) and no tick
    // runs.
    let (_, until) = leader.lease(now).expect("a new leader holds a lease");
    let just_before = until - Duration::from_millis(1);
    assert_eq!(leader.read_lease_until(just_before), Some(until));
    let just_after = until + Duration::from_millis(1);
    assert_eq!(leader.role(), Role::Leader, "no tick has stepped it down");
    assert_eq!(
        leader.read_lease_until(just_after),
        None,
        "a leader past its lease (until {until:?}) still reads"
    );
}

/// A leader that steps down before its lease ran out (here it resigns, as
/// when its log fails; a deposing ack does the same) grants no other
/// candidate until that lease has: nodes that heard it may still read
/// under it (DESIGN.md: no live lease, "its own former lease included").
/// It used to grant at once once it had led past its own vote's L.
#[test]
fn a_leader_that_stepped_down_grants_nothing_until_its_lease_ran_out() {
    // Elected, then leading (renewing its lease) for longer than L.
    let (mut nodes, now) = two_of_three_elect(Duration::from_secs(3));
    let i = nodes
        .iter()
        .position(|n| n.role() == Role::Leader)
        .expect("still leading");
    let other = ["a", "b"][1 - i];
    let leader = &mut nodes[i];
    let (epoch, until) = leader.lease(now).expect("a renewed lease");
    leader.resign("its log failed");
    assert_eq!(leader.role(), Role::Follower);
    leader.drain_actions();
    let ask = |epoch: u64| {
        ElectionMessage::LeaseRequest(LeaseAsk {
            epoch,
            candidate: other.into(),
            last: Position::default(),
            replicas: 3,
            voters: 0,
        })
    };
    leader.handle(other, ask(epoch + 1), until - Duration::from_millis(1));
    assert_eq!(
        reply_granted(&leader.drain_actions()),
        Some(false),
        "granted inside its own former lease (until {until:?})"
    );
    leader.handle(other, ask(epoch + 2), until + Duration::from_millis(1));
    assert_eq!(reply_granted(&leader.drain_actions()), Some(true));
}

/// Three nodes elect a leader; then one follower stops hearing it for 5 s
/// (a one-way partition: what it sends still arrives), and hears it
/// again. That follower's pre-votes are refused by the two that still
/// hear the leader, so it never promises a newer epoch, and the leader
/// keeps its lease and epoch throughout. Without the pre-vote it
/// campaigned over and over (up to epoch 20), and once it heard the
/// leader again its promise answered the heartbeat with a refusal: the
/// leader stepped down.
fn deaf_follower_leaves_the_leader_alone(seed: u64) -> Result<(), String> {
    let config = ElectionConfig {
        replicas: 3,
        heartbeat_interval: Duration::from_millis(200),
        lease: Duration::from_millis(1000),
        drift: 0.1,
    };
    let ids = ["a", "b", "c"];
    let mut nodes = ids.map(|id| {
        let mut n = Election::new(
            id,
            config.clone(),
            0,
            Position::default(),
            seed.wrapping_mul(7)
                .wrapping_add(id.len() as u64 + id.as_bytes()[0] as u64),
            T0,
        );
        n.set_members(ids.map(String::from), ids.map(String::from));
        n
    });
    let mut in_flight = InFlight::new();
    let step = Duration::from_millis(10);
    let mut now = T0;
    let mut deaf: Option<(usize, usize, u64)> = None; // (leader, follower, epoch)
    let mut healed_at = Duration::MAX;
    while now < T0 + Duration::from_secs(12) {
        now += step;
        tick_and_deliver(
            &mut nodes,
            &ids,
            &mut in_flight,
            now,
            step,
            |at, to, from| {
                deaf.is_some_and(|(leader, follower, _)| {
                    to == follower && from == ids[leader] && at < healed_at
                })
            },
        );
        match deaf {
            None => {
                if let Some(leader) = (0..3).find(|i| nodes[*i].role() == Role::Leader)
                    && let Some((epoch, _)) = nodes[leader].lease(now)
                {
                    deaf = Some((leader, (leader + 1) % 3, epoch));
                    healed_at = now + Duration::from_secs(5);
                }
            }
            Some((leader, follower, epoch)) => {
                if nodes[leader].lease(now).map(|(e, _)| e) != Some(epoch) {
                    return Err(format!(
                        "the leader {} lost its lease of epoch {epoch} at {:?}: {} had promised {}",
                        ids[leader],
                        now - T0,
                        ids[follower],
                        nodes[follower].promised()
                    ));
                }
            }
        }
    }
    let (_, follower, epoch) = deaf.ok_or("no leader was elected")?;
    if nodes[follower].promised() != epoch {
        return Err(format!(
            "the deaf follower promised {}, the leader's epoch is {epoch}",
            nodes[follower].promised()
        ));
    }
    Ok(())
}

#[test]
fn a_follower_that_alone_stops_hearing_the_leader_does_not_unseat_it() {
    for seed in 1..=20 {
        if let Err(e) = deaf_follower_leaves_the_leader_alone(seed) {
            panic!("seed {seed}: {e}");
        }
    }
}
