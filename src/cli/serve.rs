//! `lowbit serve`: the WebSocket and OpenAI-compatible HTTP server.

use super::common::ModelArgs;
use clap::Args;
use lowbit::plan::RunPlan;
use lowbit::server::{serve, ServerConfig};
use lowbit::streaming::{InferenceConfig, StreamingInference};
use lowbit::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `lowbit serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind. Loopback by default: pass 0.0.0.0 only behind a trusted network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free one; the chosen address is printed).
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (or `?api_key=KEY` on WebSocket) on every route
    /// but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// KV-cache capacity of one request (prompt + generated tokens).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Longest accepted prompt, tokens.
    #[arg(long, default_value_t = 1536)]
    pub max_prompt_tokens: usize,
    /// Largest accepted max_tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Requests running or waiting at once; more get `busy` (HTTP 429).
    #[arg(long, default_value_t = 64)]
    pub max_concurrent: usize,
    /// Upper bound of the adaptive batch size (requests decoded per step).
    #[arg(long, default_value_t = 64)]
    pub max_batch_size: usize,
    /// Per-token latency target of the adaptive batch size, ms.
    #[arg(long, default_value_t = 250)]
    pub target_latency_ms: u64,
    /// KV-cache memory budget of all running requests together, MiB.
    #[arg(long, default_value_t = 2048)]
    pub kv_budget_mb: usize,
    /// Time limit of one request, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Largest WebSocket message, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Largest HTTP body, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl ServeArgs {
    /// The inference settings these flags describe, for a model loaded per `plan`.
    pub fn inference_config(&self, mut plan: RunPlan) -> InferenceConfig {
        plan.kv_cache.max_seq_len = self.ctx;
        InferenceConfig {
            plan,
            max_prompt_tokens: self.max_prompt_tokens,
            max_new_tokens: self.max_new_tokens,
            max_concurrent_requests: self.max_concurrent,
            kv_budget_bytes: self.kv_budget_mb << 20,
            max_batch_size: self.max_batch_size,
            target_token_latency: Duration::from_millis(self.target_latency_ms),
            request_timeout: Duration::from_secs(self.timeout_s),
            ..InferenceConfig::default()
        }
    }
}

/// Runs `lowbit serve` until Ctrl-C.
pub fn run(a: &ServeArgs) -> Result<()> {
    // One configuration resolution (its corrections print once) serves both.
    let plan = a.model.plan(None)?;
    let path = plan.model_path()?;
    let model = a.model.load(&plan)?.0;
    let config = a.inference_config(plan);
    let id = path
        .as_deref()
        .and_then(std::path::Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.config().name.clone());
    let engine = StreamingInference::from_model(Arc::from(model), id, config)
        .map_err(|e| Error::invalid_config(e.to_string()))?;
    let server = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone(),
        max_frame_bytes: a.max_frame_bytes,
        max_body_bytes: a.max_body_bytes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid_config(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", server.host, server.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::invalid_config(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::invalid_config(e.to_string()))?;
        eprintln!(
            "lowbit serving {} on http://{local} (WebSocket at ws://{local}/ws, OpenAI API at \
             /v1); Ctrl-C stops",
            engine.model_id()
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, Arc::new(engine), server, shutdown)
            .await
            .map_err(|e| Error::invalid_config(format!("server error: {e}")))
    })
}
