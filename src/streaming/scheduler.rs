//! Continuous batching: one thread owns the model; each step it runs one decode token for every
//! running request (each with its own KV cache), admits waiting requests between steps, and
//! adapts the batch size (running requests at once) to a per-token latency target and a
//! KV-cache memory budget.

use super::error::InferenceError;
use super::events::{EventHandlers, MemoryPressure, TimeoutEvent};
use super::stats::StatsAccumulator;
use super::{Completion, InferenceConfig, TokenEvent, Usage};
use lowbit_core::adapter::TextModel;
use lowbit_core::generate::{FinishReason, GenerateOptions, Sequence, StepOutput};
use lowbit_core::kv::KvFormat;
use lowbit_core::Error;
use lowbit_core::{block_on, KvCache};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the scheduler is idle before it returns freed memory to the system a second time.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(2);

/// Where a request's events go; returns `false` once nobody listens (the request is then
/// cancelled).
pub(crate) type EventSink = Box<dyn FnMut(TokenEvent) -> bool + Send>;

/// State shared between the scheduler thread and the callers.
pub(crate) struct Shared {
    /// Latency mode (see `InferenceConfig::optimize_for_latency`), switchable at run time.
    pub latency_mode: AtomicBool,
    /// Requests submitted and not yet finished, cancelled or abandoned (waiting + running):
    /// the count the concurrency limit applies to.
    pub in_flight: AtomicUsize,
    /// Requests admitted to the running batch (the rest of `in_flight` waits).
    pub running: AtomicUsize,
    /// The batch size now.
    pub batch_size: AtomicUsize,
    pub stats: Mutex<StatsAccumulator>,
    pub handlers: EventHandlers,
}

/// A request's place in the concurrency limit. Released once, by whichever comes first: the
/// request finishing or failing, its caller cancelling it (a `stop`, a client gone), or the
/// job being dropped. Releasing on cancel frees the place at once, not at the next scheduler
/// step, so a client that stops and resends is not told `busy` by its own stopped request.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    released: AtomicBool,
}

impl Slot {
    /// Takes a place; the caller checks the returned count (before this one) against the limit.
    pub fn take(shared: Arc<Shared>) -> (Arc<Slot>, usize) {
        let before = shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let slot = Arc::new(Slot {
            shared,
            released: AtomicBool::new(false),
        });
        (slot, before)
    }

    /// Gives the place back (later calls do nothing).
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("released", &self.released.load(Ordering::Relaxed))
            .finish()
    }
}

/// A request handed to the scheduler.
pub(crate) struct Job {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub cancel: Arc<AtomicBool>,
    pub sink: EventSink,
    pub submitted: Instant,
    /// The request's place in the concurrency limit; released just before the final event,
    /// so a client that sends its next request as soon as it reads the completion is never
    /// told `busy` by its own finished request.
    pub slot: Arc<Slot>,
}

struct Running {
    job: Job,
    seq: Sequence,
    cache: KvCache,
    last_token_at: Option<Instant>,
}

