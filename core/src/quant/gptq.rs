//! Error-feedback rounding (GPTQ / OBQ): quantize a row column by column and push each
//! column's rounding error onto the columns not yet quantized, weighted by the inverse of the
//! layer's input Hessian `H = E[x xᵀ]`, so the *output* error `‖(W − Ŵ) x‖` over calibration
//! inputs is what gets minimised rather than the weight error.
//!
//! Rows are independent given `H`: each is processed alone (in parallel), with `U`, the upper
//! Cholesky factor of `H⁻¹`, shared. A group's scale (and offset) is chosen when the sweep
//! reaches the group's first column, from the error-updated values, with the
//! importance-weighted search of [`super::quantize_group_weighted`] (importance = `diag H`).

use super::rotation::{rotate_f64, Rotation};
use super::{
    pack_codes, quantize_group_grid, quantize_group_weighted, Grid, Nearest, QuantSpec,
    QuantizedMatrix, Scheme,
};
use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

/// Second moments of a linear layer's inputs over calibration rows: `Σ x xᵀ` (f64, row-major
/// `dim × dim`) and how many rows were added.
#[derive(Clone, Debug)]
pub struct Hessian {
    /// Input dimension.
    pub dim: usize,
    /// `Σ x xᵀ`, `dim × dim`.
    pub xtx: Vec<f64>,
    /// Rows accumulated.
    pub rows: u64,
}

impl Hessian {
    /// An empty accumulator for inputs of `dim` values.
    pub fn new(dim: usize) -> Self {
        Hessian {
            dim,
            xtx: vec![0.0; dim * dim],
            rows: 0,
        }
    }

    /// Adds the rows of `x` (`n × dim`, row-major); extra values past the last whole row are
    /// ignored. The upper triangle is accumulated (in parallel over output rows) and mirrored
    /// by [`Hessian::mean`].
    pub fn add_rows(&mut self, x: &[f32]) {
        let d = self.dim;
        let n = x.len() / d;
        if n == 0 {
            return;
        }
        let xs = &x[..n * d];
        // f32 sums over one call's rows (they vectorise), added to the f64 totals.
        self.xtx.par_chunks_mut(d).enumerate().for_each_init(
            || vec![0f32; d],
            |acc, (i, out)| {
                let acc = &mut acc[i..];
                acc.iter_mut().for_each(|a| *a = 0.0);
                for row in xs.chunks_exact(d) {
                    let xi = row[i];
                    if xi == 0.0 {
                        continue;
                    }
                    for (a, &xj) in acc.iter_mut().zip(&row[i..]) {
                        *a += xi * xj;
                    }
                }
                for (o, &a) in out[i..].iter_mut().zip(acc.iter()) {
                    *o += f64::from(a);
                }
            },
        );
        self.rows += n as u64;
    }

    /// `E[x xᵀ]`: the full symmetric matrix, divided by the row count.
    pub fn mean(&self) -> Vec<f64> {
        let d = self.dim;
        let inv = 1.0 / self.rows.max(1) as f64;
        let mut h = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                let v = self.xtx[i * d + j] * inv;
                h[i * d + j] = v;
                h[j * d + i] = v;
            }
        }
        h
    }

    /// The mean square of each input column, `diag E[x xᵀ]` (llama.cpp's importance matrix).
    pub fn diag(&self) -> Vec<f32> {
        let inv = 1.0 / self.rows.max(1) as f64;
        (0..self.dim)
            .map(|i| (self.xtx[i * self.dim + i] * inv) as f32)
            .collect()
    }

    /// `E[(R x)(R x)ᵀ] = R E[x xᵀ] Rᵀ`: the Hessian seen by a matrix quantized in `rot`'s basis.
    pub fn rotated(&self, rot: &Rotation) -> Vec<f64> {
        let d = self.dim;
        let signs = rot.signs(d);
        let mut h = self.mean();
        // R H: rotate every column = rotate rows of Hᵀ = H (symmetric); then (R H) Rᵀ rotates rows.
        rotate_f64(rot, &signs, &mut h);
        transpose(&mut h, d);
        rotate_f64(rot, &signs, &mut h);
        h
    }
}

