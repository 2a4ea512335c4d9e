//! Token administration (admin tokens only, checked in `access`):
//! `GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{name}`.
//!
//! A token is two records in the replicated state (see `auth::token`),
//! written one after the other: the name first, with compare-and-set at
//! version 0, so two admins creating the same name on two nodes cannot
//! both succeed; then the record under the token's hash, which is what
//! makes the token work. Revoking deletes in the other order, so a token
//! stops working before its name is freed. A crash between the two leaves
//! a name without a working token, which revoking cleans up.
//!
//! The two writes get request ids of their own, not ones derived from the
//! client's `X-Request-Id`: a retried create must not be answered with a
//! fresh secret for a record that holds the first one's hash. It gets a
//! 409 instead (the name is taken), and the caller revokes and creates.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pika_replication::{ChangeKind, ConfigPath, Format, Meta, Op, WriteError};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::auth::scope::Scope;
use crate::auth::token::{self, NameRecord, TokenHash, TokenRecord};
use crate::auth::{Principal, now_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    admin: bool,
    /// A duration such as `720h`; absent: the token does not expire.
    #[serde(default)]
    expires_in: Option<String>,
}

fn reserved_path(raw: String) -> Result<ConfigPath, ApiError> {
    ConfigPath::new(raw.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("token record path {raw:?}: {e} (check cluster.prefix)"),
        )
    })
}

fn json_op(path: ConfigPath, value: &impl serde::Serialize, expected: u64) -> Result<Op, ApiError> {
    let data = serde_json::to_vec(value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let meta = Meta {
        format: Format::Json,
        description: String::new(),
        flags: 0,
    };
    Op::put(path, meta, data, Some(expected))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// POST /api/v1/tokens `{name, scopes, admin?, expires_in?}`: 201 with the
/// token, shown this once.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateRequest = ApiError::json_body(&body)?;
    token::check_name(&request.name).map_err(ApiError::bad_request)?;
    let scopes = request
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("field `scopes`: {e}")))?;
    if scopes.is_empty() && !request.admin {
        return Err(ApiError::bad_request(
            "field `scopes`: a token that is not admin needs at least one scope, \
             e.g. \"app/**:read\"",
        ));
    }
    let created_at_ms = now_ms();
    let expires_at_ms = request
        .expires_in
        .as_deref()
        .map(|text| {
            let lifetime = crate::config::duration::parse(text)
                .map_err(|e| ApiError::bad_request(format!("field `expires_in`: {e}")))?;
            if lifetime.is_zero() {
                return Err(ApiError::bad_request(
                    "field `expires_in`: a token must live longer than 0 (leave the field out \
                     for one that never expires)",
                ));
            }
            Ok(created_at_ms.saturating_add(lifetime.as_millis() as u64))
        })
        .transpose()?;
    let secret = token::generate().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness for a token: {e}"),
        )
    })?;
    let hash = TokenHash::of(&secret);
    let record = TokenRecord {
        name: request.name.clone(),
        scopes,
        admin: request.admin,
        expires_at_ms,
        created_at_ms,
        created_by: principal.author(),
    };
    let paths = state.auth.paths();
    let name_op = json_op(
        reserved_path(paths.by_name(&request.name))?,
        &NameRecord { hash: hash.hex() },
        0,
    )?
    .with_author(principal.author());
    match state
        .writes
        .submit_with_id(name_op, state.request_ids.next())
        .await
    {
        Err(WriteError::Rejected(pika_replication::OpError::VersionMismatch { .. })) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a token named {:?} exists; revoke it first", request.name),
            ));
        }
        other => other?,
    };
    let token_op =
        json_op(reserved_path(paths.by_hash(&hash))?, &record, 0)?.with_author(principal.author());
    state
        .writes
        .submit_with_id(token_op, state.request_ids.next())
        .await?;
    tracing::info!(name = record.name, admin = record.admin, by = ?record.created_by, "token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": record.name,
            "token": secret,
            "scopes": record.scopes,
            "admin": record.admin,
            "expires_at_ms": record.expires_at_ms,
            "created_at_ms": record.created_at_ms,
        })),
    )
        .into_response())
}

/// GET /api/v1/tokens: every token's name, scopes and dates (never a
/// secret or a hash).
pub async fn list_tokens(State(state): State<AppState>) -> Result<Response, ApiError> {
    let folder = state.auth.paths().hashes_folder();
    // A linearizable read like any other: a node cut off from the leader
    // must not list what it last heard.
    if let Some(replica) = state.writes.replica() {
        replica
            .linearizable_folder(&format!("{folder}/"))
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    let mut tokens = Vec::new();
    for child in state.store.list_folder(&folder)? {
        if child.file.is_none() {
            continue;
        }
        let Some(record) = read_json::<TokenRecord>(&state, &child.path)? else {
            continue;
        };
        tokens.push(json!({
            "name": record.name,
            "scopes": record.scopes,
            "admin": record.admin,
            "expires_at_ms": record.expires_at_ms,
            "expired": record.expires_at_ms.is_some_and(|at| now_ms() >= at),
            "created_at_ms": record.created_at_ms,
            "created_by": record.created_by,
        }));
    }
    tokens.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

/// DELETE /api/v1/tokens/{name}: 204; refused everywhere from then on.
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    token::check_name(&name).map_err(ApiError::bad_request)?;
    let paths = state.auth.paths();
    let name_path = paths.by_name(&name);
    // The token is looked up here: without read permission a token
    // created through another node would be "no token named".
    if let Some(replica) = state.writes.replica() {
        replica
            .linearizable_read(&name_path)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    let Some(entry) = state.store.entry(&name_path)?.filter(|e| !e.deleted) else {
        return Err(ApiError::not_found(format!("no token named {name:?}")));
    };
    if let Some(named) = read_json::<NameRecord>(&state, &name_path)? {
        let hash_op = Op::delete(reserved_path(paths.by_hash_hex(&named.hash))?, None)
            .with_author(principal.author());
        match state
            .writes
            .submit_with_id(hash_op, state.request_ids.next())
            .await
        {
            // Only the name was written (a crash between the two writes).
            Err(WriteError::Rejected(pika_replication::OpError::NotFound(_))) => {}
            other => {
                other?;
            }
        }
    }
    let name_op =
        Op::delete(reserved_path(name_path)?, Some(entry.version)).with_author(principal.author());
    state
        .writes
        .submit_with_id(name_op, state.request_ids.next())
        .await?;
    tracing::info!(name, by = ?principal.name, "token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The latest live version at `path` as JSON, `None` if absent or deleted.
fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    path: &str,
) -> Result<Option<T>, ApiError> {
    let Some(change) = state.store.get(path, None)? else {
        return Ok(None);
    };
    match change.kind {
        ChangeKind::Delete => Ok(None),
        ChangeKind::Put { data, .. } => serde_json::from_slice(&data).map(Some).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the record at {path} does not parse: {e}"),
            )
        }),
    }
}

/// GET /api/v1/whoami: the presented token's name, admin flag and scopes
/// (what the UI uses to disable what the token may not do).
pub async fn whoami(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    Json(json!({
        "name": principal.name,
        "admin": principal.admin,
        "scopes": principal.scopes,
        "auth_enabled": state.auth.enabled(),
    }))
    .into_response()
}
