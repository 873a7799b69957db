//! Matrix multiplication on stored weights: splits output rows across the worker threads and
//! hands each chunk to the kernels.

use crate::kernels::{self, DenseRows, Isa, Q8Activations};
use crate::pool::{SharedMut, SpinPool};
use lowbit_core::backend::WeightMatrix;
use lowbit_core::quant::QuantizedMatrix;

/// Output rows per task: about four tasks per thread balances load without tiny tasks.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    rows.div_ceil(threads.max(1) * 4).max(1)
}

/// A weight with its activations prepared for the kernels.
enum Operands<'a> {
    Quantized(&'a QuantizedMatrix, Q8Activations),
    /// Dequantized row by row, against f32 activations.
    Exact(&'a QuantizedMatrix),
    Dense(DenseRows<'a>),
}

/// `out[n, rows] = x[n, cols] · Wᵀ`; slices are already bounds-checked by the caller. Runs on
/// `pool`.
pub(crate) fn matmul(
    pool: &SpinPool,
    isa: Isa,
    exact: bool,
    w: &WeightMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let (rows, cols) = w.shape();
    // A matrix stored in a rotated basis multiplies rotated activations (`W x = (W Rᵀ)(R x)`).
    let rotated;
    let x = match w {
        WeightMatrix::Quantized(QuantizedMatrix {
            rotation: Some(rot),
            ..
        }) => {
            let mut r = x[..n * cols].to_vec();
            rot.rotate(&rot.signs(cols), &mut r);
            rotated = r;
            &rotated[..]
        }
        _ => x,
    };
    let ops = match w {
        WeightMatrix::Quantized(m) if exact => Operands::Exact(m),
        WeightMatrix::Quantized(m) => {
            let act = kernels::quantize_activations(isa, x, n, cols, m.spec, m.grid.is_some());
            Operands::Quantized(m, act)
        }
        WeightMatrix::F32 { data, .. } => Operands::Dense(DenseRows::F32(data)),
        WeightMatrix::F16 { data, .. } => Operands::Dense(DenseRows::F16(data)),
    };
    let chunk = rows_per_task(rows, pool.threads());
    // Each task fills `chunk` weight rows × `n` activations, row-major by weight row, so every
    // weight row is read (and unpacked) once for all activation rows.
    let by_row = |dst: &mut [f32]| {
        let total = dst.len();
        let shared = SharedMut::new(dst);
        pool.run(total.div_ceil(chunk * n), &|t| {
            let start = t * chunk * n;
            // SAFETY: task `t` owns elements `start .. start + chunk * n` (clipped to the end)
            // of `dst`, which outlives `run`.
            let d = unsafe { shared.slice(start, (chunk * n).min(total - start)) };
            match &ops {
                Operands::Quantized(m, act) => {
                    kernels::quantized_rows(isa, m, t * chunk, act, n, d)
                }
                Operands::Dense(dw) => kernels::dense_rows(isa, *dw, cols, t * chunk, x, n, d),
                Operands::Exact(m) => {
                    let mut row = vec![0.0f32; cols];
                    for (i, o) in d.chunks_exact_mut(n).enumerate() {
                        kernels::scalar::dequantize_row(m, t * chunk + i, &mut row);
                        for (j, oj) in o.iter_mut().enumerate() {
                            *oj = kernels::dot(isa, &row, &x[j * cols..(j + 1) * cols]);
                        }
                    }
                }
            }
        })
    };
    if n == 1 {
        by_row(&mut out[..rows]);
    } else {
        let mut tmp = vec![0.0f32; rows * n];
        by_row(&mut tmp);
        for (r, vals) in tmp.chunks_exact(n).enumerate() {
            for (j, v) in vals.iter().enumerate() {
                out[j * rows + r] = *v;
            }
        }
    }
}
