//! What every response passes through on its way out.

use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ErrorMessage;

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
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| state.request_ids.next(), str::to_string);

    let mut response = next.run(request).await;

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
