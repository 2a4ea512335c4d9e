//! What each route needs from the caller, checked before anything else a
//! request does (before read leases and pending-read waits).
//!
//! | route | needs |
//! |---|---|
//! | `/healthz`, `/readyz`, `/` (the page), `/ui/vendor/*` (the page's editor library) | nothing |
//! | `/metrics` | nothing, or any token with `auth.protect_metrics` |
//! | `GET /api/v1/file|data|versions|diff/{path}` | `read` on the path |
//! | `POST /api/v1/file/{path}` | `write` on the path |
//! | `DELETE /api/v1/file/{path}` | `delete` on the path |
//! | `/api/v1/folder`, `/api/v1/watch`, `/api/v1/search` | any token; answers filtered to its read scopes |
//! | `/api/v1/cluster/status` | any token; the config only for admins |
//! | `/api/v1/whoami` | any token |
//! | `/api/v1/tokens`, `/api/v1/backup`, `/debug/*` | an admin token |
//! | `GET /v1/kv/{key}` | `read` on the key |
//! | `PUT /v1/kv/{key}`, `DELETE /v1/kv/{key}` | `write`, `delete` on the key |
//! | `/v1/kv/{prefix}?recurse` or `?keys` | any token; reads filtered to its read scopes, a recursive delete refused unless it may delete every key |
//! | other `/v1/*` (501, not offered) | nothing |
//! | anything else | any token |
//!
//! Config routes never serve the reserved `{prefix}/` namespace (token
//! records, the leader's lock), whatever the token: 403.
//!
//! The Consul routes (`/v1/`) also take the token in `X-Consul-Token`, and
//! refuse one in the URL (`?token=`, which ends up in access logs): 400.

use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::scope::Operation;
use crate::auth::{Principal, Refusal};

/// What a route asks of its caller.
enum Need {
    Nothing,
    Token,
    Admin,
    /// An operation on a config path (percent-decoded).
    Path(Operation, String),
}

fn need(state: &AppState, method: &Method, path: &str, query: Option<&str>) -> Need {
    match path {
        "/healthz" | "/readyz" | "/" => return Need::Nothing,
        // The page's static files: the same for everyone, loaded by
        // <script> tags, which cannot send the token.
        _ if path.starts_with("/ui/vendor/") => return Need::Nothing,
        "/metrics" if !state.config.auth.protect_metrics => return Need::Nothing,
        _ => {}
    }
    if super::consul::is_consul(path) {
        let Some(key) = super::consul::kv_key(path) else {
            return Need::Nothing; // not offered: 501 for everyone
        };
        return match *method {
            Method::GET | Method::HEAD if super::consul::reads_prefix(query) => Need::Token,
            Method::DELETE if super::consul::has_param(query, "recurse") => Need::Token,
            Method::GET | Method::HEAD => Need::Path(Operation::Read, key),
            Method::PUT => Need::Path(Operation::Write, key),
            Method::DELETE => Need::Path(Operation::Delete, key),
            _ => Need::Token,
        };
    }
    if path.starts_with("/api/v1/tokens") || path.starts_with("/debug/") || path == "/api/v1/backup"
    {
        return Need::Admin;
    }
    let Some(config_path) = super::envelope::PATH_ROUTES
        .iter()
        .find_map(|r| path.strip_prefix(r))
    else {
        return Need::Token;
    };
    let op = match *method {
        Method::POST if path.starts_with("/api/v1/file/") => Operation::Write,
        Method::DELETE if path.starts_with("/api/v1/file/") => Operation::Delete,
        _ => Operation::Read,
    };
    Need::Path(op, super::envelope::percent_decode(config_path))
}

/// Whether `path` is in the reserved `{cluster.prefix}/` namespace.
pub fn is_reserved(state: &AppState, path: &str) -> bool {
    in_namespace(&state.config.cluster.prefix, path)
}

