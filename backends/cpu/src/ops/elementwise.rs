//! Elementwise and row-wise operations: activations, GLU, add, softmax, argmax, im2col.

use lowbit_core::ops::{erf, Activation, Im2col};

/// One activation in f32 (exact GELU through the f64 `erf`, which no LLaMA-path op uses).
#[inline]
pub(crate) fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + erf(f64::from(x) / std::f64::consts::SQRT_2) as f32),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/π)
            0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

/// `out = act(x)`.
pub(crate) fn activation(act: Activation, x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = activate(act, *v);
    }
}

/// `out = act(gate) * up`.
pub(crate) fn glu(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    if act == Activation::Silu {
        // The SwiGLU of every LLaMA layer: a loop the compiler can keep tight.
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
        return;
    }
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = activate(act, *g) * u;
    }
}

/// `dst += src`.
pub(crate) fn add(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `x *= factor` in place.
pub(crate) fn scale(x: &mut [f32], factor: f32) {
    for v in x {
        *v *= factor;
    }
}

/// Softmax of one row in place, the max subtracted so any range stays finite.
pub(crate) fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// First index of the largest value; NaN never wins; 0 when nothing does (the rule of
/// `lowbit_core::generate::argmax`).
pub(crate) fn argmax(x: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// The convolution columns of `x` (see [`Im2col`]) into `out`.
pub(crate) fn im2col(s: &Im2col, x: &[f32], out: &mut [f32]) {
    let (oh, ow) = s.out_grid();
    let (pad_h, row_len) = (s.pad_h(), s.row_len());
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * row_len..][..row_len];
            let mut i = 0;
            for c in 0..s.channels {
                for dy in 0..s.kernel_h {
                    let y = (oy * s.stride + dy)
                        .checked_sub(pad_h)
                        .filter(|&y| y < s.height);
                    for dx in 0..s.kernel_w {
                        let xx = (ox * s.stride + dx)
                            .checked_sub(s.pad)
                            .filter(|&v| v < s.width);
                        row[i] = match (y, xx) {
                            (Some(y), Some(xx)) => x[(c * s.height + y) * s.width + xx],
                            _ => 0.0,
                        };
                        i += 1;
                    }
                }
            }
        }
    }
}
