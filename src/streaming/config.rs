//! The settings of a [`super::StreamingInference`]: a plain struct, so that the TOML
//! configuration (or CLI flags) can fill it in.

use crate::load::{LoadOptions, QuantMethod};
use lowbit_core::quant::Scheme;
use std::time::Duration;

/// How a model is loaded and how requests on it are scheduled and bounded.
#[derive(Clone, Debug)]
pub struct InferenceConfig {
    /// Weight precision.
    pub quant: QuantMethod,
    /// Values per quantization group.
    pub group_size: usize,
    /// Symmetric or asymmetric integer formats.
    pub scheme: Scheme,
    /// `cpu`, `webgpu` or `auto`.
    pub backend: String,
    /// CPU worker threads (0 = all cores).
    pub threads: usize,
    /// KV-cache capacity of one request in tokens (prompt + generated); clamped to the
    /// model's trained context length.
    pub max_context: usize,
    /// Longest accepted prompt, tokens.
    pub max_prompt_tokens: usize,
    /// Largest accepted `max_tokens`.
    pub max_new_tokens: usize,
    /// Requests admitted at once (running + waiting); more are refused as busy.
    pub max_concurrent_requests: usize,
    /// Bytes of KV cache all running requests may hold together; admitting beyond it waits
    /// and shrinks the batch (memory pressure).
    pub kv_budget_bytes: usize,
    /// Adaptive batching: the batch size (requests decoded per scheduler step) starts here.
    pub initial_batch_size: usize,
    /// Adaptive batching: lower bound of the batch size.
    pub min_batch_size: usize,
    /// Adaptive batching: upper bound of the batch size.
    pub max_batch_size: usize,
    /// Adaptive batching: whether the batch size adapts (else it stays at the initial one).
    pub adaptive_batch_size: bool,
    /// Adaptive batching: the batch grows while one scheduler step (= the per-token latency
    /// every running request sees) stays under this, and shrinks above it.
    pub target_token_latency: Duration,
    /// A request running longer than this ends with a `timeout` error.
    pub request_timeout: Duration,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            quant: QuantMethod::Int4,
            group_size: 32,
            scheme: Scheme::Symmetric,
            backend: "auto".into(),
            threads: 0,
            max_context: 2048,
            max_prompt_tokens: 1536,
            max_new_tokens: 1024,
            max_concurrent_requests: 64,
            kv_budget_bytes: 2 << 30,
            initial_batch_size: 4,
            min_batch_size: 1,
            max_batch_size: 64,
            adaptive_batch_size: true,
            target_token_latency: Duration::from_millis(250),
            request_timeout: Duration::from_secs(600),
        }
    }
}

impl InferenceConfig {
    /// The load options for a model file.
    pub fn load_options(&self, model: &std::path::Path) -> LoadOptions {
        LoadOptions {
            model: Some(model.to_path_buf()),
            quant: self.quant,
            group_size: self.group_size,
            scheme: self.scheme,
            backend: self.backend.clone(),
            threads: self.threads,
            ..Default::default()
        }
    }
}
