//! Config routes: save, read, delete, raw data, versions, folders.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pika_replication::{ChangeKind, ConfigPath, Format, Meta, Op, path::folder_prefix};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, AppState, RequestId};
use crate::auth::Principal;

fn config_path(raw: String) -> Result<ConfigPath, ApiError> {
    ConfigPath::new(raw.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid path {raw:?}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveRequest {
    #[serde(default)]
    meta: Option<MetaRequest>,
    data: String,
    #[serde(default)]
    expected_version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaRequest {
    format: Option<Format>,
    description: Option<String>,
    /// Kept with the version for the client (the Consul API's `Flags`).
    #[serde(default)]
    flags: u64,
}

/// The format a path's extension suggests, for saves that name none.
pub(super) fn format_of(path: &ConfigPath) -> Format {
    let name = path.as_str().rsplit('/').next().unwrap_or_default();
    match name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
    {
        Some(ext) if ext == "json" => Format::Json,
        Some(ext) if ext == "yaml" || ext == "yml" => Format::Yaml,
        Some(ext) if ext == "toml" => Format::Toml,
        _ => Format::Text,
    }
}

/// POST /api/v1/file/{path}: `{meta, data (base64), expected_version?}`.
pub async fn save_file(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = config_path(raw)?;
    let request: SaveRequest = ApiError::json_body(&body)?;
    let data = BASE64
        .decode(request.data.trim())
        .map_err(|e| ApiError::bad_request(format!("field `data` is not valid base64: {e}")))?;
    let meta_in = request.meta.unwrap_or(MetaRequest {
        format: None,
        description: None,
        flags: 0,
    });
    let meta = Meta {
        format: meta_in.format.unwrap_or_else(|| format_of(&path)),
        description: meta_in.description.unwrap_or_default(),
        flags: meta_in.flags,
    };
    let op = Op::put(path, meta, data, request.expected_version)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .with_author(principal.author());
    let applied = state.writes.submit(op, &request_id).await?;
    Ok((StatusCode::CREATED, Json(applied)).into_response())
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<u64>,
}

/// A live version's content and where it sits in history.
struct Content {
    meta: Meta,
    data: Vec<u8>,
    version: u64,
    revision: u64,
    epoch: u64,
    created_at_ms: u64,
    author: Option<String>,
}

/// The requested version of a path (the latest by default), or a 404 that
/// says why there is none: never written, pruned, or deleted.
fn read_version(
    state: &AppState,
    path: &ConfigPath,
    version: Option<u64>,
) -> Result<Content, ApiError> {
    let change = state.store.get(path.as_str(), version)?;
    let Some(change) = change else {
        return Err(ApiError::not_found(match version {
            Some(v) => format!("{path} has no version {v} (never written, or pruned from history)"),
            None => format!("{path} does not exist"),
        }));
    };
    match change.kind {
        ChangeKind::Put { meta, data } => Ok(Content {
            meta,
            data,
            version: change.version,
            revision: change.revision,
            epoch: change.epoch,
            created_at_ms: change.created_at_ms,
            author: change.author,
        }),
        ChangeKind::Delete => Err(ApiError::not_found(format!(
            "{path} was deleted (version {}, revision {})",
            change.version, change.revision
        ))),
    }
}

#[derive(Serialize)]
struct FileResponse<'a> {
    path: &'a str,
    meta: &'a Meta,
    data: String,
    version: u64,
    revision: u64,
    epoch: u64,
    created_at_ms: u64,
    author: Option<String>,
}

/// GET /api/v1/file/{path}?version=
pub async fn get_file(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    let path = config_path(raw)?;
    let content = read_version(&state, &path, q.version)?;
    Ok(Json(FileResponse {
        path: path.as_str(),
        meta: &content.meta,
        data: BASE64.encode(&content.data),
        version: content.version,
        revision: content.revision,
        epoch: content.epoch,
        created_at_ms: content.created_at_ms,
        author: content.author,
    })
    .into_response())
}

/// GET /api/v1/data/{path}?version=: the raw content with an ETag.
pub async fn get_data(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = config_path(raw)?;
    let Content {
        meta,
        data,
        version,
        ..
    } = read_version(&state, &path, q.version)?;
    let etag = format!("\"v{version}\"");
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        [
            (header::ETAG, etag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(meta.format.content_type()),
            ),
        ],
        data,
    )
        .into_response())
}

/// Whether `If-None-Match` lists `etag` (or `*`). Weak tags match too.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    expected_version: Option<u64>,
}

/// DELETE /api/v1/file/{path}?expected_version=
pub async fn delete_file(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    Path(raw): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let path = config_path(raw)?;
    let op = Op::delete(path, q.expected_version).with_author(principal.author());
    let applied = state.writes.submit(op, &request_id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("x-pika-version", HeaderValue::from(applied.version));
    response
        .headers_mut()
        .insert("x-pika-epoch", HeaderValue::from(applied.epoch));
    Ok(response)
}

/// GET /api/v1/versions/{path}: newest first, each with a status.
pub async fn get_versions(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let path = config_path(raw)?;
    let Some(mut versions) = state.store.versions(path.as_str())? else {
        return Err(ApiError::not_found(format!("{path} does not exist")));
    };
    versions.reverse();
    let latest = versions.first().map_or(0, |v| v.version);
    let items: Vec<_> = versions
        .into_iter()
        .map(|v| {
            let status = match (v.deleted, v.version == latest) {
                (true, _) => "deleted",
                (false, true) => "current",
                (false, false) => "previous",
            };
            json!({
                "version": v.version,
                "revision": v.revision,
                "epoch": v.epoch,
                "created_at_ms": v.created_at_ms,
                "status": status,
                "meta": v.meta,
                "size": v.size,
                "author": v.author,
            })
        })
        .collect();
    Ok(Json(json!({ "path": path.as_str(), "versions": items })).into_response())
}

pub async fn list_root(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    list(&state, &principal, String::new())
}

/// GET /api/v1/folder/{path}: the live children, folders and files.
pub async fn list_folder(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    list(&state, &principal, raw)
}

/// A folder's children that the token may see: files it may read, folders
/// with something below it may read. The reserved namespace is never
/// listed; a folder with nothing visible is answered like an empty one.
fn list(state: &AppState, principal: &Principal, raw: String) -> Result<Response, ApiError> {
    let folder = folder_prefix(&raw)
        .map_err(|e| ApiError::bad_request(format!("invalid folder {raw:?}: {e}")))?;
    if super::access::is_reserved(state, &folder) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{folder} is in the reserved namespace `{}/`",
                state.config.cluster.prefix
            ),
        ));
    }
    let mut children = state.store.list_folder(&folder)?;
    children.retain(|c| {
        !super::access::is_reserved(state, &c.path)
            && match c.file {
                Some(_) => principal.may(crate::auth::scope::Operation::Read, &c.path),
                None => principal.reads_under(&c.path),
            }
    });
    if children.is_empty() && !folder.is_empty() {
        return Err(ApiError::not_found(format!(
            "folder {folder} is empty or does not exist"
        )));
    }
    let items: Vec<_> = children
        .into_iter()
        .map(|c| match c.file {
            Some(f) => json!({
                "name": c.name, "path": c.path, "type": "file",
                "version": f.version, "revision": f.revision, "format": f.format, "size": f.size,
                "created_at_ms": f.created_at_ms,
            }),
            None => json!({ "name": c.name, "path": c.path, "type": "folder" }),
        })
        .collect();
    Ok(Json(json!({ "path": folder, "children": items })).into_response())
}
