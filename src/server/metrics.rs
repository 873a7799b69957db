//! `GET /metrics`: the server's counters, histograms and gauges in the Prometheus text
//! exposition format (version 0.0.4), written by hand.
//!
//! Requests are counted at the server layer: [`Metrics::submit`] wraps the engine's
//! [`TokenStream`] in a [`MeteredStream`] that records the outcome once, when the request ends
//! (or when its stream is dropped: the client went away).

use crate::streaming::{InferenceError, Prompt, StreamingInference, TokenEvent, TokenStream};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use lowbit_core::generate::{FinishReason, GenerateOptions};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

/// Bucket bounds of the time to first token, seconds (CPU prefill of a long prompt reaches
/// seconds; a GPU answers in tens of milliseconds).
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds of the time between two tokens of one request, seconds.
const TOKEN_BUCKETS: [f64; 11] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0];

/// How a request ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Ended by an end-of-generation token, a stop string or `max_tokens`.
    Completed,
    /// Stopped by its client (`control`/`stop`).
    Stopped,
    /// Its client went away before the end.
    Cancelled,
    /// Ran past the request time limit.
    Timeout,
    /// Refused at submission: too many requests running or waiting.
    RefusedBusy,
    /// Failed or refused with another code.
    Error(&'static str),
}

impl Outcome {
    fn labels(self) -> String {
        match self {
            Outcome::Completed => "outcome=\"completed\"".into(),
            Outcome::Stopped => "outcome=\"stopped\"".into(),
            Outcome::Cancelled => "outcome=\"cancelled\"".into(),
            Outcome::Timeout => "outcome=\"timeout\"".into(),
            Outcome::RefusedBusy => "outcome=\"refused_busy\"".into(),
            Outcome::Error(code) => format!("outcome=\"error\",code=\"{}\"", escape(code)),
        }
    }

    fn of_error(e: &InferenceError) -> Self {
        match e.code() {
            "busy" => Outcome::RefusedBusy,
            "timeout" => Outcome::Timeout,
            code => Outcome::Error(code),
        }
    }
}

/// A cumulative histogram with fixed bucket bounds.
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b);
        self.counts[i.unwrap_or(self.bounds.len())] += 1;
        self.sum += v;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The registry: one per server, shared by every handler.
pub(crate) struct Metrics {
    outcomes: Mutex<BTreeMap<Outcome, u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    token_latency: Mutex<Histogram>,
    /// Requests accepted by the engine whose stream is still held (the drain waits for these).
    in_flight: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            outcomes: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            ttft: Mutex::new(Histogram::new(&TTFT_BUCKETS)),
            token_latency: Mutex::new(Histogram::new(&TOKEN_BUCKETS)),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    /// Encodes `prompt` and submits it to `engine`, counting a refusal or failure, and
    /// returns the request's metered events.
    pub fn submit(
        self: &Arc<Self>,
        engine: &StreamingInference,
        prompt: &Prompt,
        opts: GenerateOptions,
    ) -> Result<MeteredStream, InferenceError> {
        let submitted = engine
            .encode(prompt)
            .and_then(|ids| engine.submit_stream(ids, opts));
        match submitted {
            Ok(events) => {
                self.prompt_tokens
                    .fetch_add(events.prompt_tokens() as u64, Ordering::Relaxed);
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                Ok(MeteredStream {
                    events,
                    metrics: self.clone(),
                    started: Instant::now(),
                    last_token: None,
                    tokens_seen: 0,
                    ended: false,
                })
            }
            Err(e) => {
                self.count(Outcome::of_error(&e));
                Err(e)
            }
        }
    }