fn transpose(m: &mut [f64], d: usize) {
    for i in 0..d {
        for j in i + 1..d {
            m.swap(i * d + j, j * d + i);
        }
    }
}

/// Lower Cholesky factor of `a` (`d × d`, symmetric positive definite) in place; `false` when
/// a pivot is not positive.
fn cholesky(a: &mut [f64], d: usize) -> bool {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return false;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        let (head, tail) = a.split_at_mut((j + 1) * d);
        let rj = &head[j * d..j * d + j];
        tail.par_chunks_mut(d).for_each(|ri| {
            let s: f64 = ri[..j].iter().zip(rj).map(|(p, q)| p * q).sum();
            ri[j] = (ri[j] - s) / l;
        });
        for k in j + 1..d {
            a[j * d + k] = 0.0;
        }
    }
    true
}

/// `U` with `H⁻¹ = Uᵀ U` (upper triangular), from `H` (damped until it factors).
fn inverse_cholesky_upper(h: &[f64], d: usize, damp: f64) -> Result<Vec<f64>> {
    let mean_diag = (0..d).map(|i| h[i * d + i]).sum::<f64>() / d as f64;
    let mut lambda = damp * mean_diag.max(1e-12);
    for _ in 0..8 {
        let mut l = h.to_vec();
        for i in 0..d {
            l[i * d + i] += lambda;
        }
        if cholesky(&mut l, d) {
            // L⁻¹ by forward substitution, column by column (in parallel).
            let mut linv_t = vec![0.0; d * d]; // row c holds column c of L⁻¹
            linv_t.par_chunks_mut(d).enumerate().for_each(|(c, col)| {
                for i in c..d {
                    let mut s = if i == c { 1.0 } else { 0.0 };
                    for k in c..i {
                        s -= l[i * d + k] * col[k];
                    }
                    col[i] = s / l[i * d + i];
                }
            });
            // H⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) = Σ_k L⁻¹[k, i] L⁻¹[k, j] = col_i · col_j.
            let mut hinv = vec![0.0; d * d];
            hinv.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                let ci = &linv_t[i * d..(i + 1) * d];
                for (j, r) in row.iter_mut().enumerate() {
                    let cj = &linv_t[j * d..(j + 1) * d];
                    let k0 = i.max(j);
                    *r = ci[k0..].iter().zip(&cj[k0..]).map(|(a, b)| a * b).sum();
                }
            });
            if cholesky(&mut hinv, d) {
                transpose(&mut hinv, d); // lower → upper
                return Ok(hinv);
            }
        }
        lambda *= 10.0;
    }
    Err(Error::invalid_config(
        "error-feedback quantization: the calibration Hessian is not positive definite even \
         after damping",
    ))
}

/// The nearest code of `w` for group parameters `(scale, offset)`.
fn code_of(w: f32, scale: f32, offset: f32, spec: &QuantSpec, grid: Option<&Nearest>) -> u8 {
    if let Some(nn) = grid {
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        return nn.code((w - offset) * inv);
    }
    let max = spec.max_code() as f32;
    let q = match spec.scheme {
        Scheme::Symmetric => {
            if scale == 0.0 {
                spec.sym_zero() as f32
            } else {
                (w / scale).round() + spec.sym_zero() as f32
            }
        }
        Scheme::Asymmetric => {
            if scale == 0.0 {
                0.0
            } else {
                ((w - offset) / scale).round()
            }
        }
    };
    q.clamp(0.0, max) as u8
}

fn value_of(q: u8, scale: f32, offset: f32, spec: &QuantSpec, grid: Option<&Nearest>) -> f32 {
    if let Some(nn) = grid {
        return scale * nn.level(q) + offset;
    }
    match spec.scheme {
        Scheme::Symmetric => scale * (f32::from(q) - spec.sym_zero() as f32),
        Scheme::Asymmetric => scale * f32::from(q) + offset,
    }
}

/// Rows one error-feedback task sweeps together (see [`quantize_gptq`]).
const ROW_BLOCK: usize = 8;

