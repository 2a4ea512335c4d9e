//! `GET /api/v1/backup` (admin): the committed state at one revision, as
//! a backup file (`pika_replication::backup`), streamed while it is read.
//!
//! The store's read snapshot is taken first and the file is built from it
//! on a blocking thread, a chunk at a time, with at most a few chunks
//! queued for the client: writes go on meanwhile (redb readers do not
//! block the writer), and a slow client holds the snapshot, not memory.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use pika_replication::backup::BackupStream;

use super::{ApiError, AppState};

/// Chunks (about 1 MiB each) built ahead of the client.
const AHEAD: usize = 4;

pub async fn backup(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let snapshot = tokio::task::spawn_blocking(move || store.snapshot())
        .await
        .map_err(|e| ApiError::internal(format!("taking the snapshot: {e}")))??;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let stream = BackupStream::new(snapshot, state.store.node_id(), now_ms);
    let revision = stream.revision();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        for piece in stream {
            let failed = piece.is_err();
            let piece = piece.map(Bytes::from).map_err(|e| {
                tracing::error!(error = %e, "building a backup: the client gets a truncated file");
                std::io::Error::other(e.to_string())
            });
            // A client that went away ends the backup.
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    tracing::info!(revision, "streaming a backup");
    metrics::counter!("pika_backups_total").increment(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((piece, rx))
    });
    let filename = format!("attachment; filename=\"pika-r{revision}.backup\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&filename).map_err(|e| ApiError::internal(e.to_string()))?,
            ),
        ],
        [("x-pika-backup-revision", revision.to_string())],
        Body::from_stream(body),
    )
        .into_response())
}
