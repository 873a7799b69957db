//! `lowbit serve`: the WebSocket and OpenAI-compatible HTTP server.

use super::common::ModelArgs;
use clap::Args;
use lowbit::core::config::toml::Value;
use lowbit::core::config::Source;
use lowbit::plan::RunPlan;
use lowbit::server::{serve, ServerConfig};
use lowbit::streaming::{InferenceConfig, StreamingInference};
use lowbit::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `lowbit serve`. The network limits are `[server]` config keys (file,
/// `LOWBIT_SERVER_*` variables); a flag given here overrides both.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (`server.host`, default 127.0.0.1). Pass 0.0.0.0 only behind a trusted
    /// network.
    #[arg(long)]
    pub host: Option<String>,
    /// Port (`server.port`, default 8765; 0 = any free one; the chosen address is printed).
    #[arg(long)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on every route but /health (the WebSocket upgrade
    /// may pass `?api_key=KEY` instead). An empty key is refused.
    #[arg(long)]
    pub api_key: Option<String>,
    /// KV-cache capacity of one request, prompt and generated tokens (`kv_cache.max_seq_len`,
    /// default 4096; at most the model's trained context).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Longest accepted prompt, tokens.
    #[arg(long, default_value_t = 1536)]
    pub max_prompt_tokens: usize,
    /// Largest accepted max_tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Requests running or waiting at once; more get `busy` (HTTP 429)
    /// (`server.max_concurrent_requests`, default 64).
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Of those, requests waiting for a place in the batch; more get `busy`
    /// (`server.max_queued_requests`, default 64).
    #[arg(long)]
    pub max_queued: Option<usize>,
    /// Connections open at once; more are answered 503 (`server.max_connections`, default 512).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a request header may take (`server.header_read_timeout_s`, default 10).
    #[arg(long)]
    pub header_read_timeout_s: Option<f64>,
    /// Seconds a request body may take, and a WebSocket without a generation may stay silent
    /// (`server.idle_timeout_s`, default 120).
    #[arg(long)]
    pub idle_timeout_s: Option<f64>,
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
    /// Largest WebSocket message, bytes; larger gets an error frame and close code 1009
    /// (`server.max_frame_bytes`, default 65536).
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Largest HTTP body, bytes (`server.max_body_bytes`, default 1048576).
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// On SIGTERM or Ctrl-C, seconds running requests may take to finish while new ones are
    /// refused (`server.drain_timeout_s`, default 30).
    #[arg(long)]
    pub drain_timeout_s: Option<f64>,
}

/// The settings `lowbit serve` runs with, from one configuration resolution.
pub struct ServePlan {
    /// How the model is loaded (also inside `inference`).
    pub run: RunPlan,
    /// Scheduling and request limits.
    pub inference: InferenceConfig,
    /// Network settings and limits.
    pub server: ServerConfig,
}

impl ServeArgs {
    /// The `[server]` keys the flags given set, as CLI values.
    fn server_flags(&self) -> Vec<(&'static str, Value, &'static str)> {
        let int = |v: usize| Value::Integer(v.min(i64::MAX as usize) as i64);
        let mut v = Vec::new();
        let mut push = |key, value: Option<Value>, flag| {
            if let Some(value) = value {
                v.push((key, value, flag));
            }
        };
        push(
            "server.host",
            self.host.clone().map(Value::String),
            "--host",
        );
        push("server.port", self.port.map(|p| int(p as usize)), "--port");
        push(
            "server.max_concurrent_requests",
            self.max_concurrent.map(int),
            "--max-concurrent",
        );
        push(
            "server.max_queued_requests",
            self.max_queued.map(int),
            "--max-queued",
        );
        push(
            "server.max_connections",
            self.max_connections.map(int),
            "--max-connections",
        );
        push(
            "server.header_read_timeout_s",
            self.header_read_timeout_s.map(Value::Float),
            "--header-read-timeout-s",
        );
        push(
            "server.idle_timeout_s",
            self.idle_timeout_s.map(Value::Float),
            "--idle-timeout-s",
        );
        push(
            "server.max_frame_bytes",
            self.max_frame_bytes.map(int),
            "--max-frame-bytes",
        );
        push(
            "server.max_body_bytes",
            self.max_body_bytes.map(int),
            "--max-body-bytes",
        );
        push(
            "server.drain_timeout_s",
            self.drain_timeout_s.map(Value::Float),
            "--drain-timeout-s",
        );
        v
    }

