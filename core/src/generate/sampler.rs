//! Token sampling: greedy, temperature, top-k, top-p, seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters. `temperature <= 0` means greedy (argmax).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    /// RNG seed, for reproducible sampling.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.9,
            seed: 0,
        }
    }
}

/// A seeded sampler.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<(u32, f32)>,
    /// Weights of the whole vocabulary (draws without top-k and top-p).
    weights: Vec<f32>,
}

/// Index of the largest value (the first one on ties, like llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler with its RNG seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            rng: StdRng::seed_from_u64(params.seed),
            candidates: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// Whether this sampler always takes the most likely token ([`argmax`]), so selection can
    /// run on the device ([`crate::TextModel::decode_greedy`]).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0 || self.params.top_k == 1
    }

    /// Picks the next token from one row of logits: the `top_k` largest (ties: the lower id
    /// first; NaN never a candidate), their softmax at `temperature`, the smallest prefix of
    /// them whose probability reaches `top_p` (probabilities of the whole vocabulary when
    /// `top_k` is 0), and a draw over that prefix in descending order. With neither top-k nor
    /// top-p, the draw runs over the vocabulary in id order (the same distribution, without
    /// sorting it). The top-k pass keeps a short sorted list in one scan of the logits, and the
    /// nucleus of the whole vocabulary sorts only a head long enough to hold it, so a sample
    /// costs about one pass over the vocabulary (`cargo bench -p lowbit-core --bench sampler`).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if self.is_greedy() {
            return argmax(logits);
        }
        let n = logits.len();
        let c = &mut self.candidates;
        let top_k = p.top_k > 0 && p.top_k < n;
        let max = if top_k {
            // The largest candidate is the largest logit.
            top_k_sorted(logits, p.top_k, c);
            c.first().map_or(f32::NAN, |x| x.1)
        } else {
            // f32::max skips NaN.
            logits.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        };
        if !max.is_finite() {
            return argmax(logits);
        }
        let weight = |v: f32| ((v - max) / p.temperature).exp();
        if top_k {
            let sum: f64 = c.iter().map(|x| weight(x.1) as f64).sum();
            let keep = if p.top_p < 1.0 {
                nucleus(c, &weight, sum, p.top_p).unwrap_or(c.len())
            } else {
                c.len()
            };
            c.truncate(keep);
        } else if p.top_p < 1.0 {
            let total: f64 = logits
                .iter()
                .filter(|v| !v.is_nan())
                .map(|&v| weight(v) as f64)
                .sum();
            // Heads of 64, 512, … values until one holds the nucleus.
            let mut m = 64.min(n);
            loop {
                top_k_sorted(logits, m, c);
                match nucleus(c, &weight, total, p.top_p) {
                    Some(keep) => {
                        c.truncate(keep);
                        break;
                    }
                    None if m >= n => break,
                    None => m = (m * 8).min(n),
                }
            }
        } else {
            // Each weight once (an exp per token is most of this pass), then the draw.
            let ws = &mut self.weights;
            ws.clear();
            ws.extend(logits.iter().map(|&v| weight(v)));
            let sum: f64 = ws.iter().filter(|w| !w.is_nan()).map(|&w| w as f64).sum();
            let mut r = self.rng.gen::<f64>() * sum;
            let mut last = 0;
            for (i, &w) in ws.iter().enumerate() {
                if w.is_nan() {
                    continue;
                }
                last = i;
                r -= w as f64;
                if r <= 0.0 {
                    return i as u32;
                }
            }
            return last as u32;
        }
        let sum: f64 = c.iter().map(|x| weight(x.1) as f64).sum();
        let mut r = self.rng.gen::<f64>() * sum;
        for x in c.iter() {
            r -= weight(x.1) as f64;
            if r <= 0.0 {
                return x.0;
            }
        }
        c[c.len() - 1].0
    }
}

