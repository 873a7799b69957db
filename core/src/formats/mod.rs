//! Model-file readers: GGUF (v2/v3) and safetensors, plus the GGML tensor types and their
//! dequantization.
//!
//! Every reader validates the whole header against the file size on open, so a malformed file
//! gives `MODEL_LOADING_FAILED` with a message, never a panic or a huge allocation.

pub mod file_bytes;
pub mod ggml;
pub mod gguf;
pub mod safetensors;

pub use file_bytes::FileBytes;
pub use ggml::GgmlType;
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue};
pub use safetensors::{SafeDtype, SafeTensorInfo, SafeTensors};
