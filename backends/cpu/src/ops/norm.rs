//! RMSNorm and LayerNorm.

use crate::kernels::{self, Isa};
use crate::pool::{SharedMut, SpinPool};
use lowbit_core::ops::NormKind;

/// Per-column weights and optional biases of a norm.
pub(crate) struct Affine<'a> {
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

/// `out = (x − mean) / sqrt(var + eps) · weight (+ bias)` for each row of `dim` in `x`, with
/// `mean = 0` and `var = mean(x²)` for RMSNorm.
pub(crate) fn norm(
    pool: &SpinPool,
    isa: Isa,
    kind: NormKind,
    x: &[f32],
    a: &Affine<'_>,
    out: &mut [f32],
    dim: usize,
    eps: f32,
) {
    let norm_row = |o: &mut [f32], xr: &[f32]| {
        let mean = match kind {
            NormKind::Rms => 0.0,
            NormKind::Layer => xr.iter().sum::<f32>() / dim as f32,
        };
        let var = match kind {
            NormKind::Rms => kernels::dot(isa, xr, xr) / dim as f32,
            NormKind::Layer => xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32,
        };
        let inv = 1.0 / (var + eps).sqrt();
        for ((oi, xi), wi) in o.iter_mut().zip(xr).zip(a.weight) {
            *oi = (xi - mean) * inv * wi;
        }
        if let Some(b) = a.bias {
            for (oi, bi) in o.iter_mut().zip(b) {
                *oi += bi;
            }
        }
    };
    let rows = x.len() / dim;
    if rows <= 1 {
        // One row is far cheaper than handing it to another thread.
        out.chunks_mut(dim)
            .zip(x.chunks(dim))
            .for_each(|(o, xr)| norm_row(o, xr));
        return;
    }
    let shared = SharedMut::new(out);
    pool.run(rows, &|r| {
        // SAFETY: task `r` owns row `r` of `out`, which outlives `run`.
        let o = unsafe { shared.slice(r * dim, dim) };
        norm_row(o, &x[r * dim..(r + 1) * dim]);
    });
}
