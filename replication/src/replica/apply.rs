//! The follower's write path: diffs and sync installs, strictly in arrival
//! order, each one durable transaction, acknowledged after its commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Shared, SyncRecord, lock, now_ms};
use crate::election::Position;
use crate::peers::Peers;
use crate::record::Change;
use crate::store::{ApplyError, PathState, Store};
use crate::wire::PeerMessage;

pub(crate) enum Job {
    Diff {
        from: String,
        epoch: u64,
        prev: Position,
        changes: Vec<Change>,
    },
    Install {
        from: String,
        leader_epoch: u64,
        buckets: Vec<u16>,
        paths: Vec<PathState>,
        revision: u64,
        epoch: u64,
    },
}

/// What of a diff continues a log that ends at `pos`: all of it, the part
/// after `pos` if `pos` is in it, or nothing usable (`None`: catch up).
fn continuation(pos: Position, prev: Position, changes: Vec<Change>) -> Option<Vec<Change>> {
    if prev == pos {
        return Some(changes);
    }
    let at = changes
        .iter()
        .position(|c| c.revision == pos.revision && c.epoch == pos.epoch)?;
    Some(changes[at + 1..].to_vec())
}

pub(crate) async fn run(
    store: Arc<Store>,
    peers: Arc<Peers>,
    shared: Arc<Shared>,
    catch_up_every: Duration,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut last_catch_up: Option<Instant> = None;
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Diff {
                from,
                epoch,
                prev,
                changes,
            } => {
                let promised = store.promised_epoch();
                if epoch < promised {
                    peers.send(&from, PeerMessage::Fenced { epoch, promised });
                    continue;
                }
                let pos = store.position();
                if changes.last().is_some_and(|c| c.revision <= pos.revision) && prev != pos {
                    continue; // a resent diff this log already holds
                }
                let Some(todo) = continuation(pos, prev, changes) else {
                    lock(&shared.status).behind = true;
                    if last_catch_up.is_none_or(|t| t.elapsed() >= catch_up_every) {
                        last_catch_up = Some(Instant::now());
                        tracing::info!(?pos, ?prev, "diff does not continue this log: catching up");
                        peers.send(&from, PeerMessage::CatchUp { epoch, from: pos });
                    }
                    continue;
                };
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.apply(&todo)).await {
                    Ok(Ok(())) => {
                        lock(&shared.status).behind = false;
                        last_catch_up = None;
                        peers.send(
                            &from,
                            PeerMessage::DiffAck {
                                epoch,
                                revision: store.revision(),
                            },
                        );
                    }
                    Ok(Err(ApplyError::Gap { .. })) => lock(&shared.status).behind = true,
                    Ok(Err(ApplyError::Store(e))) => {
                        tracing::error!(error = %e, "applying a diff failed")
                    }
                    Err(e) => tracing::error!(error = %e, "the apply task panicked"),
                }
            }
            Job::Install {
                from,
                leader_epoch,
                buckets,
                paths,
                revision,
                epoch,
            } => {
                let s = store.clone();
                let (nb, np) = (buckets.len(), paths.len());
                let installed = tokio::task::spawn_blocking(move || {
                    s.install(&buckets, &paths, revision, epoch)
                })
                .await;
                match installed {
                    Ok(Ok(())) => {
                        metrics::counter!("pika_syncs_total").increment(1);
                        metrics::counter!("pika_sync_buckets_transferred_total")
                            .increment(nb as u64);
                        tracing::info!(buckets = nb, paths = np, revision, "Merkle sync installed");
                        lock(&shared.status).last_sync = Some(SyncRecord {
                            at_ms: now_ms(),
                            revision,
                            buckets: nb,
                            paths: np,
                        });
                        // Whatever the leader committed after the snapshot.
                        last_catch_up = Some(Instant::now());
                        peers.send(
                            &from,
                            PeerMessage::CatchUp {
                                epoch: leader_epoch,
                                from: store.position(),
                            },
                        );
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "installing sync buckets failed"),
                    Err(e) => tracing::error!(error = %e, "the install task panicked"),
                }
            }
        }
    }
}
