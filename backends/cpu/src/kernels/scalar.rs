//! Portable kernels: the reference every SIMD path is tested against, and the fallback.

use super::{code_zero, dequant_bias, kernel_bias, offset_at, Q8Activations, Q8Row, BLOCK};
use half::f16;
use lowbit_core::quant::QuantizedMatrix;

/// Code `c` of a row's LSB-first bit stream of `bits`-bit values (3-bit codes may straddle).
#[inline]
pub(crate) fn code_at(words: &[u32], bits: usize, c: usize) -> u32 {
    let bit = c * bits;
    let (w, s) = (bit / 32, bit % 32);
    let mut v = words[w] >> s;
    if s + bits > 32 {
        v |= words[w + 1] << (32 - s);
    }
    v & ((1u32 << bits) - 1)
}

/// Dequantizes row `r` of `m` into `out` (`m.cols` values).
pub(crate) fn dequantize_row(m: &QuantizedMatrix, r: usize, out: &mut [f32]) {
    let bits = m.spec.bits as usize;
    let rw = m.row_words();
    let gpr = m.groups_per_row();
    let words = &m.data[r * rw..(r + 1) * rw];
    for (c, o) in out[..m.cols].iter_mut().enumerate() {
        let g = c / m.spec.group_size;
        let scale = m.scales[r * gpr + g].to_f32();
        let q = code_at(words, bits, c) as u8;
        *o = match &m.grid {
            Some(grid) => scale * grid.value(q) + offset_at(m, r * gpr + g),
            None => {
                let bias =
                    dequant_bias(m.spec.scheme, m.spec.bits, scale, offset_at(m, r * gpr + g));
                scale * f32::from(q) + bias
            }
        };
    }
}

/// See [`super::quantized_rows`].
pub(crate) fn quantized_rows(
    m: &QuantizedMatrix,
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    if let Some(grid) = &m.grid {
        return grid_rows(m, grid.levels(), first_row, act, n, out);
    }
    for (i, o) in out.chunks_exact_mut(n).enumerate() {
        for (j, oj) in o.iter_mut().enumerate() {
            *oj = row_dot(m, first_row + i, act.row(j));
        }
    }
}

/// [`quantized_rows`] for a matrix on a learned grid: each weight row is decoded once into its
/// int8 levels (table lookup), then dotted with every activation row as int8 × int8 blocks
/// (a loop LLVM vectorises). Activations must be in natural order (scalar quantization).
fn grid_rows(
    m: &QuantizedMatrix,
    levels: &[i8],
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    let bits = m.spec.bits as usize;
    let rw = m.row_words();
    let gpr = m.groups_per_row();
    let bpg = m.spec.group_size / BLOCK;
    let nb = m.cols / BLOCK;
    let mut row = vec![0i8; m.cols];
    for (i, o) in out.chunks_exact_mut(n).enumerate() {
        let r = first_row + i;
        let words = &m.data[r * rw..(r + 1) * rw];
        for (c, v) in row.iter_mut().enumerate() {
            *v = levels[code_at(words, bits, c) as usize];
        }
        for (j, oj) in o.iter_mut().enumerate() {
            let x = act.row(j);
            let mut total = 0.0f32;
            for g in 0..gpr {
                let scale = m.scales[r * gpr + g].to_f32();
                let mut acc = 0.0f32;
                for b in g * bpg..((g + 1) * bpg).min(nb) {
                    let span = b * BLOCK..(b + 1) * BLOCK;
                    let isum: i32 = row[span.clone()]
                        .iter()
                        .zip(&x.qs[span])
                        .map(|(&w, &a)| i32::from(w) * i32::from(a))
                        .sum();
                    acc += x.d[b] * isum as f32;
                }
                total += scale * acc;
                if !x.gsums.is_empty() {
                    total += offset_at(m, r * gpr + g) * x.gsums[g];
                }
            }
            *oj = total;
        }
    }
}

fn row_dot(m: &QuantizedMatrix, r: usize, x: Q8Row<'_>) -> f32 {
    let bits = m.spec.bits as usize;
    let rw = m.row_words();
    let gpr = m.groups_per_row();
    let bpg = m.spec.group_size / BLOCK;
    let nb = m.cols / BLOCK;
    let words = &m.data[r * rw..(r + 1) * rw];
    // Codes are multiplied as `code - zero` like every SIMD path (see `code_zero`), so all
    // instruction sets round the same way.
    let zero = code_zero(m.spec.scheme, m.spec.bits);
    let mut total = 0.0f32;
    for g in 0..gpr {
        let scale = m.scales[r * gpr + g].to_f32();
        let mut acc = 0.0f32;
        for b in g * bpg..((g + 1) * bpg).min(nb) {
            let isum: i32 = (0..BLOCK)
                .map(|k| {
                    let q = code_at(words, bits, b * BLOCK + k) as i32 - zero;
                    q * x.qs[b * BLOCK + k] as i32
                })
                .sum();
            acc += x.d[b] * isum as f32;
        }
        total += scale * acc;
        if !x.gsums.is_empty() {
            let bias = kernel_bias(m.spec.scheme, m.spec.bits, scale, offset_at(m, r * gpr + g));
            total += bias * x.gsums[g];
        }
    }
    total
}

/// `Σ a·b`.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `Σ a·b` with f16 `a`.
pub(crate) fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x.to_f32() * y).sum()
}

/// `y += alpha * x`.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}
