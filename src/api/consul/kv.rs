//! `/v1/kv/{key}`: GET (one key, `?recurse`, `?keys`, `?raw`, blocking
//! `?index=&wait=`), PUT (`?cas=`, `?flags=`), DELETE (`?recurse`, `?cas=`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, OriginalUri, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pika_replication::{
    Applied, Change, ChangeKind, ConfigPath, Format, Meta, Op, OpError, WriteError,
};
use serde::Serialize;

use super::{ApiError, AppState, KvQuery, blocking, has_param, kv_key, read_headers};
use crate::api::RequestId;
use crate::auth::Principal;
use crate::auth::scope::Operation;

/// One key in Consul's shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair {
    lock_index: u64,
    key: String,
    flags: u64,
    /// Base64; `null` for an empty value, as Consul writes it.
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
}

impl KvPair {
    fn of(change: Change) -> Option<Self> {
        let ChangeKind::Put { meta, data } = change.kind else {
            return None;
        };
        Some(Self {
            lock_index: 0,
            key: change.path,
            flags: meta.flags,
            value: (!data.is_empty()).then(|| BASE64.encode(&data)),
            create_index: change.created_revision,
            modify_index: change.revision,
        })
    }
}

/// What a read found, and where it stands for a blocking query.
struct Answer {
    /// The highest revision of any change to what was read (deletions
    /// included): a blocking query returns once it passes the client's.
    changed_at: u64,
    response: Response,
}

/// The paths a caller may see through this API: not pika's reserved
/// namespace, and only what its token may read.
pub(super) struct Visible {
    reserved: String,
    principal: Principal,
}

impl Visible {
    pub(super) fn keeps(&self, path: &str) -> bool {
        !crate::api::access::in_namespace(&self.reserved, path)
            && self.principal.may(Operation::Read, path)
    }
}

/// What a read covers: one key, or every key starting with a prefix.
pub(super) enum Target {
    Key(String),
    Prefix(String),
}

impl Target {
    pub(super) fn covers(&self, path: &str) -> bool {
        match self {
            Target::Key(key) => path == key,
            Target::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

fn config_path(key: &str) -> Result<ConfigPath, ApiError> {
    ConfigPath::new(key.to_string())
        .map_err(|e| ApiError::bad_request(format!("key {key:?} is not a valid pika path: {e}")))
}

/// GET /v1/kv/{key}
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let query = KvQuery::parse(&params)?;
    let key = kv_key(uri.path()).unwrap_or_default();
    let target = if query.recurse || query.keys {
        Target::Prefix(key)
    } else {
        config_path(&key)?;
        Target::Key(key)
    };
    let visible = Visible {
        reserved: state.config.cluster.prefix.clone(),
        principal,
    };
    let stale = has_param(uri.query(), "stale");
    // Without an index nothing waits, and no subscription is taken: the
    // store counts subscribers as watchers and applies sooner for them.
    let Some(index) = query.index else {
        return Ok(read(&state, &query, &target, &visible)?.response);
    };
    // Under an API token, each round after a wake is a request of its own
    // to the token too: one revoked or expired meanwhile gets a 401, not
    // the value written after it.
    let credentials =
        crate::api::access::recheckable(&state, &headers, uri.path(), &visible.principal);
    let deadline = tokio::time::Instant::now() + query.wait;
    let mut applied = state.store.subscribe();
    loop {
        // Marked seen before the read: a change applied after it wakes the
        // wait below.
        applied.borrow_and_update();
        let read_from = state.store.revision();
        let answer = read(&state, &query, &target, &visible)?;
        if answer.changed_at > index {
            return Ok(answer.response);
        }
        let woke = blocking::changed_after(
            &state,
            &mut applied,
            read_from,
            |path| target.covers(path) && visible.keeps(path),
            deadline,
        )
        .await?;
        if !woke {
            return Ok(answer.response); // the wait ran out: same index
        }
        // The read after the wake is as fresh as the first one: it waits
        // for entries pending here, and needs read permission still.
        blocking::ready_to_read(&state, &target, stale).await?;
        if let Some(header) = &credentials
            && let Some(why) = crate::api::access::token_refused(&state.auth, header).await
        {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, why));
        }
    }
}

