//! Model-file readers: GGUF (v2/v3) and safetensors.

pub mod gguf;
