//! RMSNorm.

use crate::kernels::{self, Isa};
use crate::pool::{SharedMut, SpinPool};

/// `out = x / rms(x) * weight` for each of the rows of `dim` in `x`.
pub(crate) fn rms_norm(
    pool: &SpinPool,
    isa: Isa,
    x: &[f32],
    weight: &[f32],
    out: &mut [f32],
    dim: usize,
    eps: f32,
) {
    let norm_row = |o: &mut [f32], xr: &[f32]| {
        let ms = kernels::dot(isa, xr, xr) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((oi, xi), wi) in o.iter_mut().zip(xr).zip(weight) {
            *oi = xi * inv * wi;
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
