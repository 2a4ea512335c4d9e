//! `POST /debug/faults`: fault injection for tests and campaigns, in builds
//! with the `test-faults` feature only (and only with
//! `PIKA_TEST_FAULTS=1`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

#[derive(serde::Deserialize)]
pub struct FaultRequest {
    #[serde(default)]
    block_in: Vec<String>,
    #[serde(default)]
    block_out: Vec<String>,
    /// Node id → milliseconds by which to hold messages sent to it.
    #[serde(default)]
    delay_out_ms: std::collections::HashMap<String, u64>,
    /// Node id → probability (0–1) of dropping each message sent to it.
    #[serde(default)]
    loss_out: std::collections::HashMap<String, f64>,
    /// Node ids whose log entries (`Diff`) are dropped on arrival.
    #[serde(default)]
    block_diffs_in: Vec<String>,
    /// Pause this node's protocol for this long (see
    /// `Faults::pause_protocol`).
    #[serde(default)]
    pause_ms: Option<u64>,
    /// Every apply of committed entries fails, as on a failing disk.
    #[serde(default)]
    fail_applies: bool,
    /// Every sync of this node's log takes this many milliseconds more, as
    /// on a disk whose syncs stall (absent or 0: normal).
    #[serde(default)]
    slow_sync_ms: u64,
    /// Rewrites the data of this path's latest version in this node's
    /// state only (see `Store::diverge`): what verification is for.
    #[serde(default)]
    diverge: Option<Diverge>,
}

#[derive(serde::Deserialize)]
pub struct Diverge {
    path: String,
    data: String,
}

/// POST /debug/faults `{block_in: [node ids], block_out: [node ids],
/// delay_out_ms: {node id: ms}, loss_out: {node id: p}, block_diffs_in:
/// [node ids], pause_ms: ms, fail_applies: bool, slow_sync_ms: ms, diverge: {path,
/// data}}`: from now on, drop replica
/// traffic from / to
/// those nodes (or only the log entries from them), and hold what goes to
/// the delayed ones (empty heals); pause the protocol once for `pause_ms`. Only
/// routed with `PIKA_TEST_FAULTS=1`.
pub async fn set_faults(
    State(state): State<AppState>,
    Json(request): Json<FaultRequest>,
) -> Result<Response, ApiError> {
    let replica = state
        .writes
        .replica()
        .ok_or_else(|| ApiError::not_found("fault injection needs cluster.enabled"))?;
    if let Some(d) = &request.diverge
        && !state.store.diverge(&d.path, d.data.clone().into_bytes())?
    {
        return Err(ApiError::bad_request(format!(
            "diverge: {:?} has no live value here to rewrite",
            d.path
        )));
    }
    let faults = replica.faults();
    faults.block_incoming(&request.block_in);
    faults.block_incoming_diffs(&request.block_diffs_in);
    faults.fail_applies(request.fail_applies);
    faults.slow_syncs(std::time::Duration::from_millis(request.slow_sync_ms));
    if let Some(ms) = request.pause_ms {
        faults.pause_protocol(std::time::Duration::from_millis(ms));
    }
    faults.block_outgoing(&request.block_out);
    faults.lose_outgoing(request.loss_out.clone());
    faults.delay_outgoing(
        request
            .delay_out_ms
            .iter()
            .map(|(id, ms)| (id.clone(), std::time::Duration::from_millis(*ms)))
            .collect(),
    );
    tracing::warn!(block_in = ?request.block_in, block_out = ?request.block_out, "test faults set");
    Ok(Json(json!({
        "block_in": request.block_in,
        "block_out": request.block_out,
        "delay_out_ms": request.delay_out_ms,
        "loss_out": request.loss_out,
    }))
    .into_response())
}
