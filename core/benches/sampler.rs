//! Host-side cost of sampling one token (`Sampler::sample`) from a row of logits, the work a
//! non-greedy decode step adds after its logits are read back: `cargo bench -p lowbit-core
//! --bench sampler` prints µs per sample for SmolLM2's and Llama-3's vocabulary sizes, beside
//! the previous method (every candidate copied, `select_nth_unstable` for top-k, a full sort
//! without it), kept here only as the baseline.

use lowbit_core::generate::{Sampler, SamplingParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// `Sampler::sample` before commit cf44e47 (a full sort of the candidates), for the
/// side-by-side column.
fn previous(logits: &[f32], p: SamplingParams, rng: &mut StdRng, c: &mut Vec<(u32, f32)>) -> u32 {
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
    let mut r = rng.gen::<f64>() * sum;
    for x in c.iter() {
        r -= x.1 as f64;
        if r <= 0.0 {
            return x.0;
        }
    }
    c[c.len() - 1].0
}

/// Median µs per call of `f` over `reps` calls.
fn time(reps: usize, mut f: impl FnMut() -> u32) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(f());
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    println!("| vocabulary | temperature | top_k | top_p | µs / sample | previous µs | speed-up |");
    println!("|---|---|---|---|---|---|---|");
    for vocab in [49_152usize, 128_256] {
        // Logits of a trained model's spread: N(0, 3)-ish with a few large ones.
        let mut logits: Vec<f32> = (0..vocab)
            .map(|_| (0..4).map(|_| rng.gen_range(-3.0f32..3.0)).sum::<f32>())
            .collect();
        for i in 0..20 {
            logits[(i * 7919) % vocab] += 12.0;
        }
        for (temperature, top_k, top_p) in [(0.7, 40, 0.9), (0.7, 0, 0.9), (1.0, 0, 1.0)] {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                seed: 3,
            };
            let mut s = Sampler::new(p);
            let now = time(41, || s.sample(&logits));
            let (mut r, mut c) = (StdRng::seed_from_u64(3), Vec::new());
            let before = time(41, || previous(&logits, p, &mut r, &mut c));
            println!(
                "| {vocab} | {temperature} | {top_k} | {top_p} | {now:.1} | {before:.1} | {:.1}× |",
                before / now
            );
        }
    }
}
