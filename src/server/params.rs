//! Reading generation parameters from a client's JSON object, with a precise
//! `invalid_request` for every wrong type or value. Shared by the WebSocket and HTTP APIs.

use super::api_error::ApiError;
use crate::streaming::Prompt;
use lowbit_core::generate::{GenerateOptions, SamplingParams};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// Defaults of SPEC §2 `[generation]`.
const DEFAULT_MAX_TOKENS: u64 = 100;
const DEFAULT_TEMPERATURE: f64 = 0.7;
const DEFAULT_TOP_P: f64 = 0.9;
const DEFAULT_TOP_K: u64 = 40;
/// Most stop strings per request.
const MAX_STOPS: usize = 8;

/// A parsed generation request.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    /// The prompt: text, or chat messages for the model's template.
    pub prompt: Prompt,
    /// Token budget, sampling and stop strings.
    pub opts: GenerateOptions,
    /// Whether the client wants token-by-token frames (else only the final text).
    pub stream: bool,
}

/// What a request is checked against: the served model and its limits. Requests are read
/// against this alone (no engine), so the readers are pure functions of the message text.
#[derive(Clone, Copy, Debug)]
pub struct ServedModel<'a> {
    /// The id clients name in `model` (also accepted: `model_name`).
    pub model_id: &'a str,
    /// The model's own name from its metadata.
    pub model_name: &'a str,
    /// The served weight precision (`int8`, `int4`, ...); `precision` may only repeat it.
    pub quantization: &'a str,
    /// Most tokens one request may generate.
    pub max_new_tokens: usize,
}

/// The JSON object of a message, or `invalid_request`.
pub(crate) fn parse_object(text: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("the message must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!("invalid JSON: {e}"))),
    }
}

/// The first of `keys` present (aliases, e.g. `max_tokens` / `maxTokens`), as `(key, value)`.
fn field<'a>(
    o: &'a Map<String, Value>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a Value)> {
    keys.iter()
        .find_map(|k| o.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
}

fn number(o: &Map<String, Value>, keys: &[&'static str], default: f64) -> Result<f64, ApiError> {
    match field(o, keys) {
        None => Ok(default),
        Some((k, v)) => v
            .as_f64()
            .ok_or_else(|| ApiError::invalid(format!("`{k}` must be a number"))),
    }
}

fn count(o: &Map<String, Value>, keys: &[&'static str], default: u64) -> Result<u64, ApiError> {
    match field(o, keys) {
        None => Ok(default),
        Some((k, v)) => v
            .as_u64()
            .ok_or_else(|| ApiError::invalid(format!("`{k}` must be a non-negative integer"))),
    }
}

fn boolean(o: &Map<String, Value>, key: &'static str, default: bool) -> Result<bool, ApiError> {
    match field(o, &[key]) {
        None => Ok(default),
        Some((k, v)) => v
            .as_bool()
            .ok_or_else(|| ApiError::invalid(format!("`{k}` must be true or false"))),
    }
}

fn string<'a>(o: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a str>, ApiError> {
    match field(o, &[key]) {
        None => Ok(None),
        Some((k, v)) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("`{k}` must be a string"))),
    }
}

/// Checks the optional `model` field: only the served model may be named.
fn check_model(served: &ServedModel, o: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(m) = string(o, "model")? {
        if m != served.model_id && m != served.model_name {
            return Err(ApiError::new(
                "model_not_found",
                axum::http::StatusCode::NOT_FOUND,
                format!("this server serves only `{}`", served.model_id),
            ));
        }
    }
    Ok(())
}

/// The prompt of a completion request: `prompt` (a string, or an array of one string) or chat
/// `messages` (`[{role, content}]`). Special-token texts in either are plain text; a raw
/// `prompt` opts in to control tokens with `"parse_special": true` (a client writing its own
/// template).
pub(crate) fn prompt(o: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let parse_special = boolean(o, "parse_special", false)?;
    if let Some((_, msgs)) = field(o, &["messages"]) {
        if parse_special {
            return Err(ApiError::invalid(
                "`parse_special` applies to a raw `prompt`; message contents are always text",
            ));
        }
        return Ok(Prompt::Chat(messages(msgs)?));
    }
    let p = match field(o, &["prompt"]) {
        None => return Err(ApiError::invalid("`prompt` is missing")),
        Some((_, Value::String(s))) => s.clone(),
        Some((_, Value::Array(a))) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        Some(_) => return Err(ApiError::invalid("`prompt` must be a string")),
    };
    if p.is_empty() {
        return Err(ApiError::invalid("the prompt is empty"));
    }
    Ok(if parse_special {
        Prompt::Raw(p)
    } else {
        Prompt::Text(p)
    })
}