/// Whether `path` is `prefix` or under `prefix/`.
pub fn in_namespace(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_matches('/');
    let path = path.trim_start_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What the check needs of a request, owned: a request is not Sync, so a
/// future holding a reference to it could not move between threads.
pub struct Caller {
    method: Method,
    uri_path: String,
    query: Option<String>,
    header: Option<axum::http::HeaderValue>,
    client: Option<std::net::IpAddr>,
}

impl Caller {
    pub fn of(request: &Request) -> Self {
        let uri_path = request.uri().path().to_string();
        let header = bearer(request.headers(), &uri_path);
        Self {
            method: request.method().clone(),
            query: request.uri().query().map(str::to_string),
            uri_path,
            header,
            client: request
                .extensions()
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        }
    }
}

/// The credentials a request carries, as an `Authorization` header value:
/// its own, or on the Consul routes `X-Consul-Token: <token>` (what
/// Consul's clients send) read as a bearer.
pub fn bearer(headers: &axum::http::HeaderMap, uri_path: &str) -> Option<axum::http::HeaderValue> {
    let header = headers.get(axum::http::header::AUTHORIZATION).cloned();
    header.or_else(|| {
        let token = headers.get("x-consul-token")?.to_str().ok()?;
        let consul = super::consul::is_consul(uri_path) && !token.trim().is_empty();
        consul
            .then(|| axum::http::HeaderValue::from_str(&format!("Bearer {}", token.trim())))?
            .ok()
    })
}

/// The credentials to look up again while a request goes on (a watch, a
/// blocking query): an API token's, not the admin's, and none with access
/// control off.
pub fn recheckable(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    uri_path: &str,
    principal: &Principal,
) -> Option<axum::http::HeaderValue> {
    bearer(headers, uri_path).filter(|_| state.auth.enabled() && !principal.admin)
}

/// Why the token behind `header` is refused now (revoked, expired), if it
/// is. A lookup that cannot be made now (no read permission) is no
/// refusal: the request's own checks see to that.
pub async fn token_refused(
    auth: &crate::auth::Auth,
    header: &axum::http::HeaderValue,
) -> Option<String> {
    match auth.authenticate(Some(header.as_bytes())).await {
        Err(refusal) if refusal.status == axum::http::StatusCode::UNAUTHORIZED => {
            Some(refusal.message)
        }
        _ => None,
    }
}

/// The caller's principal, or the response that refuses the request.
pub async fn check(state: &AppState, caller: Caller) -> Result<Principal, Response> {
    let Caller {
        method,
        uri_path,
        query,
        header,
        client,
    } = caller;
    if super::consul::is_consul(&uri_path) && super::consul::has_param(query.as_deref(), "token") {
        return Err(ApiError::bad_request(
            "a token in the URL (`?token=`) ends up in logs and is refused: \
             send it in the `X-Consul-Token` header",
        )
        .into_response());
    }
    let need = need(state, &method, &uri_path, query.as_deref());
    if let Need::Path(_, path) = &need
        && is_reserved(state, path)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            format!(
                "{path} is in the reserved namespace `{}/` (pika's own records); \
                 tokens are managed through /api/v1/tokens",
                state.config.cluster.prefix
            ),
        )
        .into_response());
    }
    let header = header.as_ref().map(|v| v.as_bytes());
    let result = match need {
        Need::Nothing => return Ok(Principal::unrestricted()),
        Need::Token => state.auth.authenticate(header).await,
        Need::Admin => state
            .auth
            .authenticate(header)
            .await
            .and_then(|p| match p.admin {
                true => Ok(p),
                false => Err(Refusal::forbidden(format!(
                    "{uri_path} needs an admin token; token {:?} is not one",
                    p.name.as_deref().unwrap_or_default()
                ))),
            }),
        Need::Path(op, path) => state.auth.authenticate(header).await.and_then(|p| {
            if p.may(op, &path) {
                Ok(p)
            } else {
                Err(Refusal::forbidden(format!(
                    "token {:?} may not {} {path}",
                    p.name.as_deref().unwrap_or_default(),
                    op.name()
                )))
            }
        }),
    };
    result.map_err(|refusal| {
        state.auth.record_failure(&refusal, client, &uri_path);
        let mut response = ApiError::new(refusal.status, refusal.message).into_response();
        if refusal.status == axum::http::StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"pika\""),
            );
        }
        response
    })
}