    /// Resolves the configuration once (defaults < profile < file < `LOWBIT_*` variables <
    /// flags): corrections and warnings go to stderr, errors are returned as `INVALID_CONFIG`.
    pub fn plan(&self) -> Result<ServePlan> {
        let mut req = self.model.config_request(None)?;
        for (key, value, flag) in self.server_flags() {
            req.cli.push(key, value, Source::Cli(flag.into()));
        }
        let (mut run, c) = self.model.resolve(&req)?;
        if let Some(ctx) = self.ctx {
            run.kv_cache.max_seq_len = ctx;
        }
        let count = |key: &str| c.int(key).max(0) as usize;
        let seconds = |key: &str| Duration::from_secs_f64(c.float(key).max(0.001));
        let inference = InferenceConfig {
            plan: run.clone(),
            max_prompt_tokens: self.max_prompt_tokens,
            max_new_tokens: self.max_new_tokens,
            max_concurrent_requests: count("server.max_concurrent_requests"),
            max_queued_requests: count("server.max_queued_requests"),
            kv_budget_bytes: self.kv_budget_mb << 20,
            max_batch_size: self.max_batch_size,
            target_token_latency: Duration::from_millis(self.target_latency_ms),
            request_timeout: Duration::from_secs(self.timeout_s),
            ..InferenceConfig::default()
        };
        let server = ServerConfig {
            host: c.str("server.host"),
            port: count("server.port").min(u16::MAX as usize) as u16,
            api_key: self.api_key.clone(),
            max_frame_bytes: count("server.max_frame_bytes"),
            max_body_bytes: count("server.max_body_bytes"),
            header_read_timeout: seconds("server.header_read_timeout_s"),
            idle_timeout: seconds("server.idle_timeout_s"),
            max_connections: count("server.max_connections"),
            drain_timeout: Duration::from_secs_f64(c.float("server.drain_timeout_s").max(0.0)),
        };
        server.validate()?;
        Ok(ServePlan {
            run,
            inference,
            server,
        })
    }
}

/// Runs `lowbit serve` until SIGTERM or Ctrl-C, then drains the running requests and returns.
pub fn run(a: &ServeArgs) -> Result<()> {
    let ServePlan {
        run,
        inference,
        server,
    } = a.plan()?;
    let path = run.model_path()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid_config(format!("cannot start the async runtime: {e}")))?;
    // Bind before loading: while the model loads, the port answers "loading" (readiness 503)
    // instead of refusing connections.
    let addr = format!("{}:{}", server.host, server.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .and_then(|l| l.into_std())
        .map_err(|e| Error::invalid_config(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::invalid_config(e.to_string()))?;
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let loading = {
        let _guard = rt.enter();
        let l = listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| Error::invalid_config(format!("cannot listen on {addr}: {e}")))?;
        rt.spawn(async move {
            let _ = axum::serve(l, lowbit::server::loading_router())
                .with_graceful_shutdown(async {
                    let _ = loaded_rx.await;
                })
                .await;
        })
    };
    eprintln!(
        "lowbit: loading the model; http://{local}/health/ready answers 503 until it is ready"
    );
    let model = a.model.load(&run)?.0;
    let id = lowbit::plan::model_id(path.as_deref(), model.as_ref());
    let engine = StreamingInference::from_model(Arc::from(model), id, inference)
        .map_err(|e| Error::invalid_config(e.to_string()))?;
    let _ = loaded_tx.send(());
    rt.block_on(async move {
        let _ = loading.await;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::invalid_config(format!("cannot listen on {addr}: {e}")))?;
        eprintln!(
            "lowbit serving {} on http://{local} (WebSocket at ws://{local}/ws, OpenAI API at \
             /v1); SIGTERM or Ctrl-C drains and stops",
            engine.model_id()
        );
        let shutdown = async {
            stop_signal().await;
            eprintln!("lowbit: stop signal received; draining the running requests");
        };
        serve(listener, Arc::new(engine), server, shutdown)
            .await
            .map_err(|e| Error::invalid_config(format!("server error: {e}")))
    })
}

/// Completes on SIGTERM (what orchestrators and `kill` send) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
