//! `lowbit serve`: the WebSocket protocol of SPEC §3 and an OpenAI-compatible HTTP API over one
//! [`StreamingInference`] (continuous batching across all clients).
//!
//! Routes: `/ws` and `/` (WebSocket), `POST /v1/completions`, `POST /v1/chat/completions`
//! (both with `stream: true` as server-sent events), `GET /v1/models`, `GET /health`.
//! Clients can only use the model the server was started with; nothing from the network names
//! a file.

mod api_error;
mod openai;
mod params;
mod ws;

pub use api_error::ApiError;
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

/// Network-facing settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind (loopback unless told otherwise).
    pub host: String,
    /// Port (0 = any free one).
    pub port: u16,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>` (WebSocket
    /// clients may pass `?api_key=<key>` instead).
    pub api_key: Option<String>,
    /// Largest WebSocket message accepted, bytes; larger ones get an error frame.
    pub max_frame_bytes: usize,
    /// Largest HTTP request body, bytes (413 above).
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8765,
            api_key: None,
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
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
    let state = AppState {
        quantization: Arc::new(quantization_name(&engine)),
        engine,
        config: Arc::new(config),
    };
    let protected = Router::new()
        .route("/", get(ws::upgrade))
        .route("/ws", get(ws::upgrade))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(|| async { ApiError::new("not_found", StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves `router(engine, config)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<StreamingInference>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, config))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn authorize(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = st.config.api_key.as_deref() else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api_key=")));
    if bearer
        .or(query)
        .is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
    {
        next.run(req).await
    } else {
        ApiError::new(
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "a valid API key is required (Authorization: Bearer <key>)",
        )
        .into_response()
    }
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
