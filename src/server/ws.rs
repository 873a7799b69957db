//! The WebSocket protocol (SPEC §3): `config` messages (typed, or the older untyped form) start
//! a generation streamed as `token` frames and one `completion` frame; `control`/`stop` ends it;
//! every bad message gets an `error` frame and the connection stays usable. A client that goes
//! away has its generation cancelled (dropping its event stream cancels it). While the server
//! drains, a session ends (close code 1001) once its generation has finished.

use super::api_error::ApiError;
use super::metrics::MeteredStream;
use super::params::{self, parse_object, GenerationRequest, ServedModel};
use super::AppState;
use crate::streaming::TokenEvent;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};

/// Close code of a message over the size limit (RFC 6455 §7.4.1, "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code of a protocol violation.
const CLOSE_PROTOCOL: u16 = 1002;
/// Close code of a connection closed for being idle ("going away").
const CLOSE_IDLE: u16 = 1001;
/// Close code of a session ended because the server drains ("going away").
const CLOSE_DRAINING: u16 = 1001;

/// Accepts the upgrade. The transport refuses a message over `max_frame_bytes` before reading
/// it whole (so an oversized message costs no memory); the session answers with an `error`
/// frame and close code 1009, since the stream cannot be resumed mid-message.
pub(crate) async fn upgrade(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let limit = st.config.max_frame_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session(socket, st))
}

/// Sends `err` as an `error` frame, then closes the connection with `code`.
async fn close_with(socket: &mut WebSocket, err: ApiError, code: u16) {
    let mut err = err;
    err.recoverable = false;
    let reason: String = err.message.chars().take(100).collect();
    if send(socket, err.frame()).await {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
}

/// The answer to a transport error: why the connection ends and its close code; `None` when
/// the peer is simply gone.
fn transport_failure(e: axum::Error, limit: usize) -> Option<(ApiError, u16)> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(c)) => Some((
            ApiError::new(
                "payload_too_large",
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the message is over the limit of {limit} bytes ({c})"),
            ),
            CLOSE_TOO_BIG,
        )),
        Some(tungstenite::Error::Protocol(p)) => Some((
            ApiError::invalid(format!("WebSocket protocol error: {p}")),
            CLOSE_PROTOCOL,
        )),
        Some(tungstenite::Error::Utf8(_)) => Some((
            ApiError::invalid("a text frame is not valid UTF-8"),
            CLOSE_PROTOCOL,
        )),
        _ => None,
    }
}