fn lock(m: &Mutex<StatsAccumulator>) -> std::sync::MutexGuard<'_, StatsAccumulator> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The scheduler's loop; returns when every sender is gone and no request is left.
pub(crate) fn run(
    model: Arc<dyn TextModel>,
    config: InferenceConfig,
    shared: Arc<Shared>,
    rx: Receiver<Job>,
) {
    let ctx = config
        .plan
        .kv_cache
        .max_seq_len
        .min(model.config().context_length.max(2))
        .max(2);
    // KV bytes grow linearly with capacity: measure one token's worth once.
    // The plan checked its KV format when it was made.
    let kv_format = config.plan.kv_cache.format().unwrap_or(KvFormat::F32);
    let kv_per_token = model
        .new_cache_as(16, kv_format)
        .map(|c| c.bytes().div_ceil(16))
        .unwrap_or(0);
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut batch = config
        .initial_batch_size
        .clamp(config.min_batch_size.max(1), config.max_batch_size.max(1));
    set_batch(&shared, batch, "initial");
    let mut open = true;
    // The fastest decode step with one request so far: latency mode's yardstick.
    let mut fastest_solo_ms = f64::INFINITY;
    loop {
        if running.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            // Idle: the finished requests' KV caches and scratch were freed; hand the pages
            // back to the system before blocking, so memory after a burst returns to the
            // idle level instead of staying at its peak. Once more after a quiet moment, for
            // what the network side freed after the last request (connection buffers).
            release_free_memory();
            let next = match rx.recv_timeout(IDLE_TRIM_AFTER) {
                Err(RecvTimeoutError::Timeout) => {
                    release_free_memory();
                    rx.recv().ok()
                }
                other => other.ok(),
            };
            match next {
                Some(j) => waiting.push_back(j),
                None => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(j) => waiting.push_back(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        expire_waiting(&mut waiting, &config, &shared);

        // Admit waiting requests up to the batch size and the KV budget.
        let mut kv_running: usize = running.iter().map(|r| r.cache.bytes()).sum();
        while running.len() < batch {
            let Some(job) = waiting.front() else { break };
            let max_seq = (job.prompt.len() + job.opts.max_tokens + 1).min(ctx);
            let need = kv_per_token * max_seq;
            if kv_running + need > config.kv_budget_bytes {
                if running.is_empty() {
                    let mut job = waiting.pop_front().expect("front exists");
                    fail(
                        &mut job,
                        &shared,
                        InferenceError::Core(Error::out_of_memory(format!(
                            "the request needs {need} bytes of KV cache, over the budget of {} \
                             bytes",
                            config.kv_budget_bytes
                        ))),
                    );
                    continue;
                }
                if config.adaptive_batch_size && batch > running.len().max(1) {
                    batch = running.len().max(config.min_batch_size.max(1));
                    set_batch(&shared, batch, "memory_pressure");
                    shared.handlers.memory_pressure(&MemoryPressure {
                        kv_cache_bytes: kv_running,
                        budget_bytes: config.kv_budget_bytes,
                        action: format!(
                            "batch size reduced to {batch}; {} request(s) wait for KV memory",
                            waiting.len()
                        ),
                    });
                }
                break;
            }
            let mut job = waiting.pop_front().expect("front exists");
            let started = model.new_cache_as(max_seq, kv_format).and_then(|cache| {
                Sequence::new(&cache, job.prompt.clone(), job.opts.clone()).map(|s| (s, cache))
            });
            match started {
                Ok((seq, cache)) => {
                    kv_running += cache.bytes();
                    running.push(Running {
                        job,
                        seq,
                        cache,
                        last_token_at: None,
                    });
                }
                Err(e) => fail(&mut job, &shared, e.into()),
            }
        }
        if running.is_empty() {
            continue;
        }

        // One step for every running request: prefills (and cancellations, timeouts) one by
        // one, then a single batched forward pass for every request that is decoding, so each
        // weight matrix is read once per step for all of them.
        let step_start = Instant::now();
        let stepped = running.len();
        shared.running.store(stepped, Ordering::SeqCst);
        // Which requests join the batched forward pass, and with which token, is decided once
        // per request per step: a cancel flag the network thread sets later in the step
        // must not drop a token after its cache was counted in.
        let mut batch_rows: Vec<(usize, u32)> = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            let out = if r.job.cancel.load(Ordering::Relaxed) {
                Ok(r.seq.cancel())
            } else if r.job.submitted.elapsed() > config.request_timeout {
                let limit_ms = config.request_timeout.as_millis() as u64;
                shared.handlers.timeout(&TimeoutEvent {
                    request_id: r.job.id,
                    elapsed_ms: r.job.submitted.elapsed().as_secs_f64() * 1e3,
                    limit_ms,
                });
                Err(InferenceError::Timeout { limit_ms })
            } else if let Some(token) = r.seq.decode_input() {
                batch_rows.push((i, token));
                continue;
            } else {
                // The scheduler thread is native code's top level: it waits for the device here.
                block_on(r.seq.step(model.as_ref(), &mut r.cache)).map_err(InferenceError::from)
            };
            settle(r, out, &shared, model.as_ref());
        }
        let decoding = batch_rows.len();
        let mut in_batch = vec![false; running.len()];
        for &(i, _) in &batch_rows {
            in_batch[i] = true;
        }
        let mut decode_ms = 0.0;
        if decoding > 0 {
            let t = Instant::now();
            let tokens: Vec<u32> = batch_rows.iter().map(|&(_, token)| token).collect();
            let mut caches: Vec<&mut KvCache> = running
                .iter_mut()
                .zip(&in_batch)
                .filter(|(_, b)| **b)
                .map(|(r, _)| &mut r.cache)
                .collect();
            let result = block_on(model.forward_batch(&mut caches, &tokens));
            drop(caches);
            decode_ms = t.elapsed().as_secs_f64() * 1e3;
            lock(&shared.stats).decode_batch(decoding);
            let batch = running.iter_mut().zip(&in_batch).filter(|(_, b)| **b);
            match result {
                Ok(rows) => {
                    for ((r, _), logits) in batch.zip(rows) {
                        let out = r
                            .seq
                            .step_with_logits(model.as_ref(), &r.cache, logits, t)
                            .map_err(InferenceError::from);
                        settle(r, out, &shared, model.as_ref());
                    }
                }
                Err(e) => {
                    for (r, _) in batch {
                        r.seq.cancel();
                        fail(&mut r.job, &shared, InferenceError::from(e.clone()));
                    }
                }
            }
        }
        running.retain(|r| r.seq.finished().is_none());
        shared.running.store(running.len(), Ordering::SeqCst);
        let kv_now: usize = running.iter().map(|r| r.cache.bytes()).sum();
        lock(&shared.stats).step(step_start.elapsed().as_secs_f64() * 1e3, kv_now, stepped);

        if decoding == 1 {
            fastest_solo_ms = fastest_solo_ms.min(decode_ms);
        }
        if config.adaptive_batch_size && decoding > 0 {
            let mut target = config.target_token_latency.as_secs_f64() * 1e3;
            if shared.latency_mode.load(Ordering::Relaxed) && fastest_solo_ms.is_finite() {
                target = target.min(1.5 * fastest_solo_ms);
            }
            let min = config.min_batch_size.max(1);
            let max = config.max_batch_size.max(min);
            // Shrinking acts on the running count: requests already running are never
            // evicted, so one over-target step lowers the batch below them once, not per step.
            if decode_ms > target && batch > min && batch >= stepped {
                batch = stepped.saturating_sub(1).max(min);
                set_batch(&shared, batch, "latency_over_target");
            } else if decode_ms < 0.8 * target && !waiting.is_empty() && running.len() >= batch {
                // Room under the target: admit one more request per step.
                batch = (batch + 1).min(max);
                set_batch(&shared, batch, "latency_headroom");
            }
        }
        if config.adaptive_batch_size {
            // Load fell: the batch never stays larger than the requests there are (nor below
            // where it started), so a burst's batch size does not outlive the burst.
            let floor = config
                .initial_batch_size
                .clamp(config.min_batch_size.max(1), config.max_batch_size.max(1));
            let demand = (running.len() + waiting.len()).max(floor);
            if demand < batch {
                batch = demand;
                set_batch(&shared, batch, "load_fell");
            }
        }
    }
}

/// Returns freed heap pages to the operating system. glibc keeps freed blocks of a burst's KV
/// caches in its arenas (its mmap threshold rises after the first large free), so without
/// this the resident size stays at the burst's peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us and
        // is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Delivers a step's outcome (or ends the request on an error).
fn settle(
    r: &mut Running,
    out: Result<StepOutput, InferenceError>,
    shared: &Shared,
    model: &dyn TextModel,
) {
    match out {
        Ok(out) => deliver(r, out, shared, model),
        Err(e) if e.is_cancelled() => {
            let out = r.seq.cancel();
            deliver(r, out, shared, model);
        }
        Err(e) => {
            r.seq.cancel();
            fail(&mut r.job, shared, e);
        }
    }
}

fn set_batch(shared: &Shared, batch: usize, reason: &'static str) {
    shared.batch_size.store(batch, Ordering::Relaxed);
    lock(&shared.stats).set_batch_size(batch, reason);
}

/// Ends waiting requests that were cancelled or timed out before they could start.
fn expire_waiting(waiting: &mut VecDeque<Job>, config: &InferenceConfig, shared: &Shared) {
    let mut i = 0;
    while i < waiting.len() {
        let job = &waiting[i];
        if job.cancel.load(Ordering::Relaxed) {
            let mut job = waiting.remove(i).expect("index in range");
            let usage = Usage::new(job.prompt.len(), 0);
            lock(&shared.stats).completed();
            job.slot.release();
            (job.sink)(TokenEvent::Done(Completion {
                text: String::new(),
                tokens: Vec::new(),
                finish_reason: FinishReason::Cancelled,
                usage,
                stats: Default::default(),
            }));
        } else if job.submitted.elapsed() > config.request_timeout {
            let mut job = waiting.remove(i).expect("index in range");
            let limit_ms = config.request_timeout.as_millis() as u64;
            shared.handlers.timeout(&TimeoutEvent {
                request_id: job.id,
                elapsed_ms: job.submitted.elapsed().as_secs_f64() * 1e3,
                limit_ms,
            });
            fail(&mut job, shared, InferenceError::Timeout { limit_ms });
        } else {
            i += 1;
        }
    }
}

fn fail(job: &mut Job, shared: &Shared, e: InferenceError) {
    shared.handlers.error(job.id, &e);
    lock(&shared.stats).completed();
    job.slot.release();
    (job.sink)(TokenEvent::Error(e));
}

fn deliver(r: &mut Running, out: StepOutput, shared: &Shared, model: &dyn TextModel) {
    let now = Instant::now();
    let index = r.seq.tokens().len().saturating_sub(1);
    let is_last = out.finished.is_some();
    let mut listening = true;
    if out.token.is_some() {
        let mut st = lock(&shared.stats);
        match r.last_token_at {
            None => {
                st.first_token(now.duration_since(r.job.submitted).as_secs_f64() * 1e3);
                st.token(None);
            }
            Some(prev) => st.token(Some(now.duration_since(prev).as_secs_f64() * 1e3)),
        }
        r.last_token_at = Some(now);
    }
    if out.token.is_some() || !out.text.is_empty() {
        listening = (r.job.sink)(TokenEvent::Token {
            text: out.text,
            token_id: out.token,
            index,
            is_last,
        });
    }
    if let Some(reason) = out.finished {
        let g = r.seq.generation(model, &r.cache);
        // Stats first: a caller that wakes on `Done` sees its request counted.
        lock(&shared.stats).completed();
        r.job.slot.release();
        (r.job.sink)(TokenEvent::Done(Completion {
            usage: Usage::new(r.seq.prompt().len(), g.tokens.len()),
            text: g.text,
            tokens: g.tokens,
            finish_reason: reason,
            stats: g.stats,
        }));
    } else if !listening {
        // Nobody reads the events any more (client gone): free the request now.
        r.job.cancel.store(true, Ordering::Relaxed);
        r.seq.cancel();
        lock(&shared.stats).completed();
        r.job.slot.release();
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
