//! The leader's commit policy: the committer's batches go through the
//! core (proposed, appended, shipped) and are answered when they commit;
//! and how many batches may wait for their commit at once
//! (`cluster.pipeline_depth`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{Answers, Shared, lock};
use crate::commit::{CommitPolicy, Decided, WriteError};
use crate::peers::Peers;
use crate::record::{Applied, Op};
use crate::store::Store;

/// The leader's commit policy, through the core.
pub(super) struct LeaderPolicy {
    pub(super) shared: Arc<Shared>,
    pub(super) peers: Arc<Peers>,
    /// Batches kept awaiting their commit before the next one waits for
    /// room (`cluster.pipeline_depth`).
    pub(super) depth: usize,
}

impl CommitPolicy for LeaderPolicy {
    fn epoch(&self) -> Result<u64, WriteError> {
        lock(&self.shared.core)
            .write_epoch()
            .map_err(|why| WriteError::Unavailable(why.into()))
    }

    fn execute(
        &self,
        _store: &Store,
        ops: &[Op],
        epoch: u64,
        now_ms: u64,
    ) -> Result<Decided, WriteError> {
        let now = self.shared.now();
        let (outcome, outputs, held) = {
            let mut core = lock(&self.shared.core);
            let outcome = core.propose(epoch, ops, now_ms, now);
            (outcome, core.drain(), core.log_mut().take_held())
        };
        self.shared.perform(&self.peers, outputs);
        // The committer decides the next batch meanwhile.
        if let Some(held) = held {
            held.hand_off();
        }
        outcome
    }

    fn decided_through(&self, _store: &Store) -> u64 {
        lock(&self.shared.core).log_last()
    }

    /// Waits while `depth` batches await their commit (bounded by
    /// [`PIPELINE_WAIT`]). Every batch costs each follower a `Diff`, an
    /// append, two acks and a protocol step whatever its size; unbounded,
    /// many clients made many batches of a few writes each, and the
    /// followers' CPU went to the per-batch work.
    fn wait_for_room(&self) {
        let answers = lock(&self.shared.answers);
        let _ = self
            .shared
            .answered
            .wait_timeout_while(answers, PIPELINE_WAIT, |a| a.len() >= self.depth)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn proposes_in_memory(&self) -> bool {
        true
    }

    fn nothing_in_flight(&self) -> bool {
        lock(&self.shared.answers).is_empty()
    }

    fn requests_in_flight(&self) -> Vec<(String, Applied, crate::record::Fingerprint)> {
        lock(&self.shared.core).requests_in_flight()
    }

    fn committed(&self, epoch: u64, waits_for: Option<u64>, answers: Answers) {
        let Some(revision) = waits_for else {
            answer(answers);
            return;
        };
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.answers).insert(token, answers);
        let now = self.shared.now();
        let outputs = {
            let mut core = lock(&self.shared.core);
            core.wait(epoch, revision, token, now);
            core.drain()
        };
        self.shared.perform(&self.peers, outputs);
    }
}

/// The longest a batch waits for room: a commit held up (a member that
/// stopped acknowledging, until `ack_timeout` takes it out) must not hold
/// every later write back as well.
const PIPELINE_WAIT: Duration = Duration::from_millis(50);

pub(crate) fn answer(answers: Answers) {
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}

pub(crate) fn fail(answers: Answers, why: &str) {
    for (reply, _) in answers {
        let _ = reply.send(Err(WriteError::Unavailable(why.to_string())));
    }
}
