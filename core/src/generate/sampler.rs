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
        }
    }

    /// Whether this sampler always takes the most likely token ([`argmax`]), so selection can
    /// run on the device ([`crate::TextModel::decode_greedy`]).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0 || self.params.top_k == 1
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if self.is_greedy() {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &v)| (i as u32, v)));
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, desc);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(desc);
        let max = c[0].1;
        let mut sum = 0.0f64;
        for x in c.iter_mut() {
            x.1 = ((x.1 - max) / p.temperature).exp();
            sum += x.1 as f64;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0f64;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                acc += x.1 as f64 / sum;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            sum = c.iter().map(|x| x.1 as f64).sum();
        }
        let mut r = self.rng.gen::<f64>() * sum;
        for x in c.iter() {
            r -= x.1 as f64;
            if r <= 0.0 {
                return x.0;
            }
        }
        c[c.len() - 1].0
    }
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
