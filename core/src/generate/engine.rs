//! The decode loop: prefill the prompt, then sample token by token until EOS, a stop string,
//! the token limit or cancellation, streaming text through a callback.

use super::sampler::{Sampler, SamplingParams};
use super::stats::{peak_rss_bytes, percentile, GenerationStats};
use super::text_stream::TextStream;
use crate::adapter::{KvCache, Logits, TextModel};
use crate::error::{Error, ErrorCode, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Prompt tokens per forward call during prefill (bounds scratch and logits memory).
const PREFILL_CHUNK: usize = 512;

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

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs `prompt` through `model` (appending to `cache`) and generates up to
/// `opts.max_tokens` tokens. `callback(text, is_last)` fires once per generated token with the
/// text that became safe to show (whole UTF-8 characters, never part of a stop string); the
/// call with `is_last = true` comes exactly once, at the end.
pub fn generate(
    model: &dyn TextModel,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenerateOptions,
    callback: &mut dyn FnMut(&str, bool),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::invalid_config("the prompt is empty (no tokens)"));
    }
    let room = cache.max_seq.saturating_sub(cache.pos);
    if prompt.len() >= room {
        return Err(Error::context_overflow(format!(
            "the prompt has {} tokens but the context has room for {} (max {})",
            prompt.len(),
            room.saturating_sub(1),
            cache.max_seq
        )));
    }
    let tok = model.tokenizer();
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    let start = Instant::now();
    let mut logits = Vec::new();
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        if cancelled() {
            callback("", true);
            return Err(Error::new(ErrorCode::Cancelled, "cancelled during prefill"));
        }
        logits = model.forward(cache, chunk, Logits::Last)?;
    }
    let prefill_ms = ms(start);

    let mut sampler = Sampler::new(opts.sampling);
    let mut stream = TextStream::new(&opts.stop);
    let mut tokens = Vec::new();
    let mut latencies = Vec::new();
    let mut ttft = 0.0;
    let mut first_token_at = start;
    let finish = loop {
        if opts.max_tokens == 0 {
            callback("", true);
            break FinishReason::Length;
        }
        let step = Instant::now();
        let id = sampler.sample(&logits);
        if tokens.is_empty() {
            ttft = ms(start);
            first_token_at = Instant::now();
        }
        if tok.is_end_of_generation(id) {
            callback(&stream.finish(), true);
            break FinishReason::Stop;
        }
        tokens.push(id);
        let pushed = stream.push(&tok.token_bytes(id));
        let reason = if pushed.stopped {
            Some(FinishReason::Stop)
        } else if cancelled() {
            Some(FinishReason::Cancelled)
        } else if tokens.len() >= opts.max_tokens || cache.pos + 1 >= cache.max_seq {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(r) = reason {
            let mut text = pushed.text;
            if !pushed.stopped {
                text.push_str(&stream.finish());
            }
            callback(&text, true);
            break r;
        }
        callback(&pushed.text, false);
        logits = model.forward(cache, &[id], Logits::Last)?;
        latencies.push(ms(step));
    };
    let decode_s = first_token_at.elapsed().as_secs_f64();
    let stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: tokens.len(),
        time_to_first_token_ms: ttft,
        prefill_tokens_per_s: prompt.len() as f64 / (prefill_ms / 1e3).max(1e-9),
        decode_tokens_per_s: if latencies.is_empty() {
            0.0
        } else {
            latencies.len() as f64 / decode_s.max(1e-9)
        },
        token_latency_mean_ms: if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().sum::<f64>() / latencies.len() as f64
        },
        token_latency_p50_ms: percentile(&latencies, 50.0),
        token_latency_p95_ms: percentile(&latencies, 95.0),
        total_ms: ms(start),
        weight_bytes: model.weight_bytes(),
        kv_cache_bytes: cache.bytes,
        peak_rss_bytes: peak_rss_bytes(),
    };
    Ok(Generation {
        text: stream.text().to_owned(),
        tokens,
        finish_reason: finish,
        stats,
    })
}
