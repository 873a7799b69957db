//! The streaming inference API (SPEC §1): one loaded model shared by many concurrent requests,
//! tokens delivered through a callback or an async [`Stream`], cancellation that frees a
//! request's KV cache within one token, aggregate performance figures and event callbacks.
//!
//! A scheduler thread owns the model and interleaves the requests' decode steps (continuous
//! batching, see `scheduler`); callers only submit and read events.
//!
//! ```no_run
//! use lowbit::streaming::{InferenceConfig, StreamingInference};
//! use lowbit::core::generate::GenerateOptions;
//!
//! let engine = StreamingInference::new("models/SmolLM2-135M-Instruct.Q4_1.gguf",
//!     InferenceConfig::default())?;
//! let text = engine.generate("The capital of France is", GenerateOptions::default(),
//!     |piece, _last| print!("{piece}"))?;
//! # Ok::<(), lowbit::streaming::InferenceError>(())
//! ```

mod config;
mod error;
mod events;
mod scheduler;
mod stats;

pub use config::InferenceConfig;
pub use error::InferenceError;
pub use events::{MemoryPressure, TimeoutEvent};
pub use stats::{BatchSizeChange, PerformanceStats};

use crate::plan::ModelChoice;
use futures::Stream;
use lowbit_core::adapter::TextModel;
use lowbit_core::generate::{FinishReason, GenerateOptions, GenerationStats};
use scheduler::{Job, Shared, Slot};
use serde::Serialize;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Plain text, encoded with the model's BOS where it wants one; special-token texts in it
    /// (`<|im_start|>`) are plain text, not control tokens.
    Text(String),
    /// Text whose special-token texts become control tokens, for a caller that writes its own
    /// template (the raw completions endpoint's `parse_special`); BOS as for `Text`.
    Raw(String),
    /// Chat messages `(role, content)`, rendered with the model's chat template.
    Chat(Vec<(String, String)>),
    /// Token ids, as they are.
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_owned())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

/// Token counts of one request (equal to the tokenizer's counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (the end-of-generation token excluded).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts from the prompt and completion sizes.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// The end of a request.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The generated text (stop string excluded).
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings of this request (its own compute; see [`PerformanceStats`] for what clients
    /// see).
    pub stats: GenerationStats,
}

/// One event of a request. Every request ends with exactly one [`TokenEvent::Done`] or
/// [`TokenEvent::Error`].
#[derive(Clone, Debug)]
pub enum TokenEvent {
    /// Text decoded from one token: whole UTF-8 characters only (a character spanning several
    /// tokens arrives with the token that completes it).
    Token {
        /// Text safe to show now (may be empty while a character or stop string is pending).
        text: String,
        /// The token (`None` for a final flush without a token).
        token_id: Option<u32>,
        /// Index of the token among the generated ones.
        index: usize,
        /// Whether this is the last token of the request.
        is_last: bool,
    },
    /// Generation ended.
    Done(Completion),
    /// The request failed.
    Error(InferenceError),
}

/// Stops a running request: generation ends within one token and its KV cache is freed; its
/// place in the concurrency limit is free at once.
#[derive(Clone, Debug, Default)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
    slot: Option<Arc<Slot>>,
}

impl CancelHandle {
    /// Asks the request to stop.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
        if let Some(slot) = &self.slot {
            slot.release();
        }
    }

    /// Whether cancellation was asked.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// The events of one request as an async [`Stream`]; dropping it cancels the request.
pub struct TokenStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<TokenEvent>,
    cancel: CancelHandle,
    request_id: u64,
    prompt_tokens: usize,
}

impl TokenStream {
    /// A handle that cancels this request.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The request's id (as in event callbacks).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Tokens of the encoded prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }
}

impl Stream for TokenStream {
    type Item = TokenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A loaded model serving many concurrent streaming requests. `Send + Sync`: share it with an
/// `Arc`. Dropping the last reference stops the scheduler after the running requests.
pub struct StreamingInference {
    model: Arc<dyn TextModel>,
    config: InferenceConfig,
    model_id: String,
    /// Where the model was loaded from (engines made by [`StreamingInference::new`]).
    model_path: Option<std::path::PathBuf>,
    shared: Arc<Shared>,
    tx: Option<Mutex<mpsc::Sender<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    next_id: AtomicU64,
}

impl StreamingInference {
    /// Loads the model at `model_path` per `config` (its plan's model choice is replaced by
    /// this path) and starts the scheduler.
    ///
    /// Errors: `MODEL_LOADING_FAILED`, `UNSUPPORTED_MODEL`, `INVALID_CONFIG`, backend errors.
    pub fn new(
        model_path: impl AsRef<Path>,
        mut config: InferenceConfig,
    ) -> Result<Self, InferenceError> {
        config.plan.model = ModelChoice::File(model_path.as_ref().to_path_buf());
        Self::load(config)
    }