/// Candidates before `b` in sampling order: larger logits first, the lower id on ties.
fn before(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` (≤ the non-NaN count) largest logits as (id, logit), in sampling order.
fn top_k_sorted(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    if k <= 256 {
        // One scan keeping a sorted list: once it holds k values, a chunk of logits is looked
        // at one by one only if one of them beats the k-th (rare after the first few
        // hundred), so the scan is about one vector comparison per chunk.
        const CHUNK: usize = 16;
        let mut kth = f32::NEG_INFINITY;
        let mut full = false;
        for (ci, chunk) in logits.chunks(CHUNK).enumerate() {
            if full && !chunk.iter().fold(false, |any, &v| any | (v > kth)) {
                continue;
            }
            for (j, &v) in chunk.iter().enumerate() {
                let skip = v.is_nan() || (full && v <= kth);
                if skip {
                    continue;
                }
                // Earlier ids with the same value stay first.
                let at = out.partition_point(|x| x.1 >= v);
                out.insert(at, ((ci * CHUNK + j) as u32, v));
                out.truncate(k);
                if out.len() == k {
                    full = true;
                    kth = out[k - 1].1;
                }
            }
        }
        return;
    }
    out.extend(
        logits
            .iter()
            .enumerate()
            .filter(|x| !x.1.is_nan())
            .map(|(i, &v)| (i as u32, v)),
    );
    if k < out.len() {
        out.select_nth_unstable_by(k - 1, before);
        out.truncate(k);
    }
    out.sort_unstable_by(before);
}

/// Candidates (in sampling order) kept by top-p: the shortest prefix whose weights reach
/// `top_p` of `total`; `None` when all of `c` does not.
fn nucleus(c: &[(u32, f32)], weight: &dyn Fn(f32) -> f32, total: f64, top_p: f32) -> Option<usize> {
    let mut acc = 0.0f64;
    for (i, x) in c.iter().enumerate() {
        acc += weight(x.1) as f64 / total;
        if acc >= top_p as f64 {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 1,
        });
        assert_eq!(s.sample(&logits), argmax(&logits));
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        };
        let (mut a, mut b) = (Sampler::new(p), Sampler::new(p));
        let xa: Vec<u32> = (0..50).map(|_| a.sample(&logits)).collect();
        let xb: Vec<u32> = (0..50).map(|_| b.sample(&logits)).collect();
        assert_eq!(xa, xb);
        // Sampling at temperature 1 over 100 tokens must not always return the argmax.
        assert!(xa.iter().any(|&t| t != argmax(&logits)));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token has ~all the mass: with top_p 0.5 only it can be drawn.
        let mut logits = vec![0.0f32; 10];
        logits[3] = 20.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 3,
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 3);
        }
    }

    /// The definition `Sampler::sample` implements, the slow way: every candidate sorted.
    fn reference(logits: &[f32], p: SamplingParams, u: f64) -> u32 {
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|x| !x.1.is_nan())
            .map(|(i, &v)| (i as u32, v))
            .collect();
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        let w = |v: f32| ((v - max) / p.temperature).exp() as f64;
        // Without top-k and top-p the draw runs in id order.
        if p.top_k > 0 || p.top_p < 1.0 {
            c.sort_by(before);
            if p.top_k > 0 {
                c.truncate(p.top_k);
            }
            let sum: f64 = c.iter().map(|x| w(x.1)).sum();
            if p.top_p < 1.0 {
                let mut acc = 0.0;
                if let Some(i) = c.iter().position(|x| {
                    acc += w(x.1) / sum;
                    acc >= p.top_p as f64
                }) {
                    c.truncate(i + 1);
                }
            }
        }
        let sum: f64 = c.iter().map(|x| w(x.1)).sum();
        let mut r = u * sum;
        for x in &c {
            r -= w(x.1);
            if r <= 0.0 {
                return x.0;
            }
        }
        c[c.len() - 1].0
    }

    #[test]
    fn sample_equals_the_sorted_definition() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in [7usize, 300, 5000] {
            for (top_k, top_p, temperature) in [
                (40, 0.9, 0.7),
                (3, 1.0, 1.0),
                (300, 0.95, 1.3),
                (1000, 0.5, 0.8),
                (0, 0.9, 0.7),
                (0, 0.999, 2.0),
                (0, 1.0, 1.0),
            ] {
                // Logits on a coarse grid (many ties), a NaN and a -inf among them.
                let mut logits: Vec<f32> = (0..n)
                    .map(|_| (rng.gen_range(-40..40) as f32) * 0.25)
                    .collect();
                logits[n / 2] = f32::NAN;
                logits[n / 3] = f32::NEG_INFINITY;
                let p = SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed: n as u64,
                };
                let mut s = Sampler::new(p);
                let mut draws = StdRng::seed_from_u64(n as u64);
                for _ in 0..200 {
                    let u = draws.gen::<f64>();
                    assert_eq!(
                        s.sample(&logits),
                        reference(&logits, p, u),
                        "n {n} top_k {top_k} top_p {top_p}"
                    );
                }
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with logits ln(3) and 0 at temperature 1: probabilities 0.75 / 0.25.
        let logits = [3f32.ln(), 0.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 11,
        });
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&logits) == 0).count();
        let frac = zeros as f64 / n as f64;
        // Binomial std for n = 20000 at p = 0.75 is 0.003; allow 5 sigma.
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
    }
}
