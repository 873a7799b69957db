//! One generation as a step-wise state machine: each [`Sequence::step`] runs one forward pass
//! (the whole prompt on the first step, one token after that) and samples one token. A
//! scheduler interleaves the steps of many sequences (continuous batching); [`super::generate`]
//! runs one sequence to the end.

use super::engine::{FinishReason, GenerateOptions, Generation};
use super::sampler::Sampler;
use super::stats::{peak_rss_bytes, percentile, GenerationStats};
use super::text_stream::TextStream;
use crate::adapter::{Logits, TextModel};
use crate::error::{Error, ErrorCode, Result};
use crate::kv::KvCache;
use std::sync::atomic::Ordering;
use web_time::Instant;

/// Prompt tokens per forward call during prefill (bounds scratch and logits memory).
const PREFILL_CHUNK: usize = 512;

/// What one step produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// Text that became safe to show (whole UTF-8 characters, never part of a stop string).
    pub text: String,
    /// The token sampled in this step (`None` when the step ended the sequence without one,
    /// e.g. the end-of-generation token, which is not part of the output).
    pub token: Option<u32>,
    /// Set on the last step: why the sequence ended.
    pub finished: Option<FinishReason>,
}

/// The state of one generation between steps.
pub struct Sequence {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    sampler: Sampler,
    stream: TextStream,
    tokens: Vec<u32>,
    logits: Vec<f32>,
    prefilled: bool,
    finished: Option<FinishReason>,
    latencies: Vec<f64>,
    start: Instant,
    prefill_ms: f64,
    ttft_ms: f64,
    first_token_at: Option<Instant>,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Sequence {
    /// Checks that `prompt` fits in `cache` and prepares the sequence; nothing runs yet.
    ///
    /// Errors: `INVALID_CONFIG` for an empty prompt, `CONTEXT_OVERFLOW` when the prompt leaves
    /// no room for a generated token.
    pub fn new(cache: &KvCache, prompt: Vec<u32>, opts: GenerateOptions) -> Result<Self> {
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
        Ok(Sequence {
            sampler: Sampler::new(opts.sampling),
            stream: TextStream::new(&opts.stop),
            prompt,
            opts,
            tokens: Vec::new(),
            logits: Vec::new(),
            prefilled: false,
            finished: None,
            latencies: Vec::new(),
            start: Instant::now(),
            prefill_ms: 0.0,
            ttft_ms: 0.0,
            first_token_at: None,
        })
    }

    fn cancelled(&self) -> bool {
        self.opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Why the sequence ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Whether the prompt has been run.
    pub fn prefilled(&self) -> bool {
        self.prefilled
    }

    /// The prompt's tokens.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        self.stream.text()
    }

    /// Ends the sequence as cancelled without running the model, flushing held text.
    pub fn cancel(&mut self) -> StepOutput {
        self.finish_with(FinishReason::Cancelled, String::new(), None)
    }

    fn finish_with(&mut self, r: FinishReason, mut text: String, token: Option<u32>) -> StepOutput {
        if self.finished.is_none() && r != FinishReason::Stop {
            text.push_str(&self.stream.finish());
        }
        self.finished.get_or_insert(r);
        StepOutput {
            text,
            token,
            finished: self.finished,
        }
    }

    /// Runs one forward pass on `model` (the prompt on the first step, the last sampled token
    /// after that) and samples the next token. A cancelled sequence (see
    /// [`GenerateOptions::cancel`]) ends without running the model.
    ///
    /// Errors: `CANCELLED` when cancelled during prefill; backend errors from the forward pass.
    pub async fn step(&mut self, model: &dyn TextModel, cache: &mut KvCache) -> Result<StepOutput> {
        if self.finished.is_some() {
            return Ok(StepOutput {
                finished: self.finished,
                ..Default::default()
            });
        }
        let t0 = Instant::now();
        if !self.prefilled {
            for chunk in self.prompt.chunks(PREFILL_CHUNK) {
                if self.cancelled() {
                    self.finished = Some(FinishReason::Cancelled);
                    return Err(Error::new(ErrorCode::Cancelled, "cancelled during prefill"));
                }
                self.logits = model.forward(cache, chunk, Logits::Last).await?;
            }
            self.prefilled = true;
            self.prefill_ms = ms(self.start);
        } else {
            if self.cancelled() {
                return Ok(self.cancel());
            }
            let last = self.tokens.last().copied().unwrap_or_default();
            self.logits = model.forward(cache, &[last], Logits::Last).await?;
        }
        self.sample_next(model, cache, t0)
    }

    /// The token the next decode step feeds, when the sequence is prefilled, running and not
    /// cancelled: a scheduler batches these through [`TextModel::forward_batch`] and hands each
    /// sequence its row of logits with [`Sequence::step_with_logits`].
    pub fn decode_input(&self) -> Option<u32> {
        if !self.prefilled || self.finished.is_some() || self.cancelled() {
            return None;
        }
        Some(self.tokens.last().copied().unwrap_or_default())
    }

    /// Completes a decode step whose forward pass ran elsewhere (batched): `logits` are this
    /// sequence's row for [`Sequence::decode_input`], and `t0` is when the step began.
    pub fn step_with_logits(
        &mut self,
        model: &dyn TextModel,
        cache: &KvCache,
        logits: Vec<f32>,
        t0: Instant,
    ) -> Result<StepOutput> {
        if self.finished.is_some() {
            return Ok(StepOutput {
                finished: self.finished,
                ..Default::default()
            });
        }
        self.logits = logits;
        self.sample_next(model, cache, t0)
    }

    /// Samples from `self.logits`, updates the text stream and decides whether to stop.
    fn sample_next(
        &mut self,
        model: &dyn TextModel,
        cache: &KvCache,
        t0: Instant,
    ) -> Result<StepOutput> {
        if self.opts.max_tokens == 0 {
            return Ok(self.finish_with(FinishReason::Length, String::new(), None));
        }
        let id = self.sampler.sample(&self.logits);
        Ok(self.accept(model, id, cache.pos, cache.max_seq, t0))
    }

    /// Whether the rest of this sequence can run through [`Sequence::decode_rest_greedy`].
    pub fn is_greedy(&self) -> bool {
        self.sampler.is_greedy()
    }

    /// Runs every remaining decode step of a prefilled greedy sequence through
    /// [`TextModel::decode_greedy`] (device-side selection, the next step queued while the host
    /// handles this one), handing each step's output to `emit`; the last one has `finished` set.
    /// Produces exactly the outputs repeated [`Sequence::step`] calls would.
    ///
    /// Errors: `INVALID_CONFIG` for a sequence that samples; backend errors.
    pub async fn decode_rest_greedy(
        &mut self,
        model: &dyn TextModel,
        cache: &mut KvCache,
        emit: &mut dyn FnMut(&StepOutput),
    ) -> Result<()> {
        if !self.is_greedy() {
            return Err(Error::invalid_config(
                "decode_rest_greedy needs greedy sampling (temperature 0 or top_k 1)",
            ));
        }
        // A finished sequence (including one with `max_tokens == 0`) has no decode input.
        let Some(first) = self.decode_input() else {
            return Ok(());
        };
        let budget = self.opts.max_tokens.saturating_sub(self.tokens.len());
        let room = cache.max_seq.saturating_sub(cache.pos);
        let (pos0, max_seq) = (cache.pos, cache.max_seq);
        let mut fed = 0;
        let mut t0 = Instant::now();
        let mut on_token = |id| {
            fed += 1;
            let out = self.accept(model, id, pos0 + fed, max_seq, t0);
            t0 = Instant::now();
            emit(&out);
            out.finished.is_none()
        };
        model
            .decode_greedy(cache, first, budget.min(room), &mut on_token)
            .await
    }

    /// Takes `id` as the sampled token when the cache holds `pos` of `max_seq` positions:
    /// updates the text stream and decides whether to stop.
    fn accept(
        &mut self,
        model: &dyn TextModel,
        id: u32,
        pos: usize,
        max_seq: usize,
        t0: Instant,
    ) -> StepOutput {
        if self.tokens.is_empty() {
            self.ttft_ms = ms(self.start);
            self.first_token_at = Some(Instant::now());
        } else {
            self.latencies.push(ms(t0));
        }
        let tok = model.tokenizer();
        if tok.is_end_of_generation(id) {
            let text = self.stream.finish();
            return self.finish_with(FinishReason::Stop, text, None);
        }
        self.tokens.push(id);
        let pushed = self.stream.push(&tok.token_bytes(id));
        let reason = if pushed.stopped {
            Some(FinishReason::Stop)
        } else if self.cancelled() {
            Some(FinishReason::Cancelled)
        } else if self.tokens.len() >= self.opts.max_tokens || pos + 1 >= max_seq {
            Some(FinishReason::Length)
        } else {
            None
        };
        match reason {
            Some(r) => self.finish_with(r, pushed.text, Some(id)),
            None => StepOutput {
                text: pushed.text,
                token: Some(id),
                finished: None,
            },
        }
    }

    /// The result so far (text, tokens, timings, memory).
    pub fn generation(&self, model: &dyn TextModel, cache: &KvCache) -> Generation {
        let lat = &self.latencies;
        let decode_s = self
            .first_token_at
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let stats = GenerationStats {
            prompt_tokens: self.prompt.len(),
            generated_tokens: self.tokens.len(),
            time_to_first_token_ms: self.ttft_ms,
            prefill_tokens_per_s: self.prompt.len() as f64 / (self.prefill_ms / 1e3).max(1e-9),
            decode_tokens_per_s: if lat.is_empty() {
                0.0
            } else {
                lat.len() as f64 / decode_s.max(1e-9)
            },
            token_latency_mean_ms: if lat.is_empty() {
                0.0
            } else {
                lat.iter().sum::<f64>() / lat.len() as f64
            },
            token_latency_p50_ms: percentile(lat, 50.0),
            token_latency_p95_ms: percentile(lat, 95.0),
            total_ms: ms(self.start),
            weight_bytes: model.weight_bytes(),
            kv_cache_bytes: cache.bytes(),
            peak_rss_bytes: peak_rss_bytes(),
        };
        Generation {
            text: self.stream.text().to_owned(),
            tokens: self.tokens.clone(),
            finish_reason: self.finished.unwrap_or(FinishReason::Cancelled),
            stats,
        }
    }
}
