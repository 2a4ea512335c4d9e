//! The replica's settings: what the node's configuration gives the
//! protocol core (`cluster.*` in the YAML), and how learners are fed.

use std::time::Duration;

use serde::Serialize;

use crate::election::ElectionConfig;

/// Assumed bound on relative clock drift.
pub const DRIFT: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub replicas: usize,
    pub heartbeat_interval: Duration,
    /// L: `heartbeat_timeout`.
    pub lease: Duration,
    /// A member of the replication set that has not received an entry
    /// this long after it was sent loses its read permission, and leaves
    /// the set once that has surely run out (`cluster.ack_timeout`).
    pub ack_timeout: Duration,
    /// How often the leader sends its Merkle root for verification.
    pub sync_interval: Duration,
    /// A snapshot session silent for this long is abandoned, and a
    /// catch-up request unanswered for this long is asked again.
    pub sync_timeout: Duration,
    /// Byte budget of one catch-up or snapshot frame (under the transport's
    /// `max_frame`).
    pub frame_bytes: usize,
    /// The most one snapshot answer may carry, whatever `frame_bytes`
    /// says: half the transport's `max_frame`. One bucket larger than
    /// this goes with fewer versions of its history (`sync::answer`).
    pub max_answer_bytes: usize,
    /// Where the voter set lives: `{prefix}/voters`.
    pub voters_path: String,
    /// A voter unheard of by membership this long is removed from the
    /// voter set (`cluster.dead_voter_timeout`), and a caught-up learner
    /// takes its place.
    pub dead_voter_timeout: Duration,
    /// How the leader feeds learners (`cluster.learner_feed`).
    pub learner_feed: LearnerFeed,
}

/// How the leader feeds learners, the followers outside the voter set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnerFeed {
    /// Like voters: each batch is sent at once and commits once every
    /// learner in the replication set has received it, so learners serve
    /// linearizable reads locally. Every write waits for the slowest.
    #[default]
    PerWrite,
    /// From the leader's tick (every `heartbeat_interval`): learners stay
    /// out of the replication set and no commit waits for them. A read on
    /// one asks the leader for its commit index (one round trip, which
    /// also sends it what it lacks) and is served once applied through it.
    /// For many read replicas, whose per-write fan-out would slow every
    /// write.
    Batched,
}

impl CoreConfig {
    /// Quick timings for tests that drive a core by hand: heartbeats every
    /// 100 ms, L and `ack_timeout` 500 ms, verification every second, 1 MiB
    /// frames.
    pub fn quick(replicas: usize) -> CoreConfig {
        CoreConfig {
            replicas,
            heartbeat_interval: Duration::from_millis(100),
            lease: Duration::from_millis(500),
            ack_timeout: Duration::from_millis(500),
            sync_interval: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(1),
            frame_bytes: 1 << 20,
            max_answer_bytes: 32 << 20,
            voters_path: "pika/voters".into(),
            dead_voter_timeout: Duration::from_secs(5),
            learner_feed: LearnerFeed::PerWrite,
        }
    }
}

pub(super) fn election_config(config: &CoreConfig) -> ElectionConfig {
    ElectionConfig {
        replicas: config.replicas,
        heartbeat_interval: config.heartbeat_interval,
        lease: config.lease,
        drift: DRIFT,
    }
}
