//! Readiness and draining: `GET /health/ready` answers 200 while the server takes new
//! requests and 503 while it drains; on shutdown the server refuses new generations (503
//! `draining`), lets the running ones finish within `server.drain_timeout_s`, closes idle
//! WebSocket sessions, and only then stops.

use super::metrics::Metrics;
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the drain looks whether the running requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Whether the server takes new requests.
pub(crate) struct Lifecycle {
    draining: watch::Sender<bool>,
    /// WebSocket sessions open now (a session's last frame goes out after its request
    /// ended, so the drain waits for the sessions too).
    sessions: AtomicUsize,
}

/// Holds a WebSocket session's place in [`Lifecycle`]'s count while it is open.
pub(crate) struct SessionGuard(Arc<Lifecycle>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lifecycle {
    /// A server taking requests.
    pub fn new() -> Self {
        Lifecycle {
            draining: watch::channel(false).0,
            sessions: AtomicUsize::new(0),
        }
    }

    /// Whether new requests are refused.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Counts an open WebSocket session until the guard is dropped.
    pub fn session(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self.clone())
    }

    /// Completes once draining has begun.
    pub async fn draining(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Refuses new requests from now on, then waits until the accepted ones ended and the
    /// WebSocket sessions closed, or `limit` passed (the rest are then cut off).
    pub async fn drain(&self, metrics: &Metrics, limit: Duration) {
        self.draining.send_replace(true);
        let in_flight = metrics.in_flight();
        tracing::info!(
            in_flight,
            sessions = self.sessions.load(Ordering::SeqCst),
            limit_s = limit.as_secs_f64(),
            "draining: new requests are refused; waiting for the running ones"
        );
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let requests = metrics.in_flight();
            let sessions = self.sessions.load(Ordering::SeqCst);
            if requests == 0 && sessions == 0 {
                tracing::info!("drained");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    requests,
                    sessions,
                    "drain timeout: stopping with requests still running"
                );
                return;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// The answer to a new request while draining.
pub(crate) fn draining_error() -> super::ApiError {
    super::ApiError::new(
        "draining",
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down and takes no new requests; retry on another replica",
    )
}

/// `GET /health/ready`: 200 while serving, 503 while draining (a load balancer or
/// orchestrator stops sending new requests here).
pub(crate) async fn ready(State(st): State<AppState>) -> Response {
    if st.lifecycle.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready"})).into_response()
    }
}

/// The answers of a server whose model is still loading (the port is bound first, so a load
/// balancer's probe sees "not ready" instead of a refused connection): `/health` 200
/// `{"status": "loading"}` (alive), `/health/ready` 503 `{"status": "loading"}`, every other
/// route 503 with error code `loading`.
pub fn loading_router() -> axum::Router {
    use axum::routing::get;
    let loading = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
    };
    axum::Router::new()
        .route("/health", get(|| async { Json(json!({"status": "loading"})) }))
        .route("/health/ready", get(move || async move { loading() }))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": {"code": "loading", "message": "the model is loading; retry when /health/ready answers 200"}})),
            )
        })
}
