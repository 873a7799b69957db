//! lowbit-core: the traits every backend and model adapter implements ([`Backend`],
//! [`ModelAdapter`], [`BrowserProfile`]), the low-bit quantization formats, model-file readers
//! (GGUF, safetensors, CTranslate2) and the model sources built on them ([`ModelSource`]),
//! tokenizers, the plugin registry and the generation engine.
//!
//! Data flows top to bottom: a model file is read ([`formats`]), its weights quantized
//! ([`quant`]) and uploaded to a [`Backend`] by a [`ModelAdapter`]; the [`generate`] engine then
//! drives the resulting [`TextModel`] and streams tokens out through a callback.

pub mod adapter;
pub mod backend;
#[cfg(not(target_arch = "wasm32"))]
pub mod calibration;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod formats;
pub mod future;
pub mod generate;
pub mod kv;
pub mod model_source;
pub mod ops;
#[cfg(feature = "native")]
pub mod plugin;
pub mod profile;
pub mod quant;
pub mod registry;
pub mod tokenizer;

pub use adapter::{
    EncoderConfig, EncoderDecoderModel, EncoderModel, LoadedModel, Logits, ModelAdapter,
    ModelSource, QuantPlan, TextModel, TextModelConfig, WeightPrecision,
};
pub use backend::{Backend, BackendInfo, BufferId, DType, KernelTiming, WeightId, WeightMatrix};
pub use error::{Error, ErrorCode, Result};
#[cfg(not(target_arch = "wasm32"))]
pub use future::block_on;
pub use future::{LocalBoxFuture, ReadFuture};
pub use kv::{KvCache, KvLayout, KvView};
pub use ops::Op;
pub use profile::BrowserProfile;
pub use quant::{QuantSpec, QuantizedMatrix, Scheme};