/// Chat messages: a non-empty array of `{role, content}` with string values.
pub(crate) fn messages(v: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let arr = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::invalid("`messages` must be a non-empty array"))?;
    arr.iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) if matches!(r, "system" | "user" | "assistant") => {
                    Ok((r.to_owned(), c.to_owned()))
                }
                _ => Err(ApiError::invalid(
                    "each message needs a `role` (system, user or assistant) and a string \
                     `content`",
                )),
            }
        })
        .collect()
}

/// Generation options from a request object (`options.stream` or `stream` for streaming).
pub(crate) fn generation(
    served: &ServedModel,
    o: &Map<String, Value>,
    stream_default: bool,
) -> Result<GenerationRequest, ApiError> {
    static SEEDS: AtomicU64 = AtomicU64::new(1);
    check_model(served, o)?;
    let prompt = prompt(o)?;
    let max_new_tokens = served.max_new_tokens as u64;
    let max_tokens = count(
        o,
        &["max_tokens", "maxTokens", "n_predict"],
        DEFAULT_MAX_TOKENS.min(max_new_tokens),
    )?;
    if max_tokens == 0 || max_tokens > max_new_tokens {
        return Err(ApiError::invalid(format!(
            "`max_tokens` must be between 1 and {max_new_tokens}"
        )));
    }
    // Checked as the sampler will see them (f32): a `top_p` of 1e-50 is 0 there.
    let temperature = number(o, &["temperature"], DEFAULT_TEMPERATURE)? as f32;
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("`temperature` must be between 0 and 2"));
    }
    let top_p = number(o, &["top_p", "topP"], DEFAULT_TOP_P)? as f32;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("`top_p` must be in (0, 1]"));
    }
    let top_k = count(o, &["top_k", "topK"], DEFAULT_TOP_K)?;
    let seed = match field(o, &["seed"]) {
        None => SEEDS.fetch_add(1, Ordering::Relaxed),
        Some(_) => count(o, &["seed"], 0)?,
    };
    let stop = match field(o, &["stop"]) {
        None => Vec::new(),
        Some((_, Value::String(s))) => vec![s.clone()],
        Some((_, Value::Array(a))) if a.len() <= MAX_STOPS && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "`stop` must be a string or an array of at most {MAX_STOPS} strings"
            )))
        }
    };
    if let Some(p) = string(o, "precision")? {
        if p != served.quantization {
            return Err(ApiError::invalid(format!(
                "this server runs the model at `{}`; `precision` cannot change it",
                served.quantization
            )));
        }
    }
    let stream = match field(o, &["options"]) {
        Some((_, Value::Object(opts))) => boolean(opts, "stream", stream_default)?,
        Some(_) => return Err(ApiError::invalid("`options` must be an object")),
        None => boolean(o, "stream", stream_default)?,
    };
    Ok(GenerationRequest {
        prompt,
        opts: GenerateOptions {
            max_tokens: max_tokens as usize,
            sampling: SamplingParams {
                temperature,
                top_k: top_k.min(u32::MAX as u64) as usize,
                top_p,
                seed,
            },
            stop,
            cancel: None,
        },
        stream,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A served model for the request readers' tests (here and in `openai`).
    pub(crate) const SERVED: ServedModel<'static> = ServedModel {
        model_id: "m",
        model_name: "M",
        quantization: "int4",
        max_new_tokens: 64,
    };

    fn read(text: &str) -> Result<GenerationRequest, ApiError> {
        generation(&SERVED, &parse_object(text.as_bytes())?, false)
    }

    /// Found with the protocol fuzz target: `top_p` was checked as f64 and then narrowed, so 1e-50
    /// passed the (0, 1] check and reached the sampler as 0.
    #[test]
    fn top_p_is_checked_as_the_sampler_sees_it() {
        let e = read(r#"{"prompt": "x", "top_p": 1e-50}"#).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.contains("top_p"), "{}", e.message);
        let r = read(r#"{"prompt": "x", "top_p": 1e-30, "temperature": 1e-50}"#).unwrap();
        assert_eq!(r.opts.sampling.top_p, 1e-30);
        assert_eq!(r.opts.sampling.temperature, 0.0);
    }
}
