//! Timing and memory statistics of one generation.

use serde::Serialize;

/// Measured figures of one generation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerationStats {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// From the start of prefill to the first generated token, ms.
    pub time_to_first_token_ms: f64,
    /// Prompt tokens per second during prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first one (decode speed).
    pub decode_tokens_per_s: f64,
    /// Mean per-token latency of decode steps, ms.
    pub token_latency_mean_ms: f64,
    /// Median per-token latency, ms.
    pub token_latency_p50_ms: f64,
    /// 95th-percentile per-token latency, ms.
    pub token_latency_p95_ms: f64,
    /// Total generation time, ms.
    pub total_ms: f64,
    /// Bytes of weights on the backend.
    pub weight_bytes: usize,
    /// Bytes of the KV cache.
    pub kv_cache_bytes: usize,
    /// Peak resident set size of the process, bytes (0 where unknown).
    pub peak_rss_bytes: usize,
}

/// Percentile `p` (0..=100) of `v` by nearest rank; 0 for an empty slice.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Peak resident set size (`VmHWM`) of this process, where the OS reports it.
pub fn peak_rss_bytes() -> usize {
    #[cfg(target_os = "linux")]
    {
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            for line in s.lines() {
                if let Some(rest) = line.strip_prefix("VmHWM:") {
                    let kb: usize = rest
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    return kb * 1024;
                }
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