    /// Loads the model `config.plan` names (e.g. from [`InferenceConfig::from_file`]) and
    /// starts the scheduler.
    ///
    /// Errors: as [`StreamingInference::new`].
    pub fn load(config: InferenceConfig) -> Result<Self, InferenceError> {
        let path = config.plan.model_path()?;
        let (model, _) = config.plan.load(&mut |_, _, _| {})?;
        let id = crate::plan::model_id(path.as_deref(), model.as_ref());
        let mut engine = Self::from_model(Arc::from(model), id, config)?;
        engine.model_path = path;
        Ok(engine)
    }

    /// Latency mode: from now on the adaptive batch grows only while a step costs each request
    /// at most 1.5× the fastest single-request step seen (see
    /// [`InferenceConfig::optimize_for_latency`]); running requests are never evicted.
    pub fn optimize_for_latency(&self) {
        self.shared.latency_mode.store(true, Ordering::Relaxed);
    }

    /// Applies a browser profile (`chrome`, `edge`, `firefox`, `safari`, `mobile`, or a plugin's):
    /// the configuration is re-validated under it (e.g. Safari has no 2-bit kernels, so int2
    /// becomes int4; its memory budget may force fewer bits) and the model is reloaded on a
    /// backend built for the profile (its workgroup sizes, binding limits and f16/subgroup
    /// rules). Waits for running requests to finish, then frees the old model before loading
    /// the new one (so both never need memory at once). Returns the new engine; on an error
    /// the old engine is already gone, so build a fresh one with [`StreamingInference::new`].
    ///
    /// Errors: `INVALID_CONFIG` for an unknown profile, an engine not made by
    /// [`StreamingInference::new`] (there is no file to reload), or a configuration the profile
    /// cannot run; loading errors.
    pub fn optimize_for_browser(self, browser: &str) -> Result<Self, InferenceError> {
        lowbit_core::registry::find_profile(browser)?;
        let Some(path) = self.model_path.clone() else {
            return Err(lowbit_core::Error::invalid_config(
                "optimize_for_browser reloads the model from its file: create the engine with \
                 StreamingInference::new",
            )
            .into());
        };
        let mut req = crate::selection::ConfigRequest {
            env: false,
            ..Default::default()
        };
        let c = &self.config;
        let cli = lowbit_core::config::Source::Cli("optimize_for_browser".into());
        // The loaded plan as configuration values, so the profile's validator sees (and may
        // correct) exactly what runs now.
        let w = &c.plan.weights;
        let (group, scheme) = w
            .group_scheme()
            .unwrap_or((32, lowbit_core::quant::Scheme::Asymmetric));
        let b = &c.plan.backend;
        let mut values: Vec<(&str, lowbit_core::config::toml::Value)> = vec![
            ("model.path", path.display().to_string().into()),
            ("quantization.method", w.method().into()),
            ("quantization.group_size", (group as i64).into()),
            ("quantization.scheme", scheme.config_name().into()),
            ("runtime.backend", b.name.clone().into()),
            ("runtime.threads", (b.threads as i64).into()),
            ("runtime.profile", browser.into()),
            (
                "kv_cache.max_seq_len",
                (c.plan.kv_cache.max_seq_len as i64).into(),
            ),
            ("kv_cache.bits", i64::from(c.plan.kv_cache.bits).into()),
            (
                "performance.adaptive_batch_size",
                c.adaptive_batch_size.into(),
            ),
            (
                "performance.max_batch_size",
                (c.max_batch_size as i64).into(),
            ),
            (
                "performance.optimize_for_latency",
                c.optimize_for_latency.into(),
            ),
        ];
        for (key, p) in [
            ("quantization.layers.attention", w.attention),
            ("quantization.layers.feedforward", w.feedforward),
            ("quantization.layers.embedding", w.embedding),
            ("quantization.layers.lm_head", w.lm_head),
        ] {
            values.push((key, i64::from(p.bits()).into()));
        }
        for (k, v) in values {
            req.cli.push(k, v, cli.clone());
        }
        let mut config = InferenceConfig::resolve(&req, c)?;
        // The backend switches are not configuration the profile re-validates: keep them.
        config.plan.backend.tuning = b.tuning.clone();
        drop(self);
        Self::new(&path, config)
    }

