//! Blocking queries (`?index=N&wait=D`), on the change feed that serves
//! the watch API: a query sleeps until a change it covers is applied on
//! this node, then reads again. Nothing polls.

use axum::http::StatusCode;
use pika_replication::FeedPage;
use pika_replication::replica::ReadPermission;
use tokio::sync::watch;
use tokio::time::Instant;

use super::kv::Target;
use super::{ApiError, AppState};

/// Changes read from the feed per round trip.
const PAGE: usize = 256;

/// Waits until a change above revision `after` to a path `covers` keeps
/// is applied on this node (`true`), or until `deadline` or shutdown
/// (`false`). `applied` is the store's revision feed, already marked seen
/// at `after` or earlier.
pub(super) async fn changed_after(
    state: &AppState,
    applied: &mut watch::Receiver<u64>,
    mut after: u64,
    covers: impl Fn(&str) -> bool,
    deadline: Instant,
) -> Result<bool, ApiError> {
    let mut stopping = state.stopping.clone();
    loop {
        if *stopping.borrow_and_update() {
            return Ok(false);
        }
        applied.borrow_and_update();
        match state.store.feed_after(after, PAGE)? {
            // Changes went by unseen (a snapshot was installed): read again.
            FeedPage::Compacted { .. } => return Ok(true),
            FeedPage::Events { events, through } => {
                if events.iter().any(|e| covers(&e.path)) {
                    return Ok(true);
                }
                let more = through > after && events.len() == PAGE;
                after = through;
                if more {
                    continue;
                }
            }
        }
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return Ok(false); // the store is gone: shutting down
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(false),
            _ = stopping.changed() => return Ok(false),
        }
    }
}

/// What a read checks before it reads, as the envelope does for every
/// read route: read permission (unless `stale`), and no entry pending
/// here for what it covers.
pub(super) async fn ready_to_read(
    state: &AppState,
    target: &Target,
    stale: bool,
) -> Result<(), ApiError> {
    let Some(replica) = state.writes.replica() else {
        return Ok(());
    };
    if stale {
        return Ok(());
    }
    let permission = replica.read_permission().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; retry, or add ?stale to read possibly stale data"),
        )
    })?;
    if permission == ReadPermission::ReadIndex {
        return Ok(());
    }
    let waited = match target {
        Target::Key(key) => replica.read_barrier(key).await,
        Target::Prefix(prefix) => replica.folder_barrier(prefix).await,
    };
    waited.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}
