//! `GET /api/v1/watch?prefix=&from_revision=`: the change feed as
//! server-sent events.
//!
//! Each change is one event with `id: <revision>` and data
//! `{revision, epoch, path, version, op, author}`, in revision order, as this node
//! applied it: a watch on a follower sees a change once that follower has
//! it. Where to start, first match wins:
//! - a `Last-Event-ID` header (what `EventSource` sends on reconnect):
//!   the changes after that revision;
//! - `from_revision=N`: the changes from revision N on;
//! - neither: the changes after the current revision.
//!
//! When the node no longer keeps the changes the watch asks for (they
//! fell out of the feed window, or a sync replaced them), the stream sends
//! one `compacted` event `{message, oldest_revision, current_revision}`
//! and ends: the client lists the state again and watches from there.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use pika_replication::{FeedEvent, FeedPage, Store};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::auth::scope::Operation;

/// How often an idle stream sends a comment, so proxies and clients can
/// tell a quiet watch from a dead connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Changes read from the store per round trip.
const PAGE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    #[serde(default)]
    prefix: String,
    from_revision: Option<u64>,
    /// Served without read permission (the envelope decides and marks the
    /// response), and not ended when this node has none.
    #[serde(default)]
    stale: Option<bool>,
}

pub async fn watch(
    State(state): State<AppState>,
    axum::extract::Extension(principal): axum::extract::Extension<Principal>,
    Query(query): Query<WatchQuery>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("header Last-Event-ID must be a revision number")
                })
        })
        .transpose()?;
    let after = match (resume, query.from_revision) {
        (Some(last), _) => last,
        (None, Some(from)) => from.saturating_sub(1),
        (None, None) => state.store.revision(),
    };
    // A watch begun under read permission (not `stale=true`, not a
    // learner's read index) is a read that goes on: it ends when that
    // permission does (`Watcher::permission`).
    let permission = state
        .writes
        .replica()
        .filter(|r| query.stale != Some(true) && r.may_read())
        .cloned();
    // Under an API token the watch goes on only while the token does: it
    // is looked up again every `PERMISSION_CHECK`, as a new request's
    // would be.
    let credentials = super::access::recheckable(&state, &headers, uri.path(), &principal)
        .map(|h| (state.auth.clone(), h));
    let watcher = Watcher {
        permission,
        credentials,
        next_check: tokio::time::Instant::now() + PERMISSION_CHECK,
        store: state.store.clone(),
        applied: state.store.subscribe(),
        stopping: state.stopping.clone(),
        prefix: query.prefix,
        reserved: state.config.cluster.prefix.clone(),
        principal,
        after,
        ready: VecDeque::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(watcher, |mut w| async move {
        let event = w.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), w))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// How often a watch begun under read permission checks it still holds.
const PERMISSION_CHECK: Duration = Duration::from_secs(1);

/// One watch's position in the feed.
struct Watcher {
    /// The replica whose read permission this watch needs: a node cut off
    /// from the leader would otherwise stream nothing new, with keep-alives,
    /// while the cluster goes on. It ends the stream with an `unavailable`
    /// event; the client resumes with `Last-Event-ID`, here once the node
    /// may read again or on another node.
    permission: Option<pika_replication::replica::Replica>,
    /// The API token the watch was opened with, checked again every
    /// `PERMISSION_CHECK`: revoked or expired, the stream ends with an
    /// `unauthorized` event.
    credentials: Option<(crate::auth::Auth, axum::http::HeaderValue)>,
    next_check: tokio::time::Instant,
    store: Arc<Store>,
    applied: tokio::sync::watch::Receiver<u64>,
    stopping: tokio::sync::watch::Receiver<bool>,
    prefix: String,
    /// `cluster.prefix`: pika's own records under it are never streamed.
    reserved: String,
    /// Changes to paths this token may not read are skipped.
    principal: Principal,
    /// Every change up to here was sent or filtered out.
    after: u64,
    ready: VecDeque<Event>,
    done: bool,
}

impl Watcher {
    /// The next event, waiting for a change if there is none yet; `None`
    /// ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.done || *self.stopping.borrow() {
                return None;
            }
            if let Some((auth, header)) = &self.credentials
                && tokio::time::Instant::now() >= self.next_check
            {
                self.next_check = tokio::time::Instant::now() + PERMISSION_CHECK;
                if let Some(why) = super::access::token_refused(auth, header).await {
                    self.done = true;
                    let body = json!({
                        "message": format!("{why}; the watch ends"),
                        "last_revision": self.after,
                    });
                    self.ready.push_back(
                        Event::default()
                            .event("unauthorized")
                            .data(body.to_string()),
                    );
                    continue;
                }
            }
            if self.permission.as_ref().is_some_and(|r| !r.may_read()) {
                self.done = true;
                let body = json!({
                    "message": format!(
                        "this node lost its read permission (it has not heard the leader \
                         within heartbeat_timeout, or left its replication set); resume from \
                         revision {} with Last-Event-ID, here once it may read or on another node",
                        self.after
                    ),
                    "last_revision": self.after,
                });
                self.ready
                    .push_back(Event::default().event("unavailable").data(body.to_string()));
                continue;
            }
            // Marked seen before reading, so a commit that lands after the
            // read still wakes the wait below.
            self.applied.borrow_and_update();
            match self.store.feed_after(self.after, PAGE) {
                Err(e) => {
                    tracing::warn!(error = %e, "watch: reading the change feed failed; ending the stream");
                    return None;
                }
                Ok(FeedPage::Compacted { oldest, current }) => {
                    self.done = true;
                    let body = json!({
                        "message": format!(
                            "changes after revision {} are no longer kept on this node; list the current state and watch from revision {oldest} or later",
                            self.after
                        ),
                        "oldest_revision": oldest,
                        "current_revision": current,
                    });
                    self.ready
                        .push_back(Event::default().event("compacted").data(body.to_string()));
                }
                Ok(FeedPage::Events { events, through }) => {
                    self.after = through;
                    let before = self.ready.len();
                    let visible = |e: &&FeedEvent| {
                        e.path.starts_with(&self.prefix)
                            && !super::access::in_namespace(&self.reserved, &e.path)
                            && self.principal.may(Operation::Read, &e.path)
                    };
                    for event in events.iter().filter(visible) {
                        self.ready.push_back(sse_event(event));
                    }
                    if self.ready.len() == before && !events.is_empty() {
                        continue; // all filtered out: read on
                    }
                    if self.ready.is_empty() {
                        let checks = self.permission.is_some() || self.credentials.is_some();
                        let check = async {
                            match checks {
                                true => tokio::time::sleep(PERMISSION_CHECK).await,
                                false => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            changed = self.applied.changed() => {
                                if changed.is_err() {
                                    return None;
                                }
                            }
                            _ = self.stopping.changed() => return None,
                            () = check => {}
                        }
                    }
                }
            }
        }
    }
}

fn sse_event(event: &FeedEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    Event::default().id(event.revision.to_string()).data(data)
}
