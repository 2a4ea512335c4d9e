//! Numbers a peer sends that the protocol adds to are bounded
//! (`wire::MAX_COUNTER`): a message beyond the bound is dropped whole, so
//! one `Heartbeat {epoch: u64::MAX}` from a key holder cannot wrap the next
//! campaign's epoch (issue 14, item 4).

use std::sync::Arc;
use std::time::Duration;

use pika_replication::election::{ElectionMessage, LeaseAsk, Position};
use pika_replication::log::{MemDisk, MemLog};
use pika_replication::pending::SharedPending;
use pika_replication::replica::core::{CoreConfig, Output, ReplicaCore};
use pika_replication::wire::{MAX_COUNTER, PeerMessage};
use pika_replication::{ConfigPath, Op, Store};

fn core() -> ReplicaCore<MemLog> {
    let config = CoreConfig::quick(3);
    let store = Arc::new(Store::open_in_memory(20).expect("a store"));
    let mut core = ReplicaCore::new(
        "n1",
        config,
        store,
        MemLog::open(MemDisk::default()),
        SharedPending::default(),
        1,
        7,
        Duration::ZERO,
    )
    .expect("the core opens");
    let peers = vec!["n2".to_string(), "n3".to_string()];
    core.set_members(peers.clone(), peers);
    core
}

/// The epoch the first campaign of this node asks for (its pre-vote
/// comes first), ticking from `from`.
fn first_campaign(core: &mut ReplicaCore<MemLog>, from: Duration) -> Option<u64> {
    (0..200).find_map(|i| {
        core.tick(from + Duration::from_millis(10 * i));
        core.drain().into_iter().find_map(|output| match output {
            Output::Send {
                message:
                    PeerMessage::Election(
                        ElectionMessage::PreVote(LeaseAsk { epoch, .. })
                        | ElectionMessage::LeaseRequest(LeaseAsk { epoch, .. }),
                    ),
                ..
            } => Some(epoch),
            _ => None,
        })
    })
}

#[test]
fn a_huge_epoch_from_a_peer_is_dropped_and_the_next_campaign_is_sane() {
    let mut core = core();
    for epoch in [u64::MAX, u64::MAX - 1, MAX_COUNTER + 1] {
        core.handle(
            "n2".into(),
            PeerMessage::Election(ElectionMessage::Heartbeat {
                epoch,
                leader: "n2".into(),
                round: 1,
                replicas: 3,
                voters: 0,
            }),
            Duration::from_millis(1),
        );
        core.handle(
            "n3".into(),
            PeerMessage::Election(ElectionMessage::LeaseReply {
                epoch,
                granted: false,
                promised: epoch,
            }),
            Duration::from_millis(1),
        );
    }
    let status = core.status(Duration::from_millis(1));
    assert_eq!(status.promised_epoch, 0, "nothing was promised to them");
    assert_eq!(status.leader_id, None, "no leader was learned from them");
    // Past the boot wait (one lease), the node campaigns for epoch 1.
    let epoch = first_campaign(&mut core, Duration::from_secs(1)).expect("a campaign");
    assert_eq!(epoch, 1);
}

#[test]
fn the_bound_is_inclusive_and_covers_every_counter() {
    let position = |epoch, revision| Position { epoch, revision };
    let at = |n: u64| {
        vec![
            PeerMessage::Election(ElectionMessage::LeaseRequest(LeaseAsk {
                epoch: n,
                candidate: "n2".into(),
                last: position(1, 1),
                replicas: 3,
                voters: 0,
            })),
            PeerMessage::Election(ElectionMessage::LeaseRequest(LeaseAsk {
                epoch: 1,
                candidate: "n2".into(),
                last: position(1, n),
                replicas: 3,
                voters: 0,
            })),
            PeerMessage::Election(ElectionMessage::LeaseRequest(LeaseAsk {
                epoch: 1,
                candidate: "n2".into(),
                last: position(1, 1),
                replicas: 3,
                voters: n,
            })),
            PeerMessage::Election(ElectionMessage::HeartbeatAck {
                epoch: 1,
                round: 1,
                ok: true,
                promised: n,
                replicas: 3,
            }),
            PeerMessage::Election(ElectionMessage::PreVote(LeaseAsk {
                epoch: n,
                candidate: "n2".into(),
                last: position(1, 1),
                replicas: 3,
                voters: 0,
            })),
            PeerMessage::Election(ElectionMessage::PreVote(LeaseAsk {
                epoch: 1,
                candidate: "n2".into(),
                last: position(n, 1),
                replicas: 3,
                voters: 0,
            })),
            PeerMessage::Election(ElectionMessage::PreVoteReply {
                epoch: 1,
                granted: true,
                promised: n,
            }),
            PeerMessage::Diff {
                epoch: 1,
                prev: position(1, n),
                changes: Vec::new().into(),
                commit: 0,
                more: false,
            },
            PeerMessage::Ack {
                epoch: 1,
                received: 1,
                durable: n,
                boot: 1,
            },
            PeerMessage::Commit {
                epoch: 1,
                revision: n,
            },
            PeerMessage::CatchUp {
                epoch: 1,
                from: position(1, 1),
                committed: position(n, 1),
            },
            PeerMessage::SetStatus {
                epoch: 1,
                in_set: true,
                echo: 1,
                lease_left: Duration::from_secs(1),
                commit: n,
            },
            PeerMessage::Forward {
                id: 1,
                request_id: "r".into(),
                op: Op::delete(ConfigPath::new("a").expect("a path"), Some(n)),
            },
        ]
    };
    for message in at(MAX_COUNTER) {
        assert_eq!(message.malformed(), None, "{message:?}");
    }
    for message in at(MAX_COUNTER + 1).into_iter().chain(at(u64::MAX)) {
        assert!(message.malformed().is_some(), "{message:?}");
    }
    // Sequence numbers start at random and are only echoed: any value.
    let alive = PeerMessage::Alive {
        seq: u64::MAX - 3,
        boot: 1,
    };
    assert_eq!(alive.malformed(), None);
}