/// Quantizes a row-major `rows × cols` matrix with error feedback against the input Hessian
/// `hessian` (`cols × cols`, `E[x xᵀ]` in the basis the matrix is quantized in: rotate it with
/// [`Hessian::rotated`] when `weights` are rotated). `damp` (e.g. 0.01) is added to the
/// diagonal as a fraction of its mean, for stability. With `grid`, codes are its levels (see
/// [`super::quantize_on_grid`]).
///
/// Errors: `INVALID_CONFIG` as [`super::quantize`], for a Hessian of another size, a grid of
/// other bits, or a Hessian that stays singular after damping.
pub fn quantize_gptq(
    weights: &[f32],
    rows: usize,
    cols: usize,
    spec: QuantSpec,
    hessian: &[f64],
    damp: f64,
    grid: Option<&Grid>,
) -> Result<QuantizedMatrix> {
    let spec = QuantSpec::new(spec.bits, spec.group_size, spec.scheme)?;
    if cols == 0 || !cols.is_multiple_of(32) || rows == 0 || weights.len() != rows * cols {
        return Err(Error::invalid_config(format!(
            "error-feedback quantization of a {rows}×{cols} matrix with {} weights",
            weights.len()
        )));
    }
    if hessian.len() != cols * cols {
        return Err(Error::invalid_config(format!(
            "a {cols}-column matrix needs a {cols}×{cols} Hessian, got {} values",
            hessian.len()
        )));
    }
    if grid.is_some_and(|g| g.bits() != spec.bits) {
        return Err(Error::invalid_config("a grid of other bits than its codes"));
    }
    let nearest = grid.map(Grid::nearest);
    let nearest = nearest.as_ref();
    // Columns no calibration input ever touched carry no information: pin them.
    let mut h = hessian.to_vec();
    let dead: Vec<bool> = (0..cols).map(|i| h[i * cols + i] <= 0.0).collect();
    for (i, &d) in dead.iter().enumerate() {
        if d {
            h[i * cols + i] = 1.0;
        }
    }
    let importance: Vec<f32> = (0..cols).map(|i| h[i * cols + i] as f32).collect();
    let u = inverse_cholesky_upper(&h, cols, damp)?;

    let row_words = cols * spec.bits as usize / 32;
    let groups = cols.div_ceil(spec.group_size);
    let mut data = vec![0u32; rows * row_words];
    let mut params = vec![(f16::ZERO, f16::ZERO); rows * groups];
    // Rows are independent: each runs its own column sweep. They go ROW_BLOCK at a time, the
    // block's working values interleaved column-major (`w[k * ROW_BLOCK + r]`), so each row of
    // `u` is read once per block and the error-feedback update of column k is one contiguous
    // run of ROW_BLOCK multiply-adds (vectorised), instead of streaming `u`, cols² f64, once
    // per row. Every row sees exactly the operations of a row-by-row sweep, in the same order.
    data.par_chunks_mut(row_words * ROW_BLOCK)
        .zip(params.par_chunks_mut(groups * ROW_BLOCK))
        .zip(weights.par_chunks(cols * ROW_BLOCK))
        .for_each_init(
            || {
                (
                    vec![0u8; cols * ROW_BLOCK],
                    vec![0f64; cols * ROW_BLOCK],
                    vec![0u8; spec.group_size],
                    vec![0f32; spec.group_size],
                )
            },
            |(codes, w, scratch, vals), ((words, params), block)| {
                let n = block.len() / cols;
                for (r, row) in block.chunks_exact(cols).enumerate() {
                    for (c, (&x, &d)) in row.iter().zip(&dead).enumerate() {
                        w[c * ROW_BLOCK + r] = if d { 0.0 } else { f64::from(x) };
                    }
                }
                let mut gp = [(0.0f32, 0.0f32); ROW_BLOCK];
                let mut err = [0f64; ROW_BLOCK];
                for j in 0..cols {
                    if j.is_multiple_of(spec.group_size) {
                        let span = j..cols.min(j + spec.group_size);
                        let len = span.len();
                        for (r, p) in gp.iter_mut().enumerate().take(n) {
                            for (v, c) in vals[..len].iter_mut().zip(span.clone()) {
                                *v = w[c * ROW_BLOCK + r] as f32;
                            }
                            *p = match nearest {
                                Some(nn) => quantize_group_grid(
                                    &vals[..len],
                                    &importance[span.clone()],
                                    nn,
                                    spec.scheme,
                                    &mut scratch[..len],
                                ),
                                None => quantize_group_weighted(
                                    &vals[..len],
                                    Some(&importance[span.clone()]),
                                    &spec,
                                    &mut scratch[..len],
                                ),
                            };
                            params[r * groups + j / spec.group_size] =
                                (f16::from_f32(p.0), f16::from_f32(p.1));
                        }
                    }
                    let ujj = u[j * cols + j];
                    for r in 0..n {
                        let (scale, offset) = gp[r];
                        let wj = w[j * ROW_BLOCK + r];
                        let q = code_of(wj as f32, scale, offset, &spec, nearest);
                        codes[r * cols + j] = q;
                        let v = value_of(q, scale, offset, &spec, nearest);
                        err[r] = (wj - f64::from(v)) / ujj;
                    }
                    let urow = &u[j * cols..(j + 1) * cols];
                    for (wk, &uk) in w[(j + 1) * ROW_BLOCK..cols * ROW_BLOCK]
                        .chunks_exact_mut(ROW_BLOCK)
                        .zip(&urow[j + 1..])
                    {
                        for (x, e) in wk.iter_mut().zip(&err) {
                            *x -= e * uk;
                        }
                    }
                }
                for (r, out) in words.chunks_exact_mut(row_words).enumerate() {
                    pack_codes(&codes[r * cols..(r + 1) * cols], spec.bits, out);
                }
            },
        );
    Ok(QuantizedMatrix {
        rows,
        cols,
        spec,
        data,
        scales: params.iter().map(|p| p.0).collect(),
        offsets: match spec.scheme {
            Scheme::Symmetric => Vec::new(),
            Scheme::Asymmetric => params.iter().map(|p| p.1).collect(),
        },
        rotation: None,
        grid: grid.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_weighted, unpack_codes};

    /// Seeded uniform values in [-1, 1) (a linear congruential generator).
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        }
    }

    /// Output error `Σ_x ‖(W − Ŵ) x‖²` over the calibration rows.
    fn output_error(w: &[f32], q: &QuantizedMatrix, xs: &[f32], cols: usize) -> f64 {
        let deq = q.dequantize();
        let mut e = 0.0;
        for x in xs.chunks_exact(cols) {
            for (wr, qr) in w.chunks_exact(cols).zip(deq.chunks_exact(cols)) {
                let d: f64 = wr
                    .iter()
                    .zip(qr)
                    .zip(x)
                    .map(|((a, b), xv)| f64::from(a - b) * f64::from(*xv))
                    .sum();
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn error_feedback_beats_plain_rounding_on_correlated_inputs() {
        let (rows, cols, n) = (16, 64, 512);
        let mut rnd = uniform(1);
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        // Correlated inputs: a few shared factors plus noise, some columns much larger.
        let mut xs = vec![0f32; n * cols];
        for x in xs.chunks_exact_mut(cols) {
            let f = [rnd(), rnd(), rnd()];
            for (c, v) in x.iter_mut().enumerate() {
                *v = f[c % 3] * (1.0 + (c % 7) as f32) + 0.1 * rnd();
            }
        }
        let mut h = Hessian::new(cols);
        h.add_rows(&xs);
        let spec = QuantSpec::new(3, 32, Scheme::Symmetric).unwrap();
        let plain = quantize_weighted(&w, rows, cols, spec, Some(&h.diag())).unwrap();
        let fed = quantize_gptq(&w, rows, cols, spec, &h.mean(), 0.01, None).unwrap();
        let (ep, ef) = (
            output_error(&w, &plain, &xs, cols),
            output_error(&w, &fed, &xs, cols),
        );
        assert!(ef < 0.7 * ep, "error feedback {ef} vs plain {ep}");
        // And with a rotation, in the rotated basis.
        let rot = Rotation { block: 64, seed: 5 };
        let signs = rot.signs(cols);
        let mut wr = w.clone();
        rot.rotate(&signs, &mut wr);
        let mut q = quantize_gptq(&wr, rows, cols, spec, &h.rotated(&rot), 0.01, None).unwrap();
        q.rotation = Some(rot);
        let er = output_error(&w, &q, &xs, cols);
        assert!(er < ep, "rotated error feedback {er} vs plain {ep}");
    }

    /// The sweep one row at a time, as [`quantize_gptq`] did before it took rows in blocks:
    /// `(codes, scales, offsets)`.
    fn row_by_row(
        weights: &[f32],
        cols: usize,
        spec: QuantSpec,
        h: &[f64],
        damp: f64,
    ) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let u = inverse_cholesky_upper(h, cols, damp).unwrap();
        let importance: Vec<f32> = (0..cols).map(|i| h[i * cols + i] as f32).collect();
        let (mut codes, mut scales, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        let mut scratch = vec![0u8; spec.group_size];
        for row in weights.chunks_exact(cols) {
            let mut w: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
            let (mut scale, mut offset) = (0.0f32, 0.0f32);
            for j in 0..cols {
                if j % spec.group_size == 0 {
                    let span = j..cols.min(j + spec.group_size);
                    let vals: Vec<f32> = w[span.clone()].iter().map(|&v| v as f32).collect();
                    (scale, offset) = quantize_group_weighted(
                        &vals,
                        Some(&importance[span]),
                        &spec,
                        &mut scratch[..vals.len()],
                    );
                    scales.push(f16::from_f32(scale).to_f32());
                    offsets.push(f16::from_f32(offset).to_f32());
                }
                let q = code_of(w[j] as f32, scale, offset, &spec, None);
                codes.push(q);
                let err =
                    (w[j] - f64::from(value_of(q, scale, offset, &spec, None))) / u[j * cols + j];
                for k in j + 1..cols {
                    w[k] -= err * u[j * cols + k];
                }
            }
        }
        (codes, scales, offsets)
    }

    #[test]
    fn row_blocks_give_exactly_the_row_by_row_sweep() {
        let mut rnd = uniform(7);
        // Row counts below, at and past a block, not multiples of it; a short last group.
        for (rows, cols, bits, group, scheme) in [
            (3, 64, 4, 32, Scheme::Symmetric),
            (8, 96, 3, 64, Scheme::Asymmetric),
            (21, 96, 2, 32, Scheme::Symmetric),
            (17, 128, 8, 128, Scheme::Asymmetric),
        ] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let xs: Vec<f32> = (0..cols * 200)
                .map(|i| rnd() * (1.0 + (i % cols % 5) as f32))
                .collect();
            let mut h = Hessian::new(cols);
            h.add_rows(&xs);
            let spec = QuantSpec::new(bits, group, scheme).unwrap();
            let q = quantize_gptq(&w, rows, cols, spec, &h.mean(), 0.01, None).unwrap();
            let (codes, scales, offsets) = row_by_row(&w, cols, spec, &h.mean(), 0.01);
            let mut got = vec![0u8; rows * cols];
            let row_words = cols * bits as usize / 32;
            for (r, words) in q.data.chunks_exact(row_words).enumerate() {
                unpack_codes(words, bits, &mut got[r * cols..(r + 1) * cols]);
            }
            assert_eq!(got, codes, "codes, {rows}x{cols} int{bits} g{group}");
            let qs: Vec<f32> = q.scales.iter().map(|v| v.to_f32()).collect();
            assert_eq!(qs, scales, "scales, {rows}x{cols}");
            if scheme == Scheme::Asymmetric {
                let qo: Vec<f32> = q.offsets.iter().map(|v| v.to_f32()).collect();
                assert_eq!(qo, offsets, "offsets, {rows}x{cols}");
            }
        }
    }

    #[test]
    fn hessian_rotation_matches_rotating_inputs() {
        let cols = 64;
        let xs: Vec<f32> = (0..cols * 10)
            .map(|i| ((i * 13 % 29) as f32) - 14.0)
            .collect();
        let rot = Rotation {
            block: 32,
            seed: 11,
        };
        let signs = rot.signs(cols);
        let mut h = Hessian::new(cols);
        h.add_rows(&xs);
        let mut xr = xs.clone();
        rot.rotate(&signs, &mut xr);
        let mut hr = Hessian::new(cols);
        hr.add_rows(&xr);
        for (a, b) in h.rotated(&rot).iter().zip(hr.mean()) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
