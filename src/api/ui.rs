//! The web UI: one static page, embedded in the binary so that every node
//! serves it with no build step and no files to deploy. It talks to this
//! node's API only (tree, editor, history, diff, search, cluster panel) and
//! follows changes through the watch API. Its editor is CodeMirror 5,
//! vendored unmodified under `ui/vendor/codemirror/` (see the README there)
//! and embedded here too.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;

const INDEX: &str = include_str!("ui/index.html");

/// GET `/`.
pub async fn index() -> Response {
    let mut response = INDEX.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing on the page comes from elsewhere: its own inline script and
    // style, and the vendored editor from this node; say so to the browser.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The vendored CodeMirror files: (name in the URL, content type, bytes).
const VENDOR: [(&str, &str, &str); 7] = [
    (
        "codemirror.js",
        JS,
        include_str!("ui/vendor/codemirror/codemirror.js"),
    ),
    (
        "codemirror.css",
        "text/css; charset=utf-8",
        include_str!("ui/vendor/codemirror/codemirror.css"),
    ),
    (
        "javascript.js",
        JS,
        include_str!("ui/vendor/codemirror/javascript.js"),
    ),
    ("yaml.js", JS, include_str!("ui/vendor/codemirror/yaml.js")),
    ("toml.js", JS, include_str!("ui/vendor/codemirror/toml.js")),
    (
        "matchbrackets.js",
        JS,
        include_str!("ui/vendor/codemirror/matchbrackets.js"),
    ),
    (
        "LICENSE",
        "text/plain; charset=utf-8",
        include_str!("ui/vendor/codemirror/LICENSE"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

/// GET `/ui/vendor/codemirror/{file}`: one of [`VENDOR`], cached for a
/// year (the page asks for them with the version in the query string, so
/// an upgrade changes the URL); anything else is a 404.
pub async fn vendor(Path(file): Path<String>) -> Result<Response, ApiError> {
    let Some((_, content_type, body)) = VENDOR.iter().find(|(name, _, _)| *name == file) else {
        return Err(ApiError::not_found(format!(
            "no such UI file: /ui/vendor/codemirror/{file}"
        )));
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}
