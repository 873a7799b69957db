//! The decode loop: prefill the prompt, then sample token by token until EOS, a stop string,
//! the token limit or cancellation, streaming text through a callback.

use super::sampler::SamplingParams;
use super::sequence::Sequence;
use super::stats::GenerationStats;
use crate::adapter::TextModel;
use crate::error::{ErrorCode, Result};
use crate::kv::KvCache;
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these (not included in the output).
    pub stop: Vec<String>,
    /// Set to `true` from another thread to stop within one token.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 100,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            cancel: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-generation token or stop string.
    Stop,
    /// `max_tokens` reached (or the context is full).
    Length,
    /// Cancelled by the caller.
    Cancelled,
}

/// The result of one generation.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    /// Generated text (stop string excluded).
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Timings and memory.
    pub stats: GenerationStats,
}

/// Runs `prompt` through `model` (appending to `cache`) and generates up to
/// `opts.max_tokens` tokens. `callback(text, is_last)` fires once per generated token with the
/// text that became safe to show (whole UTF-8 characters, never part of a stop string); the
/// call with `is_last = true` comes exactly once, at the end.
pub async fn generate(
    model: &dyn TextModel,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenerateOptions,
    callback: &mut dyn FnMut(&str, bool),
) -> Result<Generation> {
    let mut seq = Sequence::new(cache, prompt.to_vec(), opts.clone())?;
    loop {
        // After the prompt, greedy decoding selects tokens on the device and keeps the next
        // step queued while this one's token is handled.
        if seq.prefilled() && seq.is_greedy() {
            seq.decode_rest_greedy(model, cache, &mut |out| {
                callback(&out.text, out.finished.is_some());
            })
            .await?;
            if seq.finished().is_some() {
                return Ok(seq.generation(model, cache));
            }
        }
        let out = match seq.step(model, cache).await {
            Ok(out) => out,
            Err(e) => {
                if e.code == ErrorCode::Cancelled {
                    callback("", true);
                }
                return Err(e);
            }
        };
        callback(&out.text, out.finished.is_some());
        if out.finished.is_some() {
            return Ok(seq.generation(model, cache));
        }
    }
}
