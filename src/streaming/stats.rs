//! Aggregate performance figures of a [`super::StreamingInference`] over all its requests.

use lowbit_core::generate::peak_rss_bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Instant;

/// Latency samples kept for percentiles (the most recent ones).
const MAX_SAMPLES: usize = 20_000;
/// Batch-size changes kept.
const MAX_HISTORY: usize = 1_000;

/// One change of the adaptive batch size.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BatchSizeChange {
    /// When, ms since the engine started.
    pub at_ms: f64,
    /// The new batch size (requests decoded per scheduler step).
    pub batch_size: usize,
    /// Why: `initial`, `latency_headroom`, `latency_over_target`, `memory_pressure`.
    pub reason: &'static str,
}

/// Measured figures over all requests so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerformanceStats {
    /// Requests finished (any reason).
    pub requests_completed: usize,
    /// Tokens generated over all requests.
    pub tokens_generated: usize,
    /// Mean time from submission to the first token, ms.
    pub time_to_first_token_ms: f64,
    /// Median time to first token, ms.
    pub time_to_first_token_p50_ms: f64,
    /// Aggregate generated tokens per second while requests were running.
    pub tokens_per_second: f64,
    /// Mean wall time between two tokens of one request, ms (includes the other requests'
    /// work in the same scheduler step: what a client sees).
    pub token_latency_mean_ms: f64,
    /// Median per-token latency, ms.
    pub token_latency_p50_ms: f64,
    /// 95th-percentile per-token latency, ms.
    pub token_latency_p95_ms: f64,
    /// Time the scheduler spent with requests running, ms.
    pub generation_time_ms: f64,
    /// Bytes of weights.
    pub weight_bytes: usize,
    /// Bytes of KV cache held now.
    pub kv_cache_bytes: usize,
    /// Most KV-cache bytes held at once.
    pub kv_cache_peak_bytes: usize,
    /// Peak resident set size of the process, bytes (0 where unknown).
    pub peak_rss_bytes: usize,
    /// The batch size now.
    pub batch_size: usize,
    /// Most requests decoded in one scheduler step so far.
    pub max_running_requests: usize,
    /// Most sequences decoded by one batched forward pass so far (continuous batching: every
    /// weight matrix read once for all of them).
    pub max_decode_batch: usize,
    /// Every change of the adaptive batch size (the most recent ones).
    pub batch_size_history: Vec<BatchSizeChange>,
    /// Speculative/prefetch hit rate; `None`: no speculative decoding runs yet.
    pub speculative_hit_rate: Option<f64>,
}

/// Running sums the scheduler updates.
pub(crate) struct StatsAccumulator {
    started: Instant,
    ttft: VecDeque<f64>,
    latencies: VecDeque<f64>,
    tokens: usize,
    completed: usize,
    busy_ms: f64,
    weight_bytes: usize,
    kv_bytes: usize,
    kv_peak: usize,
    batch_size: usize,
    max_running: usize,
    max_decode_batch: usize,
    history: VecDeque<BatchSizeChange>,
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl StatsAccumulator {
    pub(crate) fn new(weight_bytes: usize) -> Self {
        StatsAccumulator {
            started: Instant::now(),
            ttft: VecDeque::new(),
            latencies: VecDeque::new(),
            tokens: 0,
            completed: 0,
            busy_ms: 0.0,
            weight_bytes,
            kv_bytes: 0,
            kv_peak: 0,
            batch_size: 0,
            max_running: 0,
            max_decode_batch: 0,
            history: VecDeque::new(),
        }
    }

    pub(crate) fn first_token(&mut self, ttft_ms: f64) {
        push_capped(&mut self.ttft, ttft_ms, MAX_SAMPLES);
    }

    pub(crate) fn token(&mut self, latency_ms: Option<f64>) {
        self.tokens += 1;
        if let Some(l) = latency_ms {
            push_capped(&mut self.latencies, l, MAX_SAMPLES);
        }
    }

    pub(crate) fn completed(&mut self) {
        self.completed += 1;
    }

    pub(crate) fn step(&mut self, ms: f64, kv_bytes: usize, running: usize) {
        self.busy_ms += ms;
        self.max_running = self.max_running.max(running);
        self.kv_bytes = kv_bytes;
        self.kv_peak = self.kv_peak.max(kv_bytes);
    }

    pub(crate) fn decode_batch(&mut self, sequences: usize) {
        self.max_decode_batch = self.max_decode_batch.max(sequences);
    }

    pub(crate) fn set_batch_size(&mut self, batch_size: usize, reason: &'static str) {
        if batch_size == self.batch_size {
            return;
        }
        self.batch_size = batch_size;
        let at_ms = self.started.elapsed().as_secs_f64() * 1e3;
        push_capped(
            &mut self.history,
            BatchSizeChange {
                at_ms,
                batch_size,
                reason,
            },
            MAX_HISTORY,
        );
    }

    pub(crate) fn snapshot(&self) -> PerformanceStats {
        let lat: Vec<f64> = self.latencies.iter().copied().collect();
        let ttft: Vec<f64> = self.ttft.iter().copied().collect();
        let pct = lowbit_core::generate::percentile;
        PerformanceStats {
            requests_completed: self.completed,
            tokens_generated: self.tokens,
            time_to_first_token_ms: mean(&ttft),
            time_to_first_token_p50_ms: pct(&ttft, 50.0),
            tokens_per_second: self.tokens as f64 / (self.busy_ms / 1e3).max(1e-9),
            token_latency_mean_ms: mean(&lat),
            token_latency_p50_ms: pct(&lat, 50.0),
            token_latency_p95_ms: pct(&lat, 95.0),
            generation_time_ms: self.busy_ms,
            weight_bytes: self.weight_bytes,
            kv_cache_bytes: self.kv_bytes,
            kv_cache_peak_bytes: self.kv_peak,
            peak_rss_bytes: peak_rss_bytes(),
            batch_size: self.batch_size,
            max_decode_batch: self.max_decode_batch,
            max_running_requests: self.max_running,
            batch_size_history: self.history.iter().cloned().collect(),
            speculative_hit_rate: None,
        }
    }
}