    /// Requests accepted and not yet ended (their stream still held).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn count(&self, outcome: Outcome) {
        *lock(&self.outcomes).entry(outcome).or_default() += 1;
    }

    /// The exposition text: this registry's figures and `engine`'s gauges; `ready` is the
    /// readiness `/health/ready` answers.
    pub fn render(&self, engine: &StreamingInference, ready: bool) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        let outcomes = lock(&self.outcomes).clone();
        // Every outcome but errors is listed from the start, so a rate over it is defined
        // before the first such request.
        let mut samples: Vec<(String, f64)> = [
            Outcome::Completed,
            Outcome::Stopped,
            Outcome::Cancelled,
            Outcome::Timeout,
            Outcome::RefusedBusy,
        ]
        .iter()
        .map(|o| (o.labels(), outcomes.get(o).copied().unwrap_or(0) as f64))
        .collect();
        samples.extend(
            outcomes
                .iter()
                .filter(|(o, _)| matches!(o, Outcome::Error(_)))
                .map(|(o, n)| (o.labels(), *n as f64)),
        );
        family(
            "lowbit_requests_total",
            "counter",
            "Generation requests by how they ended: completed, stopped (by the client), cancelled \
             (client gone), timeout, refused_busy, error (with its code).",
            &samples,
        );
        let value = |v: u64| vec![(String::new(), v as f64)];
        family(
            "lowbit_prompt_tokens_total",
            "counter",
            "Prompt tokens of the requests accepted.",
            &value(self.prompt_tokens.load(Ordering::Relaxed)),
        );
        family(
            "lowbit_completion_tokens_total",
            "counter",
            "Tokens generated and delivered to clients.",
            &value(self.completion_tokens.load(Ordering::Relaxed)),
        );
        let stats = engine.performance_stats();
        let gauges: [(&str, &str, f64); 7] = [
            (
                "lowbit_queue_length",
                "Requests waiting for a place in the running batch.",
                engine.queued_requests() as f64,
            ),
            (
                "lowbit_active_requests",
                "Requests running or waiting in the engine.",
                engine.active_requests() as f64,
            ),
            (
                "lowbit_batch_size",
                "The adaptive batch size now (requests decoded per scheduler step).",
                engine.batch_size() as f64,
            ),
            (
                "lowbit_kv_cache_bytes",
                "Bytes of KV cache held by the running requests.",
                stats.kv_cache_bytes as f64,
            ),
            (
                "lowbit_weight_bytes",
                "Bytes of model weights.",
                stats.weight_bytes as f64,
            ),
            (
                "lowbit_max_concurrent_requests",
                "The configured limit of requests running or waiting.",
                engine.config().max_concurrent_requests as f64,
            ),
            (
                "lowbit_ready",
                "1 while the server takes new requests, 0 while loading or draining.",
                if ready { 1.0 } else { 0.0 },
            ),
        ];
        for (name, help, v) in gauges {
            family(name, "gauge", help, &[(String::new(), v)]);
        }
        lock(&self.ttft).write(
            &mut out,
            "lowbit_time_to_first_token_seconds",
            "Time from a request's acceptance to its first generated token.",
        );
        lock(&self.token_latency).write(
            &mut out,
            "lowbit_token_latency_seconds",
            "Time between two consecutive tokens of one request, as its client sees it.",
        );
        out
    }
}

/// The events of one accepted request; records its timings and, once, its outcome. Dropping
/// it before the end counts the request as cancelled and cancels it in the engine.
pub(crate) struct MeteredStream {
    events: TokenStream,
    metrics: Arc<Metrics>,
    started: Instant,
    last_token: Option<Instant>,
    /// Generated tokens delivered so far.
    tokens_seen: u64,
    ended: bool,
}

impl MeteredStream {
    /// A handle that stops the request (its outcome is then `stopped`).
    pub fn cancel_handle(&self) -> crate::streaming::CancelHandle {
        self.events.cancel_handle()
    }

    fn end(&mut self, outcome: Outcome, completion_tokens: u64) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.metrics
            .completion_tokens
            .fetch_add(completion_tokens, Ordering::Relaxed);
        self.metrics.count(outcome);
        self.metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn observe(&mut self, ev: &TokenEvent) {
        match ev {
            TokenEvent::Token {
                token_id: Some(_), ..
            } => {
                let now = Instant::now();
                match self.last_token {
                    None => lock(&self.metrics.ttft)
                        .observe(now.duration_since(self.started).as_secs_f64()),
                    Some(t) => lock(&self.metrics.token_latency)
                        .observe(now.duration_since(t).as_secs_f64()),
                }
                self.last_token = Some(now);
                self.tokens_seen += 1;
            }
            TokenEvent::Token { .. } => {}
            TokenEvent::Done(c) => {
                let outcome = match c.finish_reason {
                    FinishReason::Cancelled => Outcome::Stopped,
                    FinishReason::Stop | FinishReason::Length => Outcome::Completed,
                };
                self.end(outcome, c.usage.completion_tokens as u64);
            }
            TokenEvent::Error(e) => {
                let outcome = if e.is_cancelled() {
                    Outcome::Stopped
                } else {
                    Outcome::of_error(e)
                };
                self.end(outcome, self.tokens_seen);
            }
        }
    }
}

impl Stream for MeteredStream {
    type Item = TokenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        let polled = Pin::new(&mut self.events).poll_next(cx);
        match &polled {
            Poll::Ready(Some(ev)) => self.observe(ev),
            // The engine ended the stream without a last event: it shut down.
            Poll::Ready(None) => {
                let seen = self.tokens_seen;
                self.end(Outcome::Error(InferenceError::ShutDown.code()), seen);
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        let seen = self.tokens_seen;
        self.end(Outcome::Cancelled, seen);
    }
}

/// `GET /metrics`: the Prometheus text exposition format.
pub(crate) async fn exposition(State(st): State<super::AppState>) -> Response {
    let text = st.metrics.render(&st.engine, !st.lifecycle.is_draining());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A label value with `\`, `"` and newlines escaped (the codes are plain, but stay safe).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A poisoned lock still holds valid counts (every update is one step).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_inf_bucket() {
        let mut h = Histogram::new(&TOKEN_BUCKETS);
        for v in [0.001, 0.03, 0.03, 10.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.02\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 10.06"), "{out}");
    }

    #[test]
    fn error_outcomes_carry_their_code() {
        assert_eq!(
            Outcome::of_error(&InferenceError::Busy {
                in_flight: 3,
                limit: 3
            }),
            Outcome::RefusedBusy
        );
        assert_eq!(
            Outcome::Error("CONTEXT_OVERFLOW").labels(),
            "outcome=\"error\",code=\"CONTEXT_OVERFLOW\""
        );
    }
}
