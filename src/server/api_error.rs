//! Errors as clients see them: a stable code, a message, an HTTP status and whether the
//! connection or request can go on.

use crate::streaming::InferenceError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error answered to a client: an `error` frame on WebSocket, a JSON body with a 4xx/5xx
/// status on HTTP.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// Stable code: SPEC §1 codes (`CONTEXT_OVERFLOW`, ...) or `invalid_request`, `busy`,
    /// `not_running`, `model_not_found`, `payload_too_large`, `unauthorized`, `not_found`,
    /// `timeout`, `shut_down`, `request_timeout`, `too_many_connections`, `idle_timeout`.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// HTTP status.
    pub status: StatusCode,
    /// Whether the client may go on (the connection stays open either way).
    pub recoverable: bool,
}

impl ApiError {
    /// An error with a code and status.
    pub fn new(code: &'static str, status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            status,
            recoverable: true,
        }
    }

    /// `invalid_request` (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_request", StatusCode::BAD_REQUEST, message)
    }

    /// The WebSocket `error` frame.
    pub fn frame(&self) -> Value {
        json!({
            "type": "error",
            "error": self.code,
            "message": self.message,
            "recoverable": self.recoverable,
        })
    }

    /// The OpenAI-style error body.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "type": self.code, "message": self.message}})
    }
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        let status = match e.code() {
            "busy" => StatusCode::TOO_MANY_REQUESTS,
            "timeout" => StatusCode::GATEWAY_TIMEOUT,
            "shut_down" | "OUT_OF_MEMORY" => StatusCode::SERVICE_UNAVAILABLE,
            "invalid_request" | "CONTEXT_OVERFLOW" | "INVALID_CONFIG" | "UNSUPPORTED_MODEL" => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            code: e.code(),
            message: e.message(),
            status,
            recoverable: e.recoverable(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
