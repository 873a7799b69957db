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
    for bits in [8u8, 4, 3, 2] {
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
        for bits in [8u8, 4, 3, 2] {
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
        for bits in [8u8, 4, 3, 2] {
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
