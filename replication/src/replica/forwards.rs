//! Writes forwarded between nodes, served on the node's runtime.
//!
//! A node that does not lead sends a client's write to the leader
//! (`Forward`) and waits for its answer (`ForwardReply`, matched by id in
//! `Shared::forwards`). Neither needs the protocol core: the leader's
//! committer refuses a write when this node does not lead (the same check
//! the core made), and an answer only wakes its waiter. `Peers` hands both
//! here instead of to the protocol thread, which saves two thread hops per
//! forwarded write.

use tokio::sync::mpsc;

use super::{Replica, lock};
use crate::commit::WriteError;
use crate::wire::{ForwardResult, PeerMessage};

/// Serves `inbox` until it closes (or the task is aborted at stop).
pub(crate) async fn serve(replica: Replica, mut inbox: mpsc::Receiver<(String, PeerMessage)>) {
    while let Some((from, message)) = inbox.recv().await {
        // The core's check, for messages that no longer pass through it.
        if message.dropped_as_malformed(&from) {
            continue;
        }
        match message {
            PeerMessage::Forward { id, request_id, op } => {
                let replica = replica.clone();
                tokio::spawn(async move {
                    let result = match replica.writes.submit_once(op, Some(request_id)).await {
                        Ok(a) => ForwardResult::Applied(a),
                        Err(WriteError::Rejected(e)) => ForwardResult::Rejected(e),
                        Err(e) => ForwardResult::Unavailable(e.to_string()),
                    };
                    replica
                        .peers
                        .send(&from, PeerMessage::ForwardReply { id, result });
                });
            }
            PeerMessage::ForwardReply { id, result } => {
                if let Some(waiter) = lock(&replica.shared.forwards).remove(&id) {
                    let _ = waiter.send(result);
                }
            }
            other => tracing::debug!(%from, ?other, "not a forwarded write; dropped"),
        }
    }
}
