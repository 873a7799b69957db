//! Typed errors with the stable codes of SPEC.md §1.

use std::fmt;

/// Stable, machine-readable error codes (SPEC.md §1). Never renamed: configs, clients and tests
/// match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No usable WebGPU adapter, or a WebGPU device error.
    WebgpuNotSupported,
    /// A model file is missing, truncated, corrupted or inconsistent.
    ModelLoadingFailed,
    /// A device or memory budget cannot hold what was asked.
    OutOfMemory,
    /// A configuration value is invalid and could not be corrected.
    InvalidConfig,
    /// The model's architecture or a tensor type is not supported.
    UnsupportedModel,
    /// A prompt or generation does not fit the context.
    ContextOverflow,
    /// The request was cancelled.
    Cancelled,
}

impl ErrorCode {
    /// The stable string form, e.g. `MODEL_LOADING_FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::WebgpuNotSupported => "WEBGPU_NOT_SUPPORTED",
            ErrorCode::ModelLoadingFailed => "MODEL_LOADING_FAILED",
            ErrorCode::OutOfMemory => "OUT_OF_MEMORY",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::UnsupportedModel => "UNSUPPORTED_MODEL",
            ErrorCode::ContextOverflow => "CONTEXT_OVERFLOW",
            ErrorCode::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable [`ErrorCode`] and a human message saying what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl Error {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    /// `MODEL_LOADING_FAILED` with a message.
    pub fn model_loading(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ModelLoadingFailed, message)
    }
    /// `UNSUPPORTED_MODEL` with a message.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnsupportedModel, message)
    }
    /// `INVALID_CONFIG` with a message.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidConfig, message)
    }
    /// `CONTEXT_OVERFLOW` with a message.
    pub fn context_overflow(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ContextOverflow, message)
    }
    /// `OUT_OF_MEMORY` with a message.
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OutOfMemory, message)
    }
}

/// Result with lowbit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
