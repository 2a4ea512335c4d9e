//! What every response passes through on its way out.

use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pika_replication::replica::ReadPermission;

use super::error::ErrorMessage;
use super::{AppState, RequestId};

/// The route template that served a request (`/api/v1/file/{*path}`), for
/// metric labels that do not explode with every path.
#[derive(Clone)]
struct RouteLabel(String);

/// Runs inside routing, where the matched template is known, and passes it
/// out on the response.
pub async fn tag_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

/// Request id, JSON error bodies, `X-Pika-Revision`, request metrics.
pub async fn envelope(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string);
    let client_id = given.is_some();
    let request_id = given.unwrap_or_else(|| state.request_ids.next());
    let mut request = request;
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));

    // A read that started before this node reopened its state (after a
    // disk error) may have passed its checks on the state before it: it is
    // refused rather than answered from a state that went back.
    let reopens = is_read(&request).then(|| state.store.reopens());
    // Who is asking comes first: a refused token waits on nothing.
    let mut stale = false;
    let checks = async {
        match super::access::check(&state, super::access::Caller::of(&request)).await {
            Err(refusal) => Some(refusal),
            Ok(principal) => {
                // A client's id is the idempotency key of its writes: under
                // an API token, it is that token's own, so that a client of
                // another token cannot claim it first or be answered with
                // its outcome. (Token names hold no `/`.)
                if client_id
                    && !principal.admin
                    && let Some(name) = &principal.name
                {
                    request
                        .extensions_mut()
                        .insert(RequestId(format!("{name}/{request_id}")));
                }
                request.extensions_mut().insert(principal);
                let check = read_lease_check(&state, is_read(&request), asks_stale(&request)).await;
                stale = check.stale;
                match (check.refusal, read_target(&request)) {
                    (Some(refusal), _) => Some(refusal),
                    (None, None) => None,
                    // Applied through the leader's commit index: nothing
                    // pending here can be a write acknowledged before the
                    // read.
                    (None, Some(_)) if check.by_read_index => None,
                    (None, Some(target)) => pending_read_wait(&state, target).await,
                }
            }
        }
    };
    // Each wait above is bounded by forward_timeout; a read with an API
    // token has two (its token's record, then its own path), and together
    // they are bounded by it too (DESIGN.md, "Reads").
    let refused = match state.writes.replica() {
        None => checks.await,
        Some(_) => {
            let limit = state.config.cluster.forward_timeout.0;
            tokio::time::timeout(limit, checks)
                .await
                .unwrap_or_else(|_| {
                    Some(
                        super::ApiError::new(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "the token check and the read's waits took longer than \
                                 forward_timeout ({limit:?}); retry"
                            ),
                        )
                        .into_response(),
                    )
                })
        }
    };
    let mut response = match refused {
        Some(refusal) => refusal,
        None => next.run(request).await,
    };
    if !stale && reopens.is_some_and(|r| r != state.store.reopens()) {
        response = super::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "this node reopened its state during the read (after a disk error); retry",
        )
        .into_response();
    }
    if stale {
        response
            .headers_mut()
            .insert("x-pika-stale", HeaderValue::from_static("true"));
    }

    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or_else(|| "unmatched".to_string(), |r| r.0.clone());
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        response = json_error(response, &request_id).await;
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    headers.insert("x-pika-revision", HeaderValue::from(state.store.revision()));
    if let Some(leader) = state
        .writes
        .replica()
        .and_then(|r| r.leader_http_addr())
        .and_then(|l| HeaderValue::from_str(&l).ok())
    {
        headers.insert("x-pika-leader", leader);
    }
    if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }

    // Methods outside the standard ones share one label: each new one was
    // a new series, kept for good, and any client could send them.
    let method = match method.as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m,
        _ => "other",
    };
    let labels = [
        ("route", route),
        ("method", method.to_string()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("pika_http_requests_total", &labels).increment(1);
    metrics::histogram!("pika_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Config routes whose tail is a config path (access control checks the
/// token's scopes on it; reads of it wait on its pending entry).
pub(super) const PATH_ROUTES: [&str; 4] = [
    "/api/v1/file/",
    "/api/v1/data/",
    "/api/v1/versions/",
    "/api/v1/diff/",
];

fn is_read(request: &Request) -> bool {
    let method = request.method();
    let path = request.uri().path();
    (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        && (PATH_ROUTES.iter().any(|p| path.starts_with(p))
            || path.starts_with("/api/v1/folder")
            || path == "/api/v1/watch"
            || path == "/api/v1/search"
            || path == "/api/v1/backup"
            || super::consul::kv_key(path).is_some())
}

/// Whether a read asked to be served without read permission: natively
/// `?stale=true`, on the Consul routes `?stale` with any value.
fn asks_stale(request: &Request) -> bool {
    let query = request.uri().query();
    if super::consul::is_consul(request.uri().path()) {
        return super::consul::has_param(query, "stale");
    }
    query.is_some_and(|q| q.split('&').any(|kv| kv == "stale=true"))
}

/// A read of a path with an entry received but not applied yet waits for
/// it (DESIGN.md, "Reads"): that entry may be a write already
/// acknowledged to someone. A folder waits on the paths under it. Bounded
/// by `forward_timeout`, then 503.
async fn pending_read_wait(state: &AppState, target: ReadTarget) -> Option<Response> {
    let replica = state.writes.replica()?.clone();
    let waited = match target {
        ReadTarget::Folder(prefix) => replica.folder_barrier(&prefix).await,
        ReadTarget::Path(path) => replica.read_barrier(&path).await,
    };
    waited.err().map(|e| {
        super::ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            .into_response()
    })
}

enum ReadTarget {
    Path(String),
    /// Every path under this prefix (empty: the whole store).
    Folder(String),
}

/// What a read must wait on: none for writes, stale reads and routes that
/// read no config.
fn read_target(request: &Request) -> Option<ReadTarget> {
    if !is_read(request) || asks_stale(request) {
        return None;
    }
    let raw = request.uri().path();
    if let Some(key) = super::consul::kv_key(raw) {
        return Some(match super::consul::reads_prefix(request.uri().query()) {
            true => ReadTarget::Folder(key),
            false => ReadTarget::Path(key),
        });
    }
    if raw == "/api/v1/search" || raw == "/api/v1/backup" {
        // Over everything (the token may read): waits on every pending
        // path. A backup's snapshot is of the state, which applies
        // committed entries up to 20 ms after their answer; without the
        // wait, a backup taken right after an acknowledged write lacked it.
        return Some(ReadTarget::Folder(String::new()));
    }
    if let Some(rest) = raw.strip_prefix("/api/v1/folder") {
        // The folder the handler lists: what its route captured, decoded,
        // then made a prefix (`team%2F` is `team/`, the folder `team`).
        // One that is not valid is refused there, and read nowhere.
        let captured = percent_decode(rest.strip_prefix('/').unwrap_or(rest));
        let folder = pika_replication::path::folder_prefix(&captured).ok()?;
        return Some(ReadTarget::Folder(if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        }));
    }
    PATH_ROUTES
        .iter()
        .find_map(|route| raw.strip_prefix(route))
        .map(|path| ReadTarget::Path(percent_decode(path)))
}

/// `%XX` escapes decoded, as axum's path extractor does; anything that
/// does not decode to UTF-8 is kept as it came.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// What [`read_lease_check`] decided.
struct LeaseCheck {
    refusal: Option<Response>,
    /// Served without permission, as the client asked (`stale=true`).
    stale: bool,
    /// Allowed by the leader's commit index (a learner fed in batches):
    /// no wait on pending entries.
    by_read_index: bool,
}

/// Local reads in a cluster need read permission (DESIGN.md, "Reads"), or
/// on a learner fed in batches the leader's commit index applied here
/// ([`pika_replication::replica::Replica::read_permission`]): without
/// either a read is refused with 503, unless the client asked for
/// `stale=true`, in which case it is served at once and marked.
async fn read_lease_check(state: &AppState, is_read: bool, asks_stale: bool) -> LeaseCheck {
    let allowed = |by_read_index| LeaseCheck {
        refusal: None,
        stale: false,
        by_read_index,
    };
    let Some(replica) = state.writes.replica() else {
        return allowed(false);
    };
    if !is_read {
        return allowed(false);
    }
    // Served from the state as it is, without waiting on pending entries,
    // and marked so, whether or not this node may read now: a node that
    // may still has entries that are acknowledged and not applied here.
    if asks_stale {
        return LeaseCheck {
            refusal: None,
            stale: true,
            by_read_index: false,
        };
    }
    if replica.may_read() {
        return allowed(false);
    }
    match replica.read_permission().await {
        Ok(ReadPermission::Lease) => allowed(false),
        Ok(ReadPermission::ReadIndex) => allowed(true),
        Err(e) => LeaseCheck {
            refusal: Some(
                super::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; retry, or add ?stale=true to read possibly stale data"),
                )
                .into_response(),
            ),
            stale: false,
            by_read_index: false,
        },
    }
}

/// Rewrites an error response as `{message, request_id}`. The message is the
/// handler's [`ErrorMessage`], or else the body axum wrote (rejections are
/// plain text), or else the status's reason phrase.
async fn json_error(response: Response, request_id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let message = match parts.extensions.remove::<ErrorMessage>() {
        Some(ErrorMessage(m)) => m,
        None => {
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
            if is_json {
                // Already JSON (not ours today, but leave it intact).
                return Response::from_parts(parts, Body::from(bytes));
            }
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if text.is_empty() {
                parts
                    .status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_string()
            } else {
                text
            }
        }
    };
    let body = serde_json::json!({ "message": message, "request_id": request_id });
    let mut out = (parts.status, axum::Json(body)).into_response();
    // Keep headers such as Retry-After or Allow, but not the old length/type.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.iter() {
        out.headers_mut().insert(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .expect("a request")
    }

    /// The target as (what, path or prefix).
    fn target(uri: &str) -> Option<(&'static str, String)> {
        read_target(&get(uri)).map(|t| match t {
            ReadTarget::Path(p) => ("path", p),
            ReadTarget::Folder(p) => ("folder", p),
        })
    }

    /// A read waits on what its handler reads, however the URL spells it.
    /// `team%2F` is the folder `team`: the wait used to be on `team//`,
    /// which nothing is under. `?%72ecurse` is a recursive Consul read: the
    /// wait used to be on the one key.
    #[test]
    fn a_read_waits_on_what_its_handler_reads() {
        let folder = |p: &str| Some(("folder", p.to_string()));
        let path = |p: &str| Some(("path", p.to_string()));
        assert_eq!(target("/api/v1/folder"), folder(""));
        assert_eq!(target("/api/v1/folder/"), folder(""));
        assert_eq!(target("/api/v1/folder/team"), folder("team/"));
        assert_eq!(target("/api/v1/folder/team/"), folder("team/"));
        assert_eq!(target("/api/v1/folder/team%2F"), folder("team/"));
        assert_eq!(target("/api/v1/folder/team%2Fapp%2F"), folder("team/app/"));
        assert_eq!(target("/api/v1/folder/t%C3%A9am"), folder("téam/"));
        // Refused by the handler (an empty segment): nothing to wait on.
        assert_eq!(target("/api/v1/folder/a//b"), None);
        assert_eq!(target("/api/v1/file/a%2Fb"), path("a/b"));
        assert_eq!(target("/api/v1/data/a/b"), path("a/b"));
        assert_eq!(target("/v1/kv/app"), path("app"));
        assert_eq!(target("/v1/kv/app?recurse"), folder("app"));
        assert_eq!(target("/v1/kv/app?%72ecurse"), folder("app"));
        assert_eq!(target("/v1/kv/app?keys&separator=%2F"), folder("app"));
        assert_eq!(target("/v1/kv/app?%6Beys=true"), folder("app"));
        // Stale reads wait on nothing, however `stale` is spelled.
        assert_eq!(target("/v1/kv/app?st%61le"), None);
        assert_eq!(target("/api/v1/data/a?stale=true"), None);
    }
}
