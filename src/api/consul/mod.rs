//! Consul's KV API on pika's listener, so tools that speak Consul
//! (consul-template, envconsul, Spring Cloud Consul, client libraries)
//! read and write pika's configs unchanged.
//!
//! A Consul key is a pika path, one to one: `GET /v1/kv/app/db.yaml` is
//! `GET /api/v1/file/app/db.yaml`. A key that is not a valid pika path is
//! refused with 400 and the reason. Indexes are revisions: `ModifyIndex`
//! is the revision of a key's latest version, `CreateIndex` that of its
//! first version since it was last created.
//!
//! Reads are local and linearizable on every node (as the native API's):
//! `?consistent` costs nothing extra here, `?stale` serves a node without
//! read permission as `?stale=true` does natively. Sessions, locks,
//! transactions and the catalog, health and agent endpoints are not
//! offered: each answers 501 naming the feature.

mod blocking;
mod kv;

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::OriginalUri;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::{any, get};

use super::{ApiError, AppState};

/// Consul's default wait for a blocking query.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// The longest wait a blocking query may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

pub fn routes() -> Router<AppState> {
    let kv = get(kv::get).put(kv::put).delete(kv::delete);
    Router::new()
        .route("/v1/kv", kv.clone())
        .route("/v1/kv/", kv.clone())
        .route("/v1/kv/{*key}", kv)
        .route("/v1/{*rest}", any(unsupported))
}

/// Whether a request is for the Consul API (tokens may come in
/// `X-Consul-Token`, and never in the URL).
pub fn is_consul(uri_path: &str) -> bool {
    uri_path.starts_with("/v1/")
}

/// The key (or prefix) of a `/v1/kv` route, percent-decoded.
pub fn kv_key(uri_path: &str) -> Option<String> {
    let rest = uri_path.strip_prefix("/v1/kv")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(super::envelope::percent_decode(
        rest.strip_prefix('/').unwrap_or(rest),
    ))
}

/// Whether the query string has `name`, with any value (Consul's flags
/// such as `?recurse` are set by their presence). Names are decoded as the
/// handlers' query extractor decodes them (`+` a space, `%XX` a byte), so
/// that what a read waits on is what its handler reads: `?%72ecurse` is a
/// recursive read.
pub fn has_param(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            let key = kv.split('=').next().unwrap_or_default();
            super::envelope::percent_decode(&key.replace('+', " ")) == name
        })
    })
}

/// A read of many keys: what it waits on and filters is a prefix.
pub fn reads_prefix(query: Option<&str>) -> bool {
    has_param(query, "recurse") || has_param(query, "keys")
}

/// The query parameters of a KV request that pika acts on. Others
/// (`dc`, `ns`, `partition`, `consistent`, `default`, `stale`, ...) are
/// accepted and have nothing to change: there is one datacenter, and every
/// read is served locally (see the module doc).
struct KvQuery {
    recurse: bool,
    keys: bool,
    separator: Option<String>,
    raw: bool,
    cas: Option<u64>,
    flags: Option<u64>,
    /// `index` when it is not 0: a blocking query.
    index: Option<u64>,
    wait: Duration,
}

impl KvQuery {
    fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        for lock in ["acquire", "release"] {
            if params.contains_key(lock) {
                return Err(not_offered(&format!("sessions and locks (`?{lock}=`)")));
            }
        }
        let number = |name: &str| {
            params
                .get(name)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "query parameter `{name}` must be a non-negative integer, got {v:?}"
                        ))
                    })
                })
                .transpose()
        };
        let wait = match params.get("wait") {
            None => DEFAULT_WAIT,
            // As Consul: a wait of zero is the default one, not none (a
            // watcher sending `wait=0s` would otherwise spin on the node).
            Some(raw) => match parse_wait(raw)? {
                zero if zero.is_zero() => DEFAULT_WAIT,
                wait => wait.min(MAX_WAIT),
            },
        };
        Ok(Self {
            recurse: params.contains_key("recurse"),
            keys: params.contains_key("keys"),
            separator: params.get("separator").filter(|s| !s.is_empty()).cloned(),
            raw: params.contains_key("raw"),
            cas: number("cas")?,
            flags: number("flags")?,
            index: number("index")?.filter(|i| *i > 0),
            wait,
        })
    }
}

/// A Go duration as Consul takes it (`100ms`, `30s`, `1m30s`), as pika's
/// config reads them.
fn parse_wait(raw: &str) -> Result<Duration, ApiError> {
    crate::config::duration::parse(raw)
        .map_err(|e| ApiError::bad_request(format!("query parameter `wait`: {e}")))
}

/// `X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact`.
fn read_headers(state: &AppState, index: u64) -> [(HeaderName, HeaderValue); 3] {
    let (known, last_contact) = match state.writes.replica() {
        None => (true, Duration::ZERO),
        Some(replica) => match replica.since_leader_contact() {
            Some(since) => (true, since),
            None => (false, Duration::ZERO),
        },
    };
    [
        (
            HeaderName::from_static("x-consul-index"),
            // Consul never reports 0: clients treat it as "no index".
            HeaderValue::from(index.max(1)),
        ),
        (
            HeaderName::from_static("x-consul-knownleader"),
            HeaderValue::from_static(if known { "true" } else { "false" }),
        ),
        (
            HeaderName::from_static("x-consul-lastcontact"),
            HeaderValue::from(u64::try_from(last_contact.as_millis()).unwrap_or(u64::MAX)),
        ),
    ]
}

fn not_offered(feature: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("pika does not offer Consul's {feature}: it serves Consul's KV API (/v1/kv) only"),
    )
}

/// Every `/v1/` route but the KV store.
async fn unsupported(OriginalUri(uri): OriginalUri) -> ApiError {
    let section = uri
        .path()
        .trim_start_matches("/v1/")
        .split('/')
        .next()
        .unwrap_or_default();
    let feature = match section {
        "txn" => "transactions (/v1/txn)".to_string(),
        "session" => "sessions and locks (/v1/session)".to_string(),
        "catalog" => "service catalog (/v1/catalog)".to_string(),
        "health" => "health checks (/v1/health)".to_string(),
        "agent" => "agent endpoints (/v1/agent)".to_string(),
        "acl" => "ACL endpoints (/v1/acl; pika's tokens are managed at /api/v1/tokens)".to_string(),
        other => format!("/v1/{other} endpoints"),
    };
    not_offered(&feature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_as_go_durations() {
        let ok = |s: &str| parse_wait(s).expect(s);
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        for bad in ["", "5", "s", "5x", "-1s", "1s5"] {
            assert!(parse_wait(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn flags_count_by_presence() {
        assert!(has_param(Some("recurse"), "recurse"));
        assert!(has_param(Some("index=3&recurse=true"), "recurse"));
        assert!(!has_param(Some("recursive=1"), "recurse"));
        assert!(!has_param(None, "recurse"));
        assert_eq!(kv_key("/v1/kv/a%2Fb/c").as_deref(), Some("a/b/c"));
        assert_eq!(kv_key("/v1/kv").as_deref(), Some(""));
        assert_eq!(kv_key("/v1/kvx"), None);
    }
}
