//! RMSNorm.

use crate::kernels::{self, Isa};
use rayon::prelude::*;

/// `out = x / rms(x) * weight` for each of the rows of `dim` in `x`.
pub(crate) fn rms_norm(isa: Isa, x: &[f32], weight: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .for_each(|(o, xr)| {
            let ms = kernels::dot(isa, xr, xr) / dim as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for ((oi, xi), wi) in o.iter_mut().zip(xr).zip(weight) {
                *oi = xi * inv * wi;
            }
        });
}
