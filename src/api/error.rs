//! API errors. A handler returns an [`ApiError`]; the envelope turns it (and
//! any other 4xx/5xx, such as axum's own rejections) into the JSON body
//! `{message, request_id}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pika_replication::{OpError, StoreError, WriteError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

/// The message of an error response, picked up by the envelope.
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Parses a JSON request body. An error names the field it is in
    /// (`field `expected_version`: invalid type: string "1", expected
    /// u64`), not only a line and column.
    pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Self> {
        // Bodies that parse (nearly all) take serde_json's own path: the
        // path tracking below allocates each key it passes, on every
        // write. Only a body that fails is parsed again to name the field.
        if let Ok(value) = serde_json::from_slice(body) {
            return Ok(value);
        }
        let mut reader = serde_json::Deserializer::from_slice(body);
        let value = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Self::bad_request(format!("invalid request body: {inner}"))
            } else {
                Self::bad_request(format!("invalid request body: field `{path}`: {inner}"))
            }
        })?;
        reader
            .end()
            .map_err(|e| Self::bad_request(format!("invalid request body: {e}")))?;
        Ok(value)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(ErrorMessage(self.message));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let status = match &e {
            WriteError::Rejected(OpError::VersionMismatch { .. }) => StatusCode::CONFLICT,
            WriteError::Rejected(OpError::NotFound(_)) => StatusCode::NOT_FOUND,
            WriteError::Rejected(OpError::RequestIdReused { .. }) => StatusCode::BAD_REQUEST,
            WriteError::Closed | WriteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WriteError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}
