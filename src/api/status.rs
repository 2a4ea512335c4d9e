//! Node status, health, readiness and metrics.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pika_replication::merkle;
use serde_json::json;

use super::{ApiError, AppState};

/// GET /api/v1/cluster/status: this node, its store, and with
/// `cluster.enabled` the membership as this node sees it.
pub async fn cluster_status(
    State(state): State<AppState>,
    axum::extract::Extension(principal): axum::extract::Extension<crate::auth::Principal>,
) -> Result<Response, ApiError> {
    // The config (addresses, limits, which features are on) is for admins.
    let config_view = if principal.admin {
        state.config.masked()
    } else {
        serde_json::Value::Null
    };
    let store = &state.store;
    let config = &state.config;
    let root = merkle::hex(&store.merkle()?.root());
    if let Some(membership) = &state.membership {
        let mut body = crate::cluster::status(config, membership, state.writes.replica(), store);
        body.insert("enabled".into(), true.into());
        body.insert("active".into(), true.into());
        body.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        body.insert("node_id".into(), store.node_id().into());
        body.insert("revision".into(), store.revision().into());
        body.insert("merkle_root".into(), root.into());
        body.insert(
            "uptime_ms".into(),
            (state.started.elapsed().as_millis() as u64).into(),
        );
        body.insert("config".into(), config_view);
        return Ok(Json(body).into_response());
    }
    Ok(Json(json!({
        "enabled": config.cluster.enabled,
        "active": false,
        "role": "standalone",
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": store.node_id(),
        "revision": store.revision(),
        "merkle_root": root,
        "uptime_ms": state.started.elapsed().as_millis() as u64,
        "nodes": [{
            "id": store.node_id(),
            "http_address": state.http_addr.to_string(),
            "state": "alive",
            "self": true,
            "applied_revision": store.revision(),
        }],
        "config": config_view,
    }))
    .into_response())
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready while the node accepts writes; 503 once shutdown has begun, and
/// while this node's disk fails (the body says why).
pub async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(why) = state.writes.replica().and_then(|r| r.status().disk_error) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node's disk failed and it takes no part until the disk works again: {why}"
            ),
        )
        .into_response();
    }
    if state.ready.load(Ordering::SeqCst) {
        Json(json!({ "status": "ready", "revision": state.store.revision() })).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(membership) = &state.membership {
        crate::cluster::record_metrics(membership);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