fn read(
    state: &AppState,
    query: &KvQuery,
    target: &Target,
    visible: &Visible,
) -> Result<Answer, ApiError> {
    let keep = |path: &str| visible.keeps(path);
    let not_found = |changed_at: u64| {
        let what = match target {
            Target::Key(key) => format!("key {key:?} does not exist"),
            Target::Prefix(prefix) => format!("no key under {prefix:?}"),
        };
        let mut response = ApiError::not_found(what).into_response();
        let revision = state.store.revision();
        response.headers_mut().extend(read_headers(state, revision));
        Answer {
            changed_at,
            response,
        }
    };
    match target {
        Target::Prefix(prefix) if query.keys => {
            let under = state.store.entries_under(prefix, keep)?;
            let mut keys: Vec<String> = under
                .live
                .into_iter()
                .map(|(path, _)| match &query.separator {
                    Some(sep) => match path[prefix.len()..].find(sep.as_str()) {
                        Some(at) => path[..prefix.len() + at + sep.len()].to_string(),
                        None => path,
                    },
                    None => path,
                })
                .collect();
            // Keys sort, so the ones that roll up to a folder are adjacent.
            keys.dedup();
            Ok(listing(state, keys, under.index).unwrap_or_else(|| not_found(under.index)))
        }
        Target::Prefix(prefix) => {
            let under = state.store.latest_under(prefix, keep)?;
            let pairs: Vec<KvPair> = under.live.into_iter().filter_map(KvPair::of).collect();
            Ok(listing(state, pairs, under.index).unwrap_or_else(|| not_found(under.index)))
        }
        Target::Key(key) => {
            let change = state.store.get(key, None)?;
            let changed_at = change.as_ref().map_or(0, |c| c.revision);
            let Some(change) = change.filter(|c| !c.is_delete()) else {
                return Ok(not_found(changed_at));
            };
            let mut headers = read_headers(state, change.revision).to_vec();
            // pika's own version of the key, beside Consul's index.
            headers.push((
                axum::http::HeaderName::from_static("x-pika-version"),
                HeaderValue::from(change.version),
            ));
            let headers = axum::response::AppendHeaders(headers);
            if query.raw {
                let ChangeKind::Put { meta, data } = change.kind else {
                    return Ok(not_found(changed_at));
                };
                let content_type = HeaderValue::from_static(meta.format.content_type());
                return Ok(Answer {
                    changed_at,
                    response: (headers, [(header::CONTENT_TYPE, content_type)], data)
                        .into_response(),
                });
            }
            let pairs: Vec<KvPair> = KvPair::of(change).into_iter().collect();
            Ok(Answer {
                changed_at,
                response: (headers, Json(pairs)).into_response(),
            })
        }
    }
}

/// The answer to a read of many keys; `None` when there are none (a 404).
fn listing<T: Serialize>(state: &AppState, items: Vec<T>, index: u64) -> Option<Answer> {
    (!items.is_empty()).then(|| Answer {
        changed_at: index,
        response: (read_headers(state, index), Json(items)).into_response(),
    })
}

/// The format a value written through this API is kept in: its
/// extension's, else text when it is UTF-8, else binary.
fn format_for(path: &ConfigPath, data: &[u8]) -> Format {
    match crate::api::files::format_of(path) {
        Format::Text if std::str::from_utf8(data).is_err() => Format::Binary,
        format => format,
    }
}

