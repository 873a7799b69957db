//! Straightforward scalar references for the kernel tests (f64 accumulation).

// Shared by several test crates, each using a part.
#![allow(dead_code)]

use crate::calls::AttentionParams;
use lowbit_core::ops::RopeStyle;

/// `out[t, r] = Σ_c w[r, c] x[t, c]` and, per output, `Σ_c |w x|` (the scale of its rounding
/// error).
pub fn matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0.0; n * rows];
    let mut mag = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let (mut s, mut m) = (0.0f64, 0.0f64);
            for c in 0..cols {
                let p = f64::from(w[r * cols + c]) * f64::from(x[t * cols + c]);
                s += p;
                m += p.abs();
            }
            out[t * rows + r] = s as f32;
            mag[t * rows + r] = m as f32;
        }
    }
    (out, mag)
}

/// `x` through the wide matvec's activation quantization: per block of 32, `d = max|x| / 127`,
/// codes `round_half_even(x · (1 / d))`, values `d · code`.
pub fn q8_blocks(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let m = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = m / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            b.iter().map(move |v| d * (v * inv).round_ties_even())
        })
        .collect()
}

pub fn rms_norm(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let ss: f64 = row.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
            let r = 1.0 / (ss / dim as f64 + f64::from(eps)).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, g)| (f64::from(*v) * r * f64::from(*g)) as f32)
        })
        .collect()
}

pub fn rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
    style: RopeStyle,
) {
    let half = head_dim / 2;
    for (t, row) in x.chunks_mut(n_heads * head_dim).enumerate() {
        for head in row.chunks_mut(head_dim) {
            for i in 0..half {
                let f = f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64);
                let (s, c) = (((pos0 + t) as f64) * f).sin_cos();
                let (a, b) = match style {
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (f64::from(head[a]), f64::from(head[b]));
                head[a] = (x0 * c - x1 * s) as f32;
                head[b] = (x0 * s + x1 * c) as f32;
            }
        }
    }
}

pub fn attention(q: &[f32], k: &[f32], v: &[f32], p: &AttentionParams) -> Vec<f32> {
    let hd = p.head_dim;
    let kv_row = p.n_kv_heads * hd;
    let group = p.n_heads / p.n_kv_heads;
    let mut out = vec![0.0; p.n_tokens * p.n_heads * hd];
    for i in 0..p.n_tokens {
        for h in 0..p.n_heads {
            let qo = (i * p.n_heads + h) * hd;
            let ko = (h / group) * hd;
            let len = p.pos0 + i + 1;
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    (0..hd)
                        .map(|d| f64::from(q[qo + d]) * f64::from(k[t * kv_row + ko + d]))
                        .sum::<f64>()
                        * f64::from(p.scale)
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let o: f64 = (0..len)
                    .map(|t| e[t] * f64::from(v[t * kv_row + ko + d]))
                    .sum();
                out[qo + d] = (o / sum) as f32;
            }
        }
    }
    out
}

pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(g, u)| {
            let g = f64::from(*g);
            (g / (1.0 + (-g).exp()) * f64::from(*u)) as f32
        })
        .collect()
}