/// The generation running on a connection.
struct Running {
    events: MeteredStream,
    text: String,
    stream: bool,
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn next_event(running: &mut Option<Running>) -> Option<TokenEvent> {
    match running {
        Some(r) => r.events.next().await,
        None => std::future::pending().await,
    }
}

async fn session(mut socket: WebSocket, st: AppState) {
    let e = &st.engine;
    let init = json!({
        "type": "init",
        "model_info": {
            "name": e.model_id(),
            "architecture": e.model().config().architecture,
            "quantization": st.quantization.as_str(),
            "weights": e.model().plan().label(),
            "bits_per_weight": e.model().bits_per_weight(),
            "context_length": e.context_size(),
            "max_new_tokens": e.config().max_new_tokens,
        }
    });
    if !send(&mut socket, init).await {
        return;
    }
    let _session = st.lifecycle.session();
    let mut running: Option<Running> = None;
    let idle = st.config.idle_timeout;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        // A connection with no generation and no message for `idle` is closed; one that is
        // generating is bounded by the request timeout instead.
        let generating = running.is_some();
        let idle_deadline = async move {
            if generating {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep_until(idle_since + idle).await;
        };
        tokio::select! {
            () = st.lifecycle.draining(), if !generating => {
                let err = ApiError::new(
                    "draining",
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the server is shutting down; reconnect to another replica",
                );
                close_with(&mut socket, err, CLOSE_DRAINING).await;
                return;
            }
            () = idle_deadline => {
                let err = ApiError::new(
                    "idle_timeout",
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    format!("no message for {} ms; closing", idle.as_millis()),
                );
                close_with(&mut socket, err, CLOSE_IDLE).await;
                return;
            }
            msg = socket.recv() => {
                idle_since = tokio::time::Instant::now();
                let reply = match msg {
                    None | Some(Ok(Message::Close(_))) => return,
                    Some(Err(e)) => {
                        if let Some((err, code)) = transport_failure(e, st.config.max_frame_bytes) {
                            close_with(&mut socket, err, code).await;
                        }
                        return;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => Err(ApiError::invalid(
                        "binary frames are not supported; send JSON text frames",
                    )),
                    Some(Ok(Message::Text(t))) => on_text(&st, t.as_bytes(), &mut running),
                };
                if let Err(err) = reply {
                    if !send(&mut socket, err.frame()).await {
                        return;
                    }
                }
            }
            ev = next_event(&mut running) => {
                let Some(r) = running.as_mut() else { continue };
                let (frame, done) = match ev {
                    Some(TokenEvent::Token { text, token_id, is_last, .. }) => {
                        r.text.push_str(&text);
                        if !r.stream {
                            continue;
                        }
                        (json!({
                            "type": "token",
                            "token": text,
                            "token_id": token_id,
                            "generated_text": r.text,
                            "finished": is_last,
                        }), false)
                    }
                    Some(TokenEvent::Done(c)) => (json!({
                        "type": "completion",
                        "generated_text": c.text,
                        "usage": c.usage,
                        "finish_reason": c.finish_reason,
                    }), true),
                    Some(TokenEvent::Error(e)) => (ApiError::from(e).frame(), true),
                    None => (ApiError::from(crate::streaming::InferenceError::ShutDown).frame(), true),
                };
                if done {
                    running = None;
                    idle_since = tokio::time::Instant::now();
                }
                if !send(&mut socket, frame).await {
                    return;
                }
            }
        }
    }
}

/// A client message of the WebSocket protocol, read and checked.
#[derive(Debug)]
pub enum ClientMessage {
    /// A `config` message (typed, or the older untyped form): start this generation.
    Generate(GenerationRequest),
    /// `{"type": "control", "action": "stop"}`: stop the running generation.
    Stop,
}

/// Reads one text message of a client: the request it makes, or the error to answer with an
/// `error` frame (`payload_too_large` over `max_frame_bytes`, `model_not_found`, or
/// `invalid_request` naming the bad field). No engine or connection state is read (a request
/// without `seed` draws the next one from a counter).
pub fn parse_client_message(
    text: &[u8],
    served: &ServedModel,
    max_frame_bytes: usize,
) -> Result<ClientMessage, ApiError> {
    if text.len() > max_frame_bytes {
        return Err(ApiError::new(
            "payload_too_large",
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the message has {} bytes; at most {max_frame_bytes} are accepted",
                text.len()
            ),
        ));
    }
    let o = parse_object(text)?;
    let kind = match o.get("type") {
        None => "config",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::invalid("`type` must be a string")),
    };
    match kind {
        "config" => Ok(ClientMessage::Generate(params::generation(
            served, &o, true,
        )?)),
        "control" => match o.get("action").and_then(Value::as_str) {
            Some("stop") => Ok(ClientMessage::Stop),
            _ => Err(ApiError::invalid("unknown control action; expected `stop`")),
        },
        other => Err(ApiError::invalid(format!(
            "unknown message type `{}`; expected `config` or `control`",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// Handles one text message; `Err` is answered with an `error` frame.
fn on_text(st: &AppState, text: &[u8], running: &mut Option<Running>) -> Result<(), ApiError> {
    match parse_client_message(text, &st.served(), st.config.max_frame_bytes)? {
        ClientMessage::Generate(req) => {
            if running.is_some() {
                return Err(ApiError::new(
                    "busy",
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "a generation is already running on this connection; send a stop first",
                ));
            }
            if st.lifecycle.is_draining() {
                return Err(super::lifecycle::draining_error());
            }
            let events = st.metrics.submit(&st.engine, &req.prompt, req.opts)?;
            *running = Some(Running {
                events,
                text: String::new(),
                stream: req.stream,
            });
            Ok(())
        }
        ClientMessage::Stop => match running {
            Some(r) => {
                r.events.cancel_handle().cancel();
                Ok(())
            }
            None => Err(ApiError::new(
                "not_running",
                axum::http::StatusCode::CONFLICT,
                "no generation is running on this connection",
            )),
        },
    }
}