/// PUT /v1/kv/{key}: answers `true`, or `false` when a `?cas=` check
/// failed.
pub async fn put(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = KvQuery::parse(&params)?;
    let key = kv_key(uri.path()).unwrap_or_default();
    let path = config_path(&key)?;
    let Some(expected) = expected_version(&state, &key, query.cas).await? else {
        return Ok(Json(false).into_response());
    };
    let data = body.to_vec();
    let meta = Meta {
        format: format_for(&path, &data),
        description: String::new(),
        flags: query.flags.unwrap_or(0),
    };
    let op = Op::put(path, meta, data, expected)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .with_author(principal.author());
    match state.writes.submit(op, &request_id).await {
        Ok(applied) => Ok(changed(applied)),
        Err(WriteError::Rejected(OpError::VersionMismatch { .. })) => {
            Ok(Json(false).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// `true`, with the version the change made and the term that committed
/// it in `X-Pika-Version` and `X-Pika-Epoch`, as the native delete reports
/// them: Consul's clients ignore them, pika's fault campaign checks them.
fn changed(applied: Applied) -> Response {
    let mut response = Json(true).into_response();
    let headers = response.headers_mut();
    headers.insert("x-pika-version", HeaderValue::from(applied.version));
    headers.insert("x-pika-epoch", HeaderValue::from(applied.epoch));
    response
}

/// DELETE /v1/kv/{key}: answers `true` (also for a key that was not
/// there, as Consul does), or `false` when a `?cas=` check failed.
pub async fn delete(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let query = KvQuery::parse(&params)?;
    let key = kv_key(uri.path()).unwrap_or_default();
    if query.recurse {
        if query.cas.is_some() {
            return Err(ApiError::bad_request(
                "`cas` cannot be combined with `recurse`",
            ));
        }
        return delete_under(&state, &request_id, &principal, &key).await;
    }
    let path = config_path(&key)?;
    let Some(expected) = expected_version(&state, &key, query.cas).await? else {
        // No version has the index: `false`, unless there is nothing to
        // delete, which Consul answers `true` whatever the index.
        let live = state.store.entry(&key)?.is_some_and(|e| !e.deleted);
        return Ok(Json(!live).into_response());
    };
    let op = Op::delete(path, expected).with_author(principal.author());
    match state.writes.submit(op, &request_id).await {
        Ok(applied) => Ok(changed(applied)),
        Err(WriteError::Rejected(OpError::NotFound(_))) => Ok(Json(true).into_response()),
        Err(WriteError::Rejected(OpError::VersionMismatch { .. })) => {
            Ok(Json(false).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes every live key under `prefix`, each with its own write (pika
/// has no multi-path transaction): they are submitted together, so they
/// usually commit in one batch, but a write under the prefix that races
/// with this one may survive it.
async fn delete_under(
    state: &AppState,
    request_id: &RequestId,
    principal: &Principal,
    prefix: &str,
) -> Result<Response, ApiError> {
    blocking::ready_to_read(state, &Target::Prefix(prefix.to_string()), false).await?;
    let reserved = &state.config.cluster.prefix;
    let under = state.store.entries_under(prefix, |path| {
        !crate::api::access::in_namespace(reserved, path)
    })?;
    if let Some((path, _)) = under
        .live
        .iter()
        .find(|(path, _)| !principal.may(Operation::Delete, path))
    {
        // The path is named only to a token that may read it: the refusal
        // must not list what the token cannot.
        let which = if principal.may(Operation::Read, path) {
            path.clone()
        } else {
            "a key it may not read".to_string()
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} may not delete {which}, which is under {prefix:?}",
                principal.name.as_deref().unwrap_or_default()
            ),
        ));
    }
    let deletes = under.live.into_iter().map(|(path, _)| {
        let writes = state.writes.clone();
        let author = principal.author();
        // One request, many writes: each needs its own idempotency key,
        // named by its key, so that a retry (which lists what is left)
        // gives each key the id it had the first time. Numbered by place
        // in the listing, a retry gave a key left over another key's id.
        let id = format!("{}/{path}", request_id.0);
        async move {
            let path = config_path(&path)?;
            let op = Op::delete(path, None).with_author(author);
            match writes.submit_with_id(op, id).await {
                Ok(_) | Err(WriteError::Rejected(OpError::NotFound(_))) => Ok(()),
                Err(e) => Err(ApiError::from(e)),
            }
        }
    });
    for result in futures_util::future::join_all(deletes).await {
        result?;
    }
    Ok(Json(true).into_response())
}

/// The version a `?cas=<index>` write expects: `Some(None)` without one,
/// `Some(Some(0))` for `cas=0` (the key must not exist), the version whose
/// revision is the index, or `None` when no version the history keeps has
/// that index (the write answers `false` without being sent).
///
/// The index is looked up in this node's state, which is as fresh as a
/// read's: the write then carries the version, which the leader checks, so
/// a change in between fails it. A version older than the live one is
/// sent too rather than answered `false` here: the leader refuses it
/// (`false`) unless the write is a retry, under the same request id, of
/// one that took effect, which it answers with its first outcome.
async fn expected_version(
    state: &AppState,
    key: &str,
    cas: Option<u64>,
) -> Result<Option<Option<u64>>, ApiError> {
    let index = match cas {
        None => return Ok(Some(None)),
        Some(0) => return Ok(Some(Some(0))),
        Some(index) => index,
    };
    blocking::ready_to_read(state, &Target::Key(key.to_string()), false).await?;
    let live = state.store.entry(key)?.filter(|e| !e.deleted);
    if let Some(live) = live.filter(|e| e.revision == index) {
        return Ok(Some(Some(live.version)));
    }
    Ok(state
        .store
        .versions(key)?
        .into_iter()
        .flatten()
        .find(|v| v.revision == index && !v.deleted)
        .map(|v| Some(v.version)))
}
