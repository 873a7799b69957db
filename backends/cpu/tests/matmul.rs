//! The matmul kernels behind `Op::Linear` on packed and dense weights against a scalar f64
//! reference with per-output error bounds, on every instruction set this machine has, plus
//! SIMD-vs-scalar agreement and batched-vs-single rows bit for bit.

mod common;

use common::*;
use half::f16;
use lowbit_core::backend::{Backend, DType, WeightMatrix};
use lowbit_core::block_on;
use lowbit_core::ops::Op;
use lowbit_core::quant::Scheme;
use lowbit_cpu::{CpuBackend, Isa};
use rand::Rng;

const SHAPES: [(usize, usize); 4] = [(13, 96), (37, 576), (8, 256), (5, 160)];
const NS: [usize; 3] = [1, 3, 17];

/// Activations already on the int8 grid: each 32-block is integers in -127..=127 times `2^k`,
/// with one entry at ±127·2^k, so the block scale is exactly `2^k` and quantization is lossless.
/// Any kernel error then shows up beyond f32 rounding.
fn grid_activations(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<f32> {
    let mut x = vec![0.0f32; len];
    for block in x.chunks_mut(32) {
        let k = rng.gen_range(-3..=3);
        let p = (k as f32).exp2();
        for v in block.iter_mut() {
            *v = rng.gen_range(-127..=127) as f32 * p;
        }
        let i = rng.gen_range(0..block.len());
        block[i] = if rng.gen() { 127.0 } else { -127.0 } * p;
    }
    x
}

/// `Op::Linear` of `n` rows of `x` by `w`.
fn run(b: &CpuBackend, w: WeightMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let rows = w.shape().0;
    let wid = b.upload_weight(w).unwrap();
    let xb = b.upload(x).unwrap();
    let out = b.alloc(DType::F32, n * rows).unwrap();
    b.run(&[Op::Linear {
        w: wid,
        bias: None,
        x: xb,
        out,
        n,
        accumulate: false,
    }])
    .unwrap();
    let got = block_on(b.read(out, 0, n * rows)).unwrap();
    b.free(xb);
    b.free(out);
    got
}

/// For every (row, activation row): Σ (|s·q| + |bias|)·|x|, the magnitude f32 rounding scales with.
fn magnitudes(m: &lowbit_core::QuantizedMatrix, codes: &[u8], x: &[f32], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m.rows];
    for j in 0..n {
        for r in 0..m.rows {
            out[j * m.rows + r] = (0..m.cols)
                .map(|c| {
                    let (s, b) = scale_bias(m, r, c);
                    ((s * codes[r * m.cols + c] as f32).abs() + b.abs()) as f64
                        * x[j * m.cols + c].abs() as f64
                })
                .sum();
        }
    }
    out
}

/// Provable bound of the int8 activation error: each x is off by at most `amax_block / 254`
/// (round to nearest of `x / (amax/127)`), and kernels multiply that by `s·q` (or by
/// `s·(q - 128)` for the AVX2 8-bit sign trick); the bias term uses the exact Σx.
fn quantization_bound(
    m: &lowbit_core::QuantizedMatrix,
    codes: &[u8],
    x: &[f32],
    n: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; n * m.rows];
    for j in 0..n {
        let xr = &x[j * m.cols..(j + 1) * m.cols];
        for r in 0..m.rows {
            out[j * m.rows + r] = (0..m.cols)
                .map(|c| {
                    let b0 = c / 32 * 32;
                    let amax = xr[b0..b0 + 32].iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let q = codes[r * m.cols + c] as f64;
                    let q = if m.spec.bits == 8 {
                        q.max((q - 128.0).abs())
                    } else {
                        q
                    };
                    let (s, _) = scale_bias(m, r, c);
                    s as f64 * q * amax as f64 / 254.0
                })
                .sum();
        }
    }
    out
}

fn check(got: &[f32], want: &[f32], tol: &[f64], what: &str) {
    for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        assert!(
            err <= *t,
            "{what}: output {i}: got {g}, want {w}, |err| {err} > tol {t}"
        );
    }
}

