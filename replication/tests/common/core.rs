//! One protocol core driven by hand: opened on an in-memory store and log,
//! flushes completed as the log's flush thread would.

use std::sync::Arc;
use std::time::Duration;

use pika_replication::Store;
use pika_replication::election::ElectionMessage;
use pika_replication::log::{MemDisk, MemLog};
use pika_replication::pending::SharedPending;
use pika_replication::replica::core::{CoreConfig, ReplicaCore};
use pika_replication::wire::PeerMessage;

/// Node `id`'s core on a fresh in-memory store, at time zero.
pub fn open(id: &str, config: CoreConfig) -> (Arc<Store>, ReplicaCore<MemLog>) {
    let store = Arc::new(Store::open_in_memory(16).expect("in-memory store"));
    let core = ReplicaCore::new(
        id.to_string(),
        config,
        store.clone(),
        MemLog::open(MemDisk::default()),
        SharedPending::default(),
        store.generation(),
        7,
        Duration::ZERO,
    )
    .expect("the core opens");
    (store, core)
}

/// Completes every flush in flight, as the log's flush thread would.
pub fn flush_all(core: &mut ReplicaCore<MemLog>, now: Duration) {
    while let Some(ticket) = core.log_mut().complete_flush() {
        core.flushed(ticket, Ok(()), now);
    }
}

/// Ticks a core configured for a cluster of one every 10 ms until it
/// leads; returns its epoch and the time then.
pub fn lead_alone(core: &mut ReplicaCore<MemLog>) -> (u64, Duration) {
    let mut now = Duration::ZERO;
    for _ in 0..500 {
        core.set_members(Vec::new(), Vec::new());
        core.tick(now);
        flush_all(core, now);
        let _ = core.drain();
        if let Ok(epoch) = core.write_epoch() {
            return (epoch, now);
        }
        now += Duration::from_millis(10);
    }
    panic!("a cluster of one did not elect itself in 5 s");
}

/// Node n1 of three hearing `n0` lead epoch 1 for 2 s; returns the time
/// then.
pub fn following_n0(core: &mut ReplicaCore<MemLog>) -> Duration {
    let peers = || vec!["n0".to_string(), "n2".to_string()];
    let mut now = Duration::ZERO;
    for round in 1..=20 {
        core.set_members(peers(), peers());
        core.handle("n0".into(), heartbeat_of_n0(round), now);
        core.tick(now);
        let _ = core.drain();
        now += Duration::from_millis(100);
    }
    now
}

/// Leader `n0`'s heartbeat of `round` in epoch 1, to a cluster of three.
pub fn heartbeat_of_n0(round: u64) -> PeerMessage {
    PeerMessage::Election(ElectionMessage::Heartbeat {
        epoch: 1,
        leader: "n0".into(),
        round,
        replicas: 3,
        voters: 0,
    })
}
