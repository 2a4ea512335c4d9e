//! Looking into configs without reading them whole: a unified diff of two
//! versions, and a search over paths and content.
//!
//! Both read the committed state like any read does: a diff waits on the
//! path's pending entry, a search on every pending entry, and a node
//! without a read lease refuses them (see `envelope`).

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use pika_replication::{Change, ChangeKind, ConfigPath, Format};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::auth::scope::Operation;

/// How long a diff of two versions may look for the shortest edit script.
const DIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<u64>,
    to: Option<u64>,
    /// Lines of context around each change (default 3).
    context: Option<usize>,
    /// Read by the envelope (a read without read permission).
    #[serde(rename = "stale")]
    _stale: Option<bool>,
}

/// One side of a diff: a version's text, or why it has none.
enum Side {
    Text(String),
    Deleted,
    Binary,
}

fn side(change: &Change) -> Side {
    match &change.kind {
        ChangeKind::Delete => Side::Deleted,
        ChangeKind::Put { meta, .. } if meta.format == Format::Binary => Side::Binary,
        ChangeKind::Put { data, .. } => match std::str::from_utf8(data) {
            Ok(text) => Side::Text(text.to_string()),
            Err(_) => Side::Binary,
        },
    }
}

fn version_of(state: &AppState, path: &ConfigPath, version: u64) -> Result<Change, ApiError> {
    state
        .store
        .get(path.as_str(), Some(version))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{path} has no version {version} (never written, or pruned from history)"
            ))
        })
}

/// GET /api/v1/diff/{path}?from=A&to=B: what changed from version A to
/// version B (default: the latest), as a unified diff (`text/x-diff`). A
/// deleted version diffs as empty; a binary one is not diffed.
pub async fn diff(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, ApiError> {
    let path = ConfigPath::new(raw.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid path {raw:?}: {e}")))?;
    let Some(from) = q.from else {
        return Err(ApiError::bad_request(
            "query parameter `from` is required: the version to diff from",
        ));
    };
    let to = match q.to {
        Some(v) => v,
        None => state
            .store
            .entry(path.as_str())?
            .map(|e| e.version)
            .ok_or_else(|| ApiError::not_found(format!("{path} does not exist")))?,
    };
    let (a, b) = (
        version_of(&state, &path, from)?,
        version_of(&state, &path, to)?,
    );
    let label = |v: u64, s: &Side| match s {
        Side::Deleted => format!("{path}@v{v} (deleted)"),
        _ => format!("{path}@v{v}"),
    };
    let (a, b) = (side(&a), side(&b));
    let body = match (&a, &b) {
        (Side::Binary, _) | (_, Side::Binary) => format!(
            "Binary versions {} and {} {}\n",
            label(from, &a),
            label(to, &b),
            if from == to { "are the same" } else { "differ" }
        ),
        _ => {
            let text = |s: &Side| match s {
                Side::Text(t) => t.clone(),
                _ => String::new(),
            };
            let (old, new) = (text(&a), text(&b));
            // Myers' diff of two large texts with little in common can run
            // for minutes on a runtime worker: past the deadline it stops
            // looking for a shorter diff and answers a coarser one.
            similar::TextDiff::configure()
                .timeout(DIFF_TIMEOUT)
                .diff_lines(&old, &new)
                .unified_diff()
                .context_radius(q.context.unwrap_or(3).min(1000))
                .header(&label(from, &a), &label(to, &b))
                .to_string()
        }
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/x-diff; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: Option<String>,
    /// Only paths under this folder or prefix.
    prefix: Option<String>,
    /// At most this many hits (default 100, at most 1000).
    limit: Option<usize>,
    /// Read by the envelope (a read without read permission).
    #[serde(rename = "stale")]
    _stale: Option<bool>,
}

#[derive(Serialize)]
struct Hit {
    path: String,
    /// 1-based; `null` for a match in the path itself.
    line: Option<usize>,
    snippet: String,
    version: u64,
}

/// Where `needle` (lower case) first occurs in `text`, ignoring case: a
/// byte offset into `text`. Lower-casing can change byte lengths (a few
/// letters), so the match is found in the lowered text and mapped back by
/// character count.
fn find(text: &str, needle: &str) -> Option<usize> {
    let lowered = text.to_lowercase();
    let at = lowered.find(needle)?;
    let chars = lowered[..at].chars().count();
    Some(
        text.char_indices()
            .nth(chars)
            .map_or(text.len(), |(i, _)| i),
    )
}

/// A snippet of `line` around the match at `at` (bytes), at most about
/// 160 characters.
fn snippet(line: &str, at: usize) -> String {
    const AROUND: usize = 80;
    let start = line[..at]
        .char_indices()
        .rev()
        .nth(AROUND)
        .map_or(0, |(i, _)| i);
    let end = line[at..]
        .char_indices()
        .nth(AROUND)
        .map_or(line.len(), |(i, _)| at + i);
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(line[start..end].trim());
    if end < line.len() {
        out.push('…');
    }
    out
}

/// GET /api/v1/search?q=&prefix=&limit=: live configs whose path or content
/// contains `q` (case-insensitive), among those the token may read. Each
/// hit has the path, the line (none for a path match) and a snippet.
pub async fn search(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<SearchQuery>,
) -> Result<Response, ApiError> {
    let query = q.q.unwrap_or_default();
    if query.trim().is_empty() {
        return Err(ApiError::bad_request(
            "query parameter `q` is required and must not be blank",
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let needle = query.to_lowercase();
    let prefix = q.prefix.unwrap_or_default();
    let visible = |path: &str| {
        !super::access::is_reserved(&state, path) && principal.may(Operation::Read, path)
    };
    let under = state.store.latest_under(&prefix, visible)?;
    let mut hits = Vec::new();
    let mut truncated = false;
    'paths: for change in &under.live {
        let text = match side(change) {
            Side::Text(text) => text,
            _ => String::new(),
        };
        let path_hit = find(&change.path, &needle).map(|at| (None, snippet(&change.path, at)));
        let line_hits = text
            .lines()
            .enumerate()
            .filter_map(|(n, line)| find(line, &needle).map(|at| (Some(n + 1), snippet(line, at))));
        for (line, snippet) in path_hit.into_iter().chain(line_hits) {
            if hits.len() >= limit {
                truncated = true;
                break 'paths;
            }
            hits.push(Hit {
                path: change.path.clone(),
                line,
                snippet,
                version: change.version,
            });
        }
    }
    Ok(Json(serde_json::json!({
        "query": query,
        "hits": hits,
        "truncated": truncated,
    }))
    .into_response())
}
