//! Rotary position embedding.

use lowbit_core::ops::RopeStyle;

/// Rotates `x` (`n_tokens × n_heads × head_dim`) in place; token `i` sits at `pos0 + i`. Pair `i`
/// of a head rotates by `pos · theta^(-2i/head_dim)`.
pub(crate) fn rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
    style: RopeStyle,
) {
    let half = head_dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| (theta as f64).powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    let mut cs = vec![(0.0f32, 0.0f32); half];
    for (t, row) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
        let pos = (pos0 + t) as f64;
        for (c, f) in cs.iter_mut().zip(&freqs) {
            // f64 angles: positions in the thousands times f32 frequencies lose digits.
            let (s, co) = (pos * f).sin_cos();
            *c = (co as f32, s as f32);
        }
        for head in row.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match style {
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}
