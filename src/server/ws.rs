//! The WebSocket protocol (SPEC §3): `config` messages (typed, or the older untyped form) start
//! a generation streamed as `token` frames and one `completion` frame; `control`/`stop` ends it;
//! every bad message gets an `error` frame and the connection stays usable. A client that goes
//! away has its generation cancelled (dropping the [`TokenStream`] cancels it).

use super::api_error::ApiError;
use super::params::{self, parse_object, GenerationRequest, ServedModel};
use super::AppState;
use crate::streaming::{TokenEvent, TokenStream};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};

/// Accepts the upgrade. The transport limit sits above the protocol limit, so an oversized
/// message still gets an `error` frame instead of a dropped connection.
pub(crate) async fn upgrade(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let limit = st.config.max_frame_bytes.saturating_mul(4).max(64 * 1024);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session(socket, st))
}

/// The generation running on a connection.
struct Running {
    events: TokenStream,
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
    let mut running: Option<Running> = None;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let reply = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
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
            let ids = st.engine.encode(&req.prompt)?;
            let events = st.engine.submit_stream(ids, req.opts)?;
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