#[test]
fn quantized_matmul_matches_dequantized_reference() {
    let mut rng = rng(1);
    let backends = backends();
    for bits in [8u8, 6, 5, 4, 3, 2] {
        for gs in [32usize, 64, 128] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                for (rows, cols) in SHAPES {
                    let (m, codes) = random_matrix(&mut rng, rows, cols, bits, gs, scheme);
                    let w = dequantize(&m, &codes);
                    for n in NS {
                        let what = format!("int{bits} g{gs} {scheme:?} {rows}x{cols} n={n}");
                        // Lossless activations: only f32 accumulation error, ~1e-7 relative per
                        // term; 1e-5 of the term magnitudes leaves room for long sums.
                        let x = grid_activations(&mut rng, n * cols);
                        let want = reference_matmul(&w, rows, cols, &x, n);
                        let tol: Vec<f64> = magnitudes(&m, &codes, &x, n)
                            .iter()
                            .map(|v| 1e-5 * v + 1e-6)
                            .collect();
                        for b in &backends {
                            let got = run(b, WeightMatrix::Quantized(m.clone()), &x, n);
                            check(&got, &want, &tol, &format!("{what} grid {:?}", b.isa()));
                        }
                        // Arbitrary activations: the int8 bound above plus f32 rounding.
                        let x = random_vec(&mut rng, n * cols, 2.0);
                        let want = reference_matmul(&w, rows, cols, &x, n);
                        let mag = magnitudes(&m, &codes, &x, n);
                        let tol: Vec<f64> = quantization_bound(&m, &codes, &x, n)
                            .iter()
                            .zip(&mag)
                            .map(|(q, v)| q + 1e-5 * v + 1e-6)
                            .collect();
                        for b in &backends {
                            let got = run(b, WeightMatrix::Quantized(m.clone()), &x, n);
                            check(&got, &want, &tol, &format!("{what} random {:?}", b.isa()));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn simd_matches_scalar() {
    let simd: Vec<_> = [Isa::Avx2, Isa::Simd128]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    let scalar = CpuBackend::with_isa(1, Isa::Scalar).unwrap();
    let mut rng = rng(2);
    for isa in simd {
        let fast = CpuBackend::with_isa(2, isa).unwrap();
        for bits in [8u8, 6, 5, 4, 3, 2] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                let (m, codes) = random_matrix(&mut rng, 29, 576, bits, 128, scheme);
                for n in [1, 17] {
                    let x = random_vec(&mut rng, n * 576, 1.0);
                    let a = run(&scalar, WeightMatrix::Quantized(m.clone()), &x, n);
                    let b = run(&fast, WeightMatrix::Quantized(m.clone()), &x, n);
                    // Same int8 activations on both sides: only summation order differs.
                    let tol: Vec<f64> = magnitudes(&m, &codes, &x, n)
                        .iter()
                        .map(|v| 1e-5 * v + 1e-6)
                        .collect();
                    check(
                        &b,
                        &a,
                        &tol,
                        &format!("{isa:?} vs scalar int{bits} {scheme:?} n={n}"),
                    );
                }
            }
        }
    }
}

#[test]
fn dense_matmul_f32_and_f16() {
    let mut rng = rng(3);
    for b in backends() {
        for (rows, cols) in [(7usize, 33usize), (64, 96), (3, 1)] {
            for n in NS {
                let w = random_vec(&mut rng, rows * cols, 1.0);
                let w16: Vec<f16> = w.iter().map(|v| f16::from_f32(*v)).collect();
                let w16f: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
                let x = random_vec(&mut rng, n * cols, 1.0);
                // f32 sums of ≤ 96 products of magnitude ≤ 1: 1e-5 absolute is ~50 ulp-sums.
                let tol = vec![1e-5 * cols as f64; n * rows];
                let got = run(
                    &b,
                    WeightMatrix::F32 {
                        rows,
                        cols,
                        data: w.clone(),
                    },
                    &x,
                    n,
                );
                check(&got, &reference_matmul(&w, rows, cols, &x, n), &tol, "f32");
                let got = run(
                    &b,
                    WeightMatrix::F16 {
                        rows,
                        cols,
                        data: w16,
                    },
                    &x,
                    n,
                );
                check(
                    &got,
                    &reference_matmul(&w16f, rows, cols, &x, n),
                    &tol,
                    "f16",
                );
            }
        }
    }
}

/// A batch of activation rows gives, row for row, exactly the single-row (decode) results:
/// batched decoding must not change greedy outputs.
#[test]
fn batched_rows_equal_single_rows_bit_for_bit() {
    let mut rng = rng(4);
    for b in backends() {
        for bits in [8u8, 6, 5, 4, 3, 2] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                for (rows, cols, group) in [(37usize, 576usize, 32usize), (9, 1536, 128)] {
                    let (m, _) = random_matrix(&mut rng, rows, cols, bits, group, scheme);
                    let n = 5;
                    let x = random_vec(&mut rng, n * cols, 1.5);
                    let batched = run(&b, WeightMatrix::Quantized(m.clone()), &x, n);
                    for j in 0..n {
                        let single = run(
                            &b,
                            WeightMatrix::Quantized(m.clone()),
                            &x[j * cols..(j + 1) * cols],
                            1,
                        );
                        assert_eq!(
                            &batched[j * rows..(j + 1) * rows],
                            &single[..],
                            "{:?} int{bits} {scheme:?} {rows}x{cols} g{group} row {j}",
                            b.isa()
                        );
                    }
                }
            }
        }
    }
}

/// The stored codes of `m` (`rows * cols`), read from its LSB-first bit stream.
fn stored_codes(m: &lowbit_core::QuantizedMatrix) -> Vec<u8> {
    let bits = m.spec.bits as usize;
    let rw = m.row_words();
    let mut out = Vec::with_capacity(m.rows * m.cols);
    for r in 0..m.rows {
        let words = &m.data[r * rw..(r + 1) * rw];
        for c in 0..m.cols {
            let bit = c * bits;
            let (w, s) = (bit / 32, bit % 32);
            let mut v = u64::from(words[w]) >> s;
            if s + bits > 32 {
                v |= u64::from(words[w + 1]) << (32 - s);
            }
            out.push((v & ((1 << bits) - 1)) as u8);
        }
    }
    out
}

/// For every (row, activation row) of a grid matrix: Σ (|s·level| + |offset|)·|x|.
fn grid_magnitudes(m: &lowbit_core::QuantizedMatrix, x: &[f32], n: usize) -> Vec<f64> {
    let levels = m.grid.as_ref().expect("grid matrix").levels();
    let codes = stored_codes(m);
    let gpr = m.groups_per_row();
    let mut out = vec![0.0; n * m.rows];
    for j in 0..n {
        for r in 0..m.rows {
            out[j * m.rows + r] = (0..m.cols)
                .map(|c| {
                    let g = r * gpr + c / m.spec.group_size;
                    let s = m.scales[g].to_f32() as f64;
                    let o = m.offsets.get(g).map_or(0.0, |o| o.to_f32() as f64);
                    let l = f64::from(levels[codes[r * m.cols + c] as usize]);
                    ((s * l).abs() + o.abs()) * x[j * m.cols + c].abs() as f64
                })
                .sum();
        }
    }
    out
}

/// Matrices on learned grids (and on a hand-made grid whose lowest level is −128, i8::MIN, used
/// by the weights) through every instruction set: AVX2 agrees with the scalar table-lookup
/// kernel (same int8 activations, only the f32 summation order differs), every kernel matches
/// the dequantized f64 reference on lossless activations, and batched rows equal single rows
/// bit for bit. n = 1 (decode, rows in pairs with an odd one left), 2 and 5 (prefill).
#[test]
fn grid_matrices_match_scalar_and_reference() {
    use lowbit_core::quant::{learn_grid, quantize_on_grid, Grid, QuantSpec};
    let mut rng = rng(5);
    let backends = backends();
    let scalar = CpuBackend::with_isa(1, Isa::Scalar).unwrap();
    let with_min: [(u8, Vec<i8>); 3] = [
        (2, vec![-128, -31, 22, 127]),
        (3, vec![-128, -77, -40, -9, 12, 45, 88, 121]),
        (
            4,
            vec![
                -128, -101, -80, -61, -44, -29, -15, -4, 6, 17, 30, 44, 60, 79, 100, 124,
            ],
        ),
    ];
    for (bits, levels) in with_min {
        for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
            for (rows, cols, gs) in [(13usize, 576usize, 32usize), (37, 256, 128), (8, 1536, 64)] {
                let spec = QuantSpec::new(bits, gs, scheme).unwrap();
                let w = random_vec(&mut rng, rows * cols, 1.0);
                let learned = learn_grid(&w, rows, cols, &spec, &|_, o| o.fill(1.0));
                let fixed = Grid::new(bits, levels.clone()).unwrap();
                for (kind, g) in [("learned", learned), ("min -128", fixed)] {
                    let m = quantize_on_grid(&w, rows, cols, spec, None, Some(&g)).unwrap();
                    if kind == "min -128" {
                        assert!(
                            stored_codes(&m).contains(&0),
                            "int{bits} {scheme:?}: no weight on level -128"
                        );
                    }
                    let deq = m.dequantize();
                    for n in [1usize, 2, 5] {
                        let what =
                            format!("{kind} grid int{bits} {scheme:?} {rows}x{cols} g{gs} n={n}");
                        // Arbitrary activations: AVX2 (and any SIMD) against scalar.
                        let x = random_vec(&mut rng, n * cols, 1.5);
                        let want = run(&scalar, WeightMatrix::Quantized(m.clone()), &x, n);
                        let tol: Vec<f64> = grid_magnitudes(&m, &x, n)
                            .iter()
                            .map(|v| 1e-5 * v + 1e-6)
                            .collect();
                        for b in &backends {
                            let got = run(b, WeightMatrix::Quantized(m.clone()), &x, n);
                            check(
                                &got,
                                &want,
                                &tol,
                                &format!("{what} vs scalar {:?}", b.isa()),
                            );
                            // Batched rows are the single-row (decode) results, bit for bit.
                            if n > 1 {
                                for j in 0..n {
                                    let single = run(
                                        b,
                                        WeightMatrix::Quantized(m.clone()),
                                        &x[j * cols..(j + 1) * cols],
                                        1,
                                    );
                                    assert_eq!(
                                        &got[j * rows..(j + 1) * rows],
                                        &single[..],
                                        "{what} {:?} row {j}",
                                        b.isa()
                                    );
                                }
                            }
                        }
                        // Lossless activations: every kernel against the f64 reference.
                        let x = grid_activations(&mut rng, n * cols);
                        let want = reference_matmul(&deq, rows, cols, &x, n);
                        let tol: Vec<f64> = grid_magnitudes(&m, &x, n)
                            .iter()
                            .map(|v| 1e-5 * v + 1e-6)
                            .collect();
                        for b in &backends {
                            let got = run(b, WeightMatrix::Quantized(m.clone()), &x, n);
                            check(
                                &got,
                                &want,
                                &tol,
                                &format!("{what} reference {:?}", b.isa()),
                            );
                        }
                    }
                }
            }
        }
    }
}
