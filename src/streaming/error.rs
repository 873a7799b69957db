//! Errors of streaming requests: the core's coded errors plus the request-level ones a
//! server needs (busy, invalid request, timeout).

use lowbit_core::{Error, ErrorCode};

/// Why a request was refused or ended with an error. [`InferenceError::code`] gives the
/// stable code clients match on: the SPEC §1 codes for core errors, else a lower-case one.
#[derive(Clone, Debug, thiserror::Error)]
pub enum InferenceError {
    /// A core error (`CONTEXT_OVERFLOW`, `OUT_OF_MEMORY`, `CANCELLED`, ...).
    #[error(transparent)]
    Core(#[from] Error),
    /// The request is malformed or out of the accepted ranges.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Too many requests are in flight.
    #[error("busy: {in_flight} requests are running or waiting (limit {limit}); retry later")]
    Busy {
        /// Requests in flight when this one came.
        in_flight: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Too many requests wait for a place in the running batch.
    #[error("busy: {waiting} requests wait for a place in the batch (limit {limit}); retry later")]
    QueueFull {
        /// Requests waiting when this one came.
        waiting: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request ran past the configured time limit.
    #[error("timeout: the request ran longer than {limit_ms} ms")]
    Timeout {
        /// The limit, ms.
        limit_ms: u64,
    },
    /// The scheduler thread is gone (the model failed or the engine shut down).
    #[error("shut_down: the inference engine is not running")]
    ShutDown,
}

impl InferenceError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            InferenceError::Core(e) => e.code.as_str(),
            InferenceError::InvalidRequest(_) => "invalid_request",
            InferenceError::Busy { .. } | InferenceError::QueueFull { .. } => "busy",
            InferenceError::Timeout { .. } => "timeout",
            InferenceError::ShutDown => "shut_down",
        }
    }

    /// The human message without the code.
    pub fn message(&self) -> String {
        match self {
            InferenceError::Core(e) => e.message.clone(),
            other => {
                let s = other.to_string();
                s.split_once(": ").map_or(s.clone(), |(_, m)| m.to_owned())
            }
        }
    }

    /// Whether the same request may succeed later or with other parameters (the connection
    /// stays usable either way).
    pub fn recoverable(&self) -> bool {
        !matches!(self, InferenceError::ShutDown)
            && !matches!(self, InferenceError::Core(e) if e.code == ErrorCode::ModelLoadingFailed)
    }

    /// Whether the request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, InferenceError::Core(e) if e.code == ErrorCode::Cancelled)
    }
}
