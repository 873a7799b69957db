//! RMSNorm and LayerNorm.

use crate::kernels::{self, Isa};
use crate::pool::{SharedMut, SpinPool};
use lowbit_core::ops::NormKind;

/// What a norm applies to each row: the kind, per-column weights and optional biases.
pub(crate) struct NormParams<'a> {
    pub kind: NormKind,
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub dim: usize,
    pub eps: f32,
}

/// `out = (x − mean) / sqrt(var + eps) · weight (+ bias)` for each row of `dim` in `x`, with
/// `mean = 0` and `var = mean(x²)` for RMSNorm.
pub(crate) fn norm(pool: &SpinPool, isa: Isa, x: &[f32], a: &NormParams<'_>, out: &mut [f32]) {
    let (kind, dim, eps) = (a.kind, a.dim, a.eps);
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
