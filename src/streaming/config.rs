//! The settings of a [`super::StreamingInference`]: a plain struct, so that the TOML
//! configuration (or CLI flags) can fill it in.

use crate::load::{LoadOptions, QuantMethod};
use crate::selection::{load_options, resolve, ConfigRequest};
use lowbit_core::quant::Scheme;
use lowbit_core::Result;
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
    /// Of those, requests that may wait for a place in the running batch; more are refused as
    /// busy (a queue longer than the clients will wait for only holds memory).
    pub max_queued_requests: usize,
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
    /// Latency mode (`performance.optimize_for_latency`, or
    /// [`super::StreamingInference::optimize_for_latency`]): the adaptive batch grows only while
    /// a step costs each request at most 1.5× the fastest single-request step seen, instead of
    /// up to `target_token_latency`.
    pub optimize_for_latency: bool,
    /// Browser profile applied to the WebGPU backend (`chrome`, `safari`, ...); `None`: the
    /// device's own features and limits.
    pub profile: Option<String>,
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
            max_queued_requests: 64,
            kv_budget_bytes: 2 << 30,
            initial_batch_size: 4,
            min_batch_size: 1,
            max_batch_size: 64,
            adaptive_batch_size: true,
            target_token_latency: Duration::from_millis(250),
            request_timeout: Duration::from_secs(600),
            optimize_for_latency: false,
            profile: None,
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
            profile: self.profile.clone(),
            ..Default::default()
        }
    }

    /// These settings with the model-loading part (precision, backend, threads, profile) taken
    /// from `l`.
    pub fn with_load_options(self, l: &LoadOptions) -> Self {
        InferenceConfig {
            quant: l.quant,
            group_size: l.group_size,
            scheme: l.scheme,
            backend: l.backend.clone(),
            threads: l.threads,
            profile: l.profile.clone(),
            ..self
        }
    }

    /// Settings from a TOML configuration file (the keys of SPEC.md §2), merged and validated
    /// exactly as the CLI does (defaults < profile < file < `LOWBIT_*` variables), with the
    /// validator's corrections applied. Returns the settings and the model path the file names
    /// (if any). Keys: `quantization.*`, `runtime.backend`/`threads`/`profile`,
    /// `kv_cache.max_seq_len` (per-request context), `performance.adaptive_batch_size`,
    /// `performance.max_batch_size`, `performance.optimize_for_latency`.
    ///
    /// Errors: `INVALID_CONFIG` for an unreadable file or a value the validator rejects.
    pub fn from_file(path: &std::path::Path) -> Result<(Self, Option<std::path::PathBuf>)> {
        let req = ConfigRequest {
            file: Some(path.to_path_buf()),
            ..Default::default()
        };
        Self::resolve(&req, &InferenceConfig::default())
    }

    /// Resolves `req` on top of `base` (whose scheduling limits the configuration does not
    /// name stay as they are).
    pub(crate) fn resolve(
        req: &ConfigRequest,
        base: &InferenceConfig,
    ) -> Result<(Self, Option<std::path::PathBuf>)> {
        let r = resolve(req)?;
        let profile = r.profile.clone();
        let config = r.validation.into_result()?;
        let l = load_options(&config, profile.as_ref())?;
        let c = InferenceConfig {
            max_context: config.int("kv_cache.max_seq_len").max(2) as usize,
            adaptive_batch_size: config.bool("performance.adaptive_batch_size"),
            max_batch_size: config.int("performance.max_batch_size").max(1) as usize,
            optimize_for_latency: config.bool("performance.optimize_for_latency"),
            ..base.clone().with_load_options(&l)
        };
        let c = InferenceConfig {
            initial_batch_size: c.initial_batch_size.clamp(1, c.max_batch_size),
            min_batch_size: c.min_batch_size.clamp(1, c.max_batch_size),
            ..c
        };
        Ok((c, l.model))
    }
}
