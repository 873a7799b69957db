//! The settings of a [`super::StreamingInference`]: a plain struct, so that the TOML
//! configuration (or CLI flags) can fill it in.

use crate::plan::RunPlan;
use crate::selection::{resolve, ConfigRequest};
use lowbit_core::Result;
use std::time::Duration;

/// How a model is loaded and how requests on it are scheduled and bounded.
#[derive(Clone, Debug)]
pub struct InferenceConfig {
    /// What is loaded and how: model, per-role weight precision, KV-cache policy (its
    /// `max_seq_len` is one request's context, prompt and generated, clamped to the model's
    /// trained context), backend and profile.
    pub plan: RunPlan,
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
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            plan: RunPlan::default(),
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
        }
    }
}

impl InferenceConfig {
    /// Settings from a TOML configuration file (the keys of SPEC.md §2), merged and validated
    /// exactly as the CLI does (schema defaults < profile < file < `LOWBIT_*` variables), with
    /// the validator's corrections applied: the whole [`RunPlan`] (`model.path`,
    /// `quantization.*` including `mixed`, `kv_cache.*`, `runtime.*`, `[backend.*]`) and
    /// `performance.adaptive_batch_size`, `performance.max_batch_size`,
    /// `performance.optimize_for_latency`.
    ///
    /// Errors: `INVALID_CONFIG` for an unreadable file or a value the validator rejects.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let req = ConfigRequest {
            file: Some(path.to_path_buf()),
            ..Default::default()
        };
        Self::resolve(&req, &InferenceConfig::default())
    }

    /// Resolves `req` on top of `base` (whose scheduling limits the configuration does not
    /// name stay as they are).
    pub(crate) fn resolve(req: &ConfigRequest, base: &InferenceConfig) -> Result<Self> {
        let r = resolve(req)?;
        let config = r.validation.into_result()?;
        let plan = RunPlan::from_config(&config, r.profile.as_ref())?;
        Ok(base.clone().with_plan(plan, &config))
    }

    /// These settings with `plan` and the `performance.*` batching keys of `config`.
    fn with_plan(self, plan: RunPlan, config: &lowbit_core::config::Config) -> Self {
        let max_batch_size = config.int("performance.max_batch_size").max(1) as usize;
        InferenceConfig {
            plan,
            adaptive_batch_size: config.bool("performance.adaptive_batch_size"),
            max_batch_size,
            optimize_for_latency: config.bool("performance.optimize_for_latency"),
            initial_batch_size: self.initial_batch_size.clamp(1, max_batch_size),
            min_batch_size: self.min_batch_size.clamp(1, max_batch_size),
            ..self
        }
    }
}
