//! lowbit-models: model adapters. Each adapter recognises a model family in a file, loads and
//! quantizes its weights per plan onto a [`lowbit_core::Backend`], and returns a model object
//! whose forward pass is written once against the backend trait.

pub mod blocks;
pub mod decoder;
pub mod gemma3;
pub mod llama;
mod loader;
pub mod synthetic;
pub mod tensor_source;

pub use decoder::DecoderModel;
pub use gemma3::Gemma3Adapter;
pub use llama::LlamaAdapter;
