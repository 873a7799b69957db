//! The prefill matmul paths beyond the default tiles: the integer tiled prefill, cooperative
//! matrices (ignored without a GPU that has them), and the bias epilogue on the wide matvec and
//! the integer prefill.

use crate::reference;
use crate::{backend, check_matmul, matmul_add_to_half, matmul_tol, max_rel, rand_vec};
use lowbit_core::future::block_on;
use lowbit_core::ops::Op;
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The integer tiled prefill (`WgpuOptions::int_prefill`) for 2-, 3-, 4- and 8-bit codes, a
/// group a block fills and one spanning four blocks (with a partial last group), both schemes,
/// on every kernel path: token counts within one tile and across two (70 > 64), 13 and 203
/// rows (partial row tiles). It must equal the dequantized weights times the activations
/// quantized per 32-value block (as the decode matvec), also with the residual add.
#[test]
fn int_prefill_every_format() {
    let mut rng = StdRng::seed_from_u64(43);
    let auto = backend(false, false).paths();
    let mut backends = Vec::new();
    for f16 in [false, true] {
        for sg in [false, true] {
            if (!f16 || auto.f16) && (!sg || auto.subgroups) {
                backends.push(
                    WgpuBackend::new(&WgpuOptions {
                        f16: Some(f16),
                        subgroups: Some(sg),
                        int_prefill: true,
                        ..WgpuOptions::software()
                    })
                    .unwrap(),
                );
            }
        }
    }
    let cols = 2080;
    for rows in [13usize, 203] {
        let w = rand_vec(&mut rng, rows * cols);
        for bits in [8u8, 4, 3, 2] {
            for (group, scheme) in [(32usize, Scheme::Symmetric), (128, Scheme::Asymmetric)] {
                let q =
                    quantize(&w, rows, cols, QuantSpec::new(bits, group, scheme).unwrap()).unwrap();
                let dense = q.dequantize();
                for b in &backends {
                    let id = b.upload_weight(WeightMatrix::Quantized(q.clone())).unwrap();
                    for n in [2usize, 70] {
                        let xv = rand_vec(&mut rng, n * cols);
                        let (want, mag) =
                            reference::matmul(&dense, rows, cols, &reference::q8_blocks(&xv), n);
                        let got = matmul_add_to_half(b, id, &xv, n, rows);
                        // f32 sums of exact integer block sums: f32 rounding only.
                        let err = max_rel(&got, &want, &mag, 1e-3);
                        assert!(
                            err < 1e-5,
                            "{bits}-bit g{group} {scheme:?} {rows}x{cols} n={n} {:?}: {err}",
                            b.paths()
                        );
                    }
                }
            }
        }
    }
    for b in &backends {
        let k = b.compiled_kernels();
        for bits in [8, 4, 3, 2] {
            assert!(
                k.iter().any(|l| l.starts_with("matmul_tiled[")
                    && l.contains(&format!(",BITS={bits},"))
                    && l.contains("INT_TILED=1")),
                "no integer tiled {bits}-bit kernel: {k:?}"
            );
        }
    }
}

/// Prefill on cooperative matrices (tensor cores): every weight kind and width against the
/// dequantized weights, through `check_matmul` (1 token: the decode matvec; 3, 17 and 64: the
/// cooperative tiles, with and without the residual add; 203 rows cut the 128-row tile and 2080
/// columns are 65 steps of 32). The f16 bound covers the f16 activations and weights.
///
/// No driver CI can install runs it: Debian's lavapipe (Mesa 22.3) has no cooperative matrices,
/// and bookworm-backports' Mesa 25.0.7 lavapipe, which has `VK_KHR_cooperative_matrix`, offers
/// wgpu 30 no configuration it accepts and 8-lane subgroups (the kernel needs 32). CI instead
/// validates every variant of the kernel with naga (`coop_prefill_kernel_validates_in_naga`).
#[test]
#[ignore = "needs VK_KHR_cooperative_matrix with 16x16x16 f16 products (CI's lavapipe has none): \
            run on a GPU with `cargo test -p lowbit-wgpu --test ops -- --ignored coop`"]