    /// Serves an already loaded model under the name `model_id`.
    pub fn from_model(
        model: Arc<dyn TextModel>,
        model_id: String,
        config: InferenceConfig,
    ) -> Result<Self, InferenceError> {
        let shared = Arc::new(Shared {
            latency_mode: std::sync::atomic::AtomicBool::new(config.optimize_for_latency),
            in_flight: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            batch_size: AtomicUsize::new(0),
            stats: Mutex::new(stats::StatsAccumulator::new(model.weight_bytes())),
            handlers: Default::default(),
        });
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lowbit-scheduler".into())
            .spawn({
                let model = model.clone();
                let config = config.clone();
                let shared = shared.clone();
                move || scheduler::run(model, config, shared, rx)
            })
            .map_err(|e| {
                InferenceError::Core(lowbit_core::Error::out_of_memory(format!(
                    "cannot start the scheduler thread: {e}"
                )))
            })?;
        Ok(StreamingInference {
            model,
            config,
            model_id,
            model_path: None,
            shared,
            tx: Some(Mutex::new(tx)),
            thread: Some(thread),
            next_id: AtomicU64::new(1),
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &dyn TextModel {
        self.model.as_ref()
    }

    /// The name clients use for the model (the file's stem).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The configuration.
    pub fn config(&self) -> &InferenceConfig {
        &self.config
    }

    /// KV-cache capacity of one request, tokens.
    pub fn context_size(&self) -> usize {
        self.config
            .plan
            .kv_cache
            .max_seq_len
            .min(self.model.config().context_length.max(2))
            .max(2)
    }

    /// Requests submitted and not yet finished.
    pub fn active_requests(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Requests submitted and waiting for a place in the running batch.
    pub fn queued_requests(&self) -> usize {
        self.active_requests()
            .saturating_sub(self.shared.running.load(Ordering::SeqCst))
    }

    /// The adaptive batch size now.
    pub fn batch_size(&self) -> usize {
        self.shared.batch_size.load(Ordering::Relaxed)
    }

    /// Encodes a prompt with the model's tokenizer (chat prompts through its chat template).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, InferenceError> {
        let tok = self.model.tokenizer();
        // What the client sent cannot be encoded (a template rejecting the message order, a
        // content the tokenizer refuses): a request problem, not a configuration one.
        let request_error = |e: lowbit_core::Error| match e.code {
            lowbit_core::ErrorCode::InvalidConfig => InferenceError::InvalidRequest(e.message),
            _ => InferenceError::Core(e),
        };
        Ok(match prompt {
            Prompt::Text(t) | Prompt::Raw(t) => {
                if t.is_empty() {
                    return Err(InferenceError::InvalidRequest("the prompt is empty".into()));
                }
                let parse_special = matches!(prompt, Prompt::Raw(_));
                tok.encode_with(t, true, parse_special)
                    .map_err(request_error)?
            }
            Prompt::Chat(msgs) => {
                if msgs.is_empty() {
                    return Err(InferenceError::InvalidRequest("no messages".into()));
                }
                let m: Vec<(&str, &str)> =
                    msgs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
                tok.encode_chat(&m, true).map_err(request_error)?
            }
            Prompt::Tokens(t) => {
                let vocab = self.model.config().vocab_size;
                if let Some(bad) = t.iter().find(|&&id| id as usize >= vocab) {
                    return Err(InferenceError::InvalidRequest(format!(
                        "token id {bad} is outside the vocabulary ({vocab})"
                    )));
                }
                t.clone()
            }
        })
    }

    /// Checks a request against the limits of the configuration.
    pub fn validate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<(), InferenceError> {
        let c = &self.config;
        if prompt.is_empty() {
            return Err(InferenceError::InvalidRequest("the prompt is empty".into()));
        }
        let ctx = self.context_size();
        if prompt.len() > c.max_prompt_tokens || prompt.len() >= ctx {
            return Err(InferenceError::Core(lowbit_core::Error::context_overflow(
                format!(
                    "the prompt has {} tokens; at most {} are accepted (context {ctx})",
                    prompt.len(),
                    c.max_prompt_tokens.min(ctx - 1)
                ),
            )));
        }
        if opts.max_tokens == 0 || opts.max_tokens > c.max_new_tokens {
            return Err(InferenceError::InvalidRequest(format!(
                "max_tokens must be between 1 and {}",
                c.max_new_tokens
            )));
        }
        let s = &opts.sampling;
        if !(s.temperature.is_finite() && (0.0..=2.0).contains(&s.temperature)) {
            return Err(InferenceError::InvalidRequest(
                "temperature must be between 0 and 2".into(),
            ));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(InferenceError::InvalidRequest(
                "top_p must be in (0, 1]".into(),
            ));
        }
        Ok(())
    }

    /// Submits an encoded prompt; `sink` receives the events on the scheduler thread.
    fn submit(
        &self,
        prompt: Vec<u32>,
        mut opts: GenerateOptions,
        sink: scheduler::EventSink,
    ) -> Result<(u64, CancelHandle), InferenceError> {
        self.validate(&prompt, &opts)?;
        let limit = self.config.max_concurrent_requests;
        let (slot, in_flight) = Slot::take(self.shared.clone());
        if in_flight >= limit {
            return Err(InferenceError::Busy { in_flight, limit });
        }
        let waiting = in_flight.saturating_sub(self.shared.running.load(Ordering::SeqCst));
        if waiting >= self.config.max_queued_requests {
            return Err(InferenceError::QueueFull {
                waiting,
                limit: self.config.max_queued_requests,
            });
        }
        let cancel = opts.cancel.get_or_insert_with(Default::default).clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            prompt,
            opts,
            cancel: cancel.clone(),
            sink,
            submitted: Instant::now(),
            slot: slot.clone(),
        };
        let tx = self.tx.as_ref().ok_or(InferenceError::ShutDown)?;
        tx.lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| InferenceError::ShutDown)?;
        Ok((
            id,
            CancelHandle {
                flag: cancel,
                slot: Some(slot),
            },
        ))
    }

    /// Generates from `prompt`, calling `callback(token_text, is_last)` per token as soon as it
    /// is decoded; returns the full text. Blocks the calling thread (use
    /// [`StreamingInference::generate_async`] from async code). Cancel through
    /// `opts.cancel`.
    pub fn generate(
        &self,
        prompt: impl Into<Prompt>,
        opts: GenerateOptions,
        callback: impl FnMut(&str, bool),
    ) -> Result<String, InferenceError> {
        self.generate_completion(prompt, opts, callback)
            .map(|c| c.text)
    }

    /// As [`StreamingInference::generate`], returning the whole [`Completion`] (usage, finish
    /// reason, timings).
    pub fn generate_completion(
        &self,
        prompt: impl Into<Prompt>,
        opts: GenerateOptions,
        mut callback: impl FnMut(&str, bool),
    ) -> Result<Completion, InferenceError> {
        let ids = self.encode(&prompt.into())?;
        let (tx, rx) = mpsc::channel();
        self.submit(ids, opts, Box::new(move |ev| tx.send(ev).is_ok()))?;
        let mut last_seen = false;
        for ev in rx.iter() {
            match ev {
                TokenEvent::Token { text, is_last, .. } => {
                    last_seen |= is_last;
                    callback(&text, is_last);
                }
                TokenEvent::Done(c) => {
                    if !last_seen {
                        callback("", true);
                    }
                    return Ok(c);
                }
                TokenEvent::Error(e) => return Err(e),
            }
        }
        Err(InferenceError::ShutDown)
    }

    /// Starts generating from `prompt` and returns its events as a [`Stream`]; the decode runs
    /// on the scheduler thread. Dropping the stream cancels the request.
    pub fn generate_async(
        &self,
        prompt: impl Into<Prompt>,
        opts: GenerateOptions,
    ) -> Result<TokenStream, InferenceError> {
        let ids = self.encode(&prompt.into())?;
        self.submit_stream(ids, opts)
    }

    /// As [`StreamingInference::generate_async`] for an already encoded prompt.
    pub fn submit_stream(
        &self,
        ids: Vec<u32>,
        opts: GenerateOptions,
    ) -> Result<TokenStream, InferenceError> {
        let prompt_tokens = ids.len();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (request_id, cancel) =
            self.submit(ids, opts, Box::new(move |ev| tx.send(ev).is_ok()))?;
        Ok(TokenStream {
            rx,
            cancel,
            request_id,
            prompt_tokens,
        })
    }

    /// Aggregate figures over all requests so far.
    pub fn performance_stats(&self) -> PerformanceStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
    }

    /// Calls `f(request_id, error)` whenever a request fails.
    pub fn on_error(&self, f: impl Fn(u64, &InferenceError) + Send + Sync + 'static) {
        self.shared
            .handlers
            .on_error(Box::new(move |(id, e)| f(*id, e)));
    }

    /// Calls `f` when the KV-cache budget is reached (with what the scheduler did about it).
    pub fn on_memory_pressure(&self, f: impl Fn(&MemoryPressure) + Send + Sync + 'static) {
        self.shared.handlers.on_memory_pressure(Box::new(f));
    }

    /// Calls `f` when a request runs past the time limit.
    pub fn on_timeout(&self, f: impl Fn(&TimeoutEvent) + Send + Sync + 'static) {
        self.shared.handlers.on_timeout(Box::new(f));
    }
}

impl Drop for StreamingInference {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
