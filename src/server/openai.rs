//! OpenAI-compatible HTTP: `POST /v1/completions` and `POST /v1/chat/completions`, whole
//! responses or server-sent events (`stream: true`) ending in `data: [DONE]`; usage counts in
//! every final response.

use super::api_error::ApiError;
use super::metrics::MeteredStream;
use super::params::{self, parse_object, GenerationRequest, ServedModel};
use super::AppState;
use crate::streaming::{Completion, Prompt, TokenEvent};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(st, body, false).await
}

/// `POST /v1/chat/completions` (the model's chat template renders the messages).
pub(crate) async fn chat_completions(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(st, body, true).await
}

/// Ids and timestamps of one response.
struct Meta {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn envelope(&self, choice: Value, chunk: bool) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// One streamed piece of text.
    fn delta(&self, text: &str) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
        };
        self.envelope(choice, true)
    }

    /// The last streamed chunk: finish reason and usage.
    fn last_chunk(&self, c: &Completion) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "delta": {}, "finish_reason": c.finish_reason})
        } else {
            json!({"index": 0, "text": "", "logprobs": null, "finish_reason": c.finish_reason})
        };
        let mut v = self.envelope(choice, true);
        v["usage"] = json!(c.usage);
        v
    }

    /// The whole (non-streamed) response.
    fn whole(&self, c: &Completion) -> Value {
        let choice = if self.chat {
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
            })
        } else {
            json!({"index": 0, "text": c.text, "logprobs": null, "finish_reason": c.finish_reason})
        };
        let mut v = self.envelope(choice, false);
        v["usage"] = json!(c.usage);
        v
    }
}

async fn respond(st: AppState, body: Result<Bytes, BytesRejection>, chat: bool) -> Response {
    match start(&st, body, chat) {
        Ok((events, meta, true)) => stream_response(events, meta),
        Ok((events, meta, false)) => whole_response(events, meta).await,
        Err(e) => e.into_response(),
    }
}

/// Reads the JSON body of `POST /v1/completions` (`chat` false) or `/v1/chat/completions`
/// (`chat` true): the request it makes, or the error to answer (`model_not_found`, or
/// `invalid_request` naming the bad field). No engine or connection state is read (a request
/// without `seed` draws the next one from a counter).
pub fn parse_completion_request(
    body: &[u8],
    chat: bool,
    served: &ServedModel,
) -> Result<GenerationRequest, ApiError> {
    let o = parse_object(body)?;
    // `null` counts as absent, as for every other field.
    let has_messages = o.get("messages").is_some_and(|m| !m.is_null());
    if chat && !has_messages {
        return Err(ApiError::invalid("`messages` is missing"));
    }
    if !chat && has_messages {
        return Err(ApiError::invalid(
            "`messages` belongs to /v1/chat/completions; send `prompt` here",
        ));
    }
    let req = params::generation(served, &o, false)?;
    debug_assert_eq!(chat, matches!(req.prompt, Prompt::Chat(_)));
    Ok(req)
}

fn start(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
    chat: bool,
) -> Result<(MeteredStream, Meta, bool), ApiError> {
    static IDS: AtomicU64 = AtomicU64::new(1);
    if st.lifecycle.is_draining() {
        return Err(super::lifecycle::draining_error());
    }
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                "payload_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} bytes", st.config.max_body_bytes),
            )
        } else {
            ApiError::invalid(r.body_text())
        }
    })?;
    let req = parse_completion_request(&body, chat, &st.served())?;
    let events = st.metrics.submit(&st.engine, &req.prompt, req.opts)?;
    let n = IDS.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" }),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: st.engine.model_id().to_owned(),
        chat,
    };
    Ok((events, meta, req.stream))
}

async fn whole_response(mut events: MeteredStream, meta: Meta) -> Response {
    while let Some(ev) = events.next().await {
        match ev {
            TokenEvent::Token { .. } => {}
            TokenEvent::Done(c) => return Json(meta.whole(&c)).into_response(),
            TokenEvent::Error(e) => return ApiError::from(e).into_response(),
        }
    }
    ApiError::from(crate::streaming::InferenceError::ShutDown).into_response()
}

fn stream_response(events: MeteredStream, meta: Meta) -> Response {
    // The stream owns the request's events: when the client goes away the body is dropped,
    // which cancels the generation.
    let mut first = meta.chat;
    let s = futures::stream::unfold(Some((events, meta)), move |state| {
        let opening = std::mem::take(&mut first);
        async move {
            let (mut events, meta) = state?;
            if opening {
                // Chat streams open with the assistant's role.
                let choice = json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": null});
                let ev = Event::default().data(meta.envelope(choice, true).to_string());
                return Some((vec![ev], Some((events, meta))));
            }
            loop {
                match events.next().await {
                    Some(TokenEvent::Token { text, .. }) if text.is_empty() => continue,
                    Some(TokenEvent::Token { text, .. }) => {
                        let ev = Event::default().data(meta.delta(&text).to_string());
                        return Some((vec![ev], Some((events, meta))));
                    }
                    Some(TokenEvent::Done(c)) => {
                        let ev = Event::default().data(meta.last_chunk(&c).to_string());
                        return Some((vec![ev, Event::default().data("[DONE]")], None));
                    }
                    Some(TokenEvent::Error(e)) => {
                        let body = ApiError::from(e).body().to_string();
                        let evs =
                            vec![Event::default().data(body), Event::default().data("[DONE]")];
                        return Some((evs, None));
                    }
                    None => return None,
                }
            }
        }
    })
    .flat_map(|evs| futures::stream::iter(evs.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(s).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::server::params::tests::SERVED;

    /// Found with the protocol fuzz target: `"messages": null` counted as present for the endpoint
    /// check but as absent when reading the prompt, so a chat request became a text completion (and
    /// a debug assertion failed).
    #[test]
    fn null_messages_are_absent() {
        let body = br#"{"messages": null, "prompt": "x"}"#;
        let e = parse_completion_request(body, true, &SERVED).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("invalid_request", "`messages` is missing")
        );
        let r = parse_completion_request(body, false, &SERVED).unwrap();
        assert!(
            matches!(r.prompt, Prompt::Text(ref t) if t == "x"),
            "{:?}",
            r.prompt
        );
    }
}
