//! `lowbit serve`: the WebSocket protocol of SPEC §3 and an OpenAI-compatible HTTP API over one
//! [`StreamingInference`] (continuous batching across all clients).
//!
//! Routes: `/ws` and `/` (WebSocket), `POST /v1/completions`, `POST /v1/chat/completions`
//! (both with `stream: true` as server-sent events), `GET /v1/models`, `GET /health`
//! (liveness), `GET /health/ready` (readiness: 503 while draining), `GET /metrics`
//! (Prometheus text format).
//! Clients can only use the model the server was started with; nothing from the network names
//! a file.

mod api_error;
mod lifecycle;
mod listener;
mod metrics;
mod openai;
mod params;
mod ws;

pub use api_error::ApiError;
pub use lifecycle::loading_router;
pub use openai::parse_completion_request;
pub use params::{GenerationRequest, ServedModel};
pub use ws::{parse_client_message, ClientMessage};

use crate::streaming::StreamingInference;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Network-facing settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind (loopback unless told otherwise).
    pub host: String,
    /// Port (0 = any free one).
    pub port: u16,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`; only the
    /// WebSocket upgrade (which a browser cannot give headers) may pass `?api_key=<key>`
    /// instead. Must not be empty.
    pub api_key: Option<String>,
    /// Largest WebSocket message accepted, bytes; a larger one gets an `error` frame and the
    /// connection is closed with code 1009 (the transport stops reading mid-message).
    pub max_frame_bytes: usize,
    /// Largest HTTP request body, bytes (413 above).
    pub max_body_bytes: usize,
    /// A request's header must arrive within this (slow-header clients and idle keep-alive
    /// connections are closed).
    pub header_read_timeout: Duration,
    /// A request body must arrive within this (408 after), and a WebSocket connection with no
    /// generation running is closed after this long without a message.
    pub idle_timeout: Duration,
    /// Connections open at once; more are answered with 503 and closed (lowered to fit the
    /// process's descriptor limit).
    pub max_connections: usize,
    /// On shutdown (SIGTERM, Ctrl-C), how long running requests may take to finish while new
    /// ones are refused; the rest are cut off after it.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// Checks the settings a server cannot start with.
    ///
    /// Errors: `INVALID_CONFIG` for an empty API key (it would open every route to anyone
    /// sending an empty key), or a zero limit.
    pub fn validate(&self) -> lowbit_core::Result<()> {
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(lowbit_core::Error::invalid_config(
                "the API key is empty: pass a non-empty --api-key, or none to serve without one",
            ));
        }
        for (name, zero) in [
            ("max_frame_bytes", self.max_frame_bytes == 0),
            ("max_body_bytes", self.max_body_bytes == 0),
            ("max_connections", self.max_connections == 0),
            ("header_read_timeout", self.header_read_timeout.is_zero()),
            ("idle_timeout", self.idle_timeout.is_zero()),
        ] {
            if zero {
                return Err(lowbit_core::Error::invalid_config(format!(
                    "server.{name} must be above zero"
                )));
            }
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8765,
            api_key: None,
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 512,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Arc<StreamingInference>,
    pub config: Arc<ServerConfig>,
    /// The served weight precision (`int8`, ...).
    pub quantization: Arc<String>,
    /// Request counts and timings for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Readiness and draining.
    pub lifecycle: Arc<lifecycle::Lifecycle>,
}

impl AppState {
    /// The served model and limits that requests are read against.
    fn served(&self) -> ServedModel<'_> {
        let e = self.engine.as_ref();
        ServedModel {
            model_id: e.model_id(),
            model_name: &e.model().config().name,
            quantization: &self.quantization,
            max_new_tokens: e.config().max_new_tokens,
        }
    }
}

/// The served quantization as clients name it (`int8`, `int4`, `fp16`, `mixed`, ...): the
/// method of the plan the model was loaded with.
fn quantization_name(engine: &StreamingInference) -> String {
    engine.model().plan().method().to_owned()
}

/// The application: every route, with the limits and the optional API key.
pub fn router(engine: Arc<StreamingInference>, config: ServerConfig) -> Router {
    app(state(engine, config))
}

/// A fresh server's state: taking requests, nothing counted yet.
fn state(engine: Arc<StreamingInference>, config: ServerConfig) -> AppState {
    AppState {
        quantization: Arc::new(quantization_name(&engine)),
        engine,
        config: Arc::new(config),
        metrics: Arc::default(),
        lifecycle: Arc::new(lifecycle::Lifecycle::new()),
    }
}

fn app(state: AppState) -> Router {
    let websocket = Router::new()
        .route("/", get(ws::upgrade))
        .route("/ws", get(ws::upgrade))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_websocket,
        ));
    let http = Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics::exposition))
        .route_layer(middleware::from_fn_with_state(state.clone(), read_body))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_http,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(lifecycle::ready))
        .merge(websocket)
        .merge(http)
        .fallback(|| async { ApiError::new("not_found", StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves `router(engine, config)` on `listener` under `config`'s network limits until
/// `shutdown` completes, then drains: new requests are refused (503 `draining`,
/// `/health/ready` 503), the running ones finish within `config.drain_timeout`, and it returns.
///
/// Errors: `InvalidInput` for settings [`ServerConfig::validate`] refuses.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<StreamingInference>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let state = state(engine, config.clone());
    let (metrics, lifecycle) = (state.metrics.clone(), state.lifecycle.clone());
    let drain_timeout = config.drain_timeout;
    let drained = async move {
        shutdown.await;
        lifecycle.drain(&metrics, drain_timeout).await;
    };
    listener::serve_app(listener, app(state), &config, drained).await
}

/// HTTP routes: the key from `Authorization: Bearer` only (a key in a URL ends up in logs and
/// browser history).
async fn authorize_http(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if authorized(&st, &req, false) {
        next.run(req).await
    } else {
        unauthorized()
    }
}

/// The WebSocket upgrade: `Authorization: Bearer`, or `?api_key=` for browsers, whose
/// WebSocket API cannot set headers.
async fn authorize_websocket(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if authorized(&st, &req, true) {
        next.run(req).await
    } else {
        unauthorized()
    }
}

fn authorized(st: &AppState, req: &Request, query_allowed: bool) -> bool {
    let Some(key) = st.config.api_key.as_deref() else {
        return true;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .filter(|_| query_allowed)
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api_key=")));
    // `validate` refuses an empty key; an empty presented key never matches either.
    !key.is_empty()
        && bearer
            .or(query)
            .is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
}

fn unauthorized() -> Response {
    ApiError::new(
        "unauthorized",
        StatusCode::UNAUTHORIZED,
        "a valid API key is required (Authorization: Bearer <key>)",
    )
    .into_response()
}

/// Reads the request body whole before the handler runs: within the idle timeout (a client
/// trickling its body is answered 408) and up to the body limit (413).
async fn read_body(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = st.config.max_body_bytes;
    let read = axum::body::to_bytes(body, limit);
    let bytes = match tokio::time::timeout(st.config.idle_timeout, read).await {
        Err(_) => {
            return ApiError::new(
                "request_timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    st.config.idle_timeout.as_millis()
                ),
            )
            .into_response()
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::new(
                    "payload_too_large",
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {limit} bytes"),
                )
                .into_response()
            } else {
                ApiError::invalid(format!("the request body could not be read: {e}"))
                    .into_response()
            };
        }
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    let e = &st.engine;
    Json(json!({
        "status": "ok",
        "model": e.model_id(),
        "active_requests": e.active_requests(),
        "max_concurrent_requests": e.config().max_concurrent_requests,
        "batch_size": e.batch_size(),
    }))
}

async fn models(State(st): State<AppState>) -> Json<serde_json::Value> {
    let e = &st.engine;
    Json(json!({
        "object": "list",
        "data": [{
            "id": e.model_id(),
            "object": "model",
            "created": 0,
            "owned_by": "lowbit",
            "meta": {
                "name": e.model().config().name,
                "architecture": e.model().config().architecture,
                "quantization": st.quantization.as_str(),
                "weights": e.model().plan().label(),
                "bits_per_weight": e.model().bits_per_weight(),
                "context_length": e.context_size(),
                "n_params": e.model().config().n_params,
            }
        }]
    }))
}