fn coop_prefill_every_format() {
    let b = WgpuBackend::new(&WgpuOptions {
        coop_matrix: Some(true),
        ..WgpuOptions::software()
    })
    .expect("an adapter with cooperative matrices");
    assert!(b.coop_matrix());
    let mut rng = StdRng::seed_from_u64(44);
    let rows = 203;
    for cols in [96usize, 2080] {
        let w = rand_vec(&mut rng, rows * cols);
        for bits in [8u8, 4, 3, 2] {
            for (group, scheme) in [(32usize, Scheme::Symmetric), (128, Scheme::Asymmetric)] {
                if cols % group != 0 {
                    continue;
                }
                let q =
                    quantize(&w, rows, cols, QuantSpec::new(bits, group, scheme).unwrap()).unwrap();
                let dense = q.dequantize();
                let what = format!("coop {bits}-bit g{group} {scheme:?} cols {cols}");
                check_matmul(&b, WeightMatrix::Quantized(q), &dense, rows, cols, &what);
            }
        }
        let data = w.clone();
        check_matmul(
            &b,
            WeightMatrix::F32 { rows, cols, data },
            &w,
            rows,
            cols,
            "coop f32",
        );
    }
    // Two token tiles and a part of a third (128 tokens each), residual add included.
    let cols = 576;
    let w = rand_vec(&mut rng, rows * cols);
    let q = quantize(
        &w,
        rows,
        cols,
        QuantSpec::new(4, 32, Scheme::Symmetric).unwrap(),
    )
    .unwrap();
    let dense = q.dequantize();
    let id = b.upload_weight(WeightMatrix::Quantized(q)).unwrap();
    let n = 300;
    let xv = rand_vec(&mut rng, n * cols);
    let (want, mag) = reference::matmul(&dense, rows, cols, &xv, n);
    let got = matmul_add_to_half(&b, id, &xv, n, rows);
    let err = max_rel(&got, &want, &mag, 1e-3);
    assert!(
        err < matmul_tol(&b),
        "coop 4-bit n={n}: relative error {err}"
    );
    // The bias epilogue on the cooperative tiles, accumulating into 0.5.
    let bias_v = rand_vec(&mut rng, rows);
    let (x, bias) = (b.upload(&xv).unwrap(), b.upload(&bias_v).unwrap());
    let out = b.upload(&vec![0.5; n * rows]).unwrap();
    b.run(&[Op::Linear {
        w: id,
        bias: Some(bias),
        x,
        out,
        n,
        accumulate: true,
    }])
    .unwrap();
    let got: Vec<f32> = block_on(b.read(out, 0, n * rows))
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| v - 0.5 - bias_v[i % rows])
        .collect();
    let err = max_rel(&got, &want, &mag, 1e-3);
    assert!(
        err < matmul_tol(&b),
        "coop 4-bit n={n} with bias: relative error {err}"
    );
    let k = b.compiled_kernels();
    for bits in [8, 4, 3, 2] {
        assert!(
            k.iter().any(|l| l.starts_with("matmul_tiled[")
                && l.contains(&format!(",BITS={bits},"))
                && l.contains("COOP_TILED=1")),
            "no cooperative-matrix {bits}-bit kernel: {k:?}"
        );
    }
}

/// A linear map's bias (`Linear{bias}`, the `BIAS` epilogue) on the paths the conformance
/// suite's small matrices never take: the wide decode matvec (2080 columns) and the integer
/// tiled prefill, storing and accumulating. Both quantize the activations to 8-bit blocks, so
/// the reference is the dequantized weights times those, plus the bias (and the old output).
#[test]
fn linear_bias_on_wide_matvec_and_int_prefill() {
    let mut rng = StdRng::seed_from_u64(47);
    let b = WgpuBackend::new(&WgpuOptions {
        wide_matvec: true,
        int_prefill: true,
        ..WgpuOptions::software()
    })
    .unwrap();
    let (rows, cols) = (13usize, 2080usize);
    let w = rand_vec(&mut rng, rows * cols);
    let q = quantize(
        &w,
        rows,
        cols,
        QuantSpec::new(4, 32, Scheme::Symmetric).unwrap(),
    )
    .unwrap();
    let dense = q.dequantize();
    let id = b.upload_weight(WeightMatrix::Quantized(q)).unwrap();
    let bias_v: Vec<f32> = rand_vec(&mut rng, rows).iter().map(|v| 4.0 * v).collect();
    let bias = b.upload(&bias_v).unwrap();
    for n in [1usize, 5] {
        for accumulate in [false, true] {
            let xv = rand_vec(&mut rng, n * cols);
            let o0 = rand_vec(&mut rng, n * rows);
            let (mut want, mag) =
                reference::matmul(&dense, rows, cols, &reference::q8_blocks(&xv), n);
            for (i, w) in want.iter_mut().enumerate() {
                *w += bias_v[i % rows] + if accumulate { o0[i] } else { 0.0 };
            }
            let (x, out) = (b.upload(&xv).unwrap(), b.upload(&o0).unwrap());
            b.run(&[Op::Linear {
                w: id,
                bias: Some(bias),
                x,
                out,
                n,
                accumulate,
            }])
            .unwrap();
            let got = block_on(b.read(out, 0, n * rows)).unwrap();
            let err = max_rel(&got, &want, &mag, 1e-3);
            assert!(
                err < matmul_tol(&b),
                "n={n} accumulate={accumulate} {:?}: relative error {err}",
                b.paths()
            );
            b.free(x);
            b.free(out);
        }
    }
    let k = b.compiled_kernels();
    for (entry, path) in [("matvec[", "WIDE=1"), ("matmul_tiled[", "INT_TILED=1")] {
        assert!(
            k.iter()
                .any(|l| l.starts_with(entry) && l.contains(path) && l.contains("BIAS=1")),
            "no {entry}{path} kernel with a bias: {k:?}"
        );
    }
}
