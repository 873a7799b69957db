//! Quantized and dense matmuls in every weight format on every kernel path: the narrow and
//! tiled kernels, the wide decode matvec with the norm and SwiGLU feeding it 8-bit blocks, and
//! weights split into row pieces (matmul and embedding lookup).

use crate::calls::{Calls, RmsNorm};
use crate::reference;
use crate::{
    check_matmul, matmul_tol, matvec_backend, max_abs, max_rel, rand_vec, variants, variants_with,
};
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn quantized_matmul_every_format() {
    let mut rng = StdRng::seed_from_u64(1);
    let rows = 67;
    let backends = variants();
    for cols in [96usize, 576, 1536] {
        let w = rand_vec(&mut rng, rows * cols);
        for bits in [8u8, 4, 3, 2] {
            for group in [32usize, 64, 128] {
                for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                    let spec = QuantSpec::new(bits, group, scheme).unwrap();
                    let q = quantize(&w, rows, cols, spec).unwrap();
                    // The reference multiplies the dequantized matrix: the kernels must match
                    // the format exactly, quantization error is not theirs.
                    let dense = q.dequantize();
                    for b in &backends {
                        let what = format!("{bits}-bit g{group} {scheme:?} cols {cols}");
                        check_matmul(
                            b,
                            WeightMatrix::Quantized(q.clone()),
                            &dense,
                            rows,
                            cols,
                            &what,
                        );
                    }
                }
            }
        }
    }
    for b in &backends {
        let k = b.compiled_kernels();
        for entry in ["matvec[", "matmul_tiled["] {
            for bits in [8, 4, 3, 2] {
                assert!(
                    k.iter()
                        .any(|l| l.starts_with(entry) && l.contains(&format!(",BITS={bits},"))),
                    "{entry} {bits}-bit never ran: {k:?}"
                );
            }
        }
        let p = b.paths();
        let tag = format!("USE_F16={}", u8::from(p.f16));
        assert!(k
            .iter()
            .filter(|l| l.starts_with("mat"))
            .all(|l| l.contains(&tag)));
        let tag = format!("USE_SUBGROUPS={}", u8::from(p.subgroups));
        assert!(k.iter().all(|l| l.contains(&tag)));
    }
}

/// The wide matvec (rows of at least 32 values per lane: 2080 = 32 · 65 columns, one block past
/// a multiple of the 64 lanes) for 8-, 4-, 3- and 2-bit codes, a group that a block fills and
/// one spanning four blocks (plus a partial last group), both schemes. The wide kernel
/// quantizes the activations per 32-block to 8 bits: it must equal the dequantized weights
/// times those quantized activations (same bound as `check_matmul`, whose f16 bound also covers
/// a code that rounds the other way at a tie), and stay within 2% of the output's magnitude of
/// the exact product.
#[test]
fn wide_matvec_every_format() {
    let mut rng = StdRng::seed_from_u64(9);
    let rows = 13usize;
    // Every path, and one without narrow norm fusion; the norm (and SwiGLU) write 8-bit
    // activation blocks that the wide matvec reads (XQ8).
    let mut backends: Vec<(WgpuBackend, bool)> =
        variants_with(true).into_iter().map(|b| (b, true)).collect();
    backends.push((matvec_backend(true, false), false));
    // 2080: 65 blocks, more than the 64 lanes, so 4-bit lanes take two blocks at once (the
    // second only on lane 0); 2048: 64 blocks, one per lane.
    for cols in [2080usize, 2048] {
        let w = rand_vec(&mut rng, rows * cols);
        let xv = rand_vec(&mut rng, cols);
        let gv: Vec<f32> = rand_vec(&mut rng, cols).iter().map(|v| 1.0 + v).collect();
        for bits in [8u8, 4, 3, 2] {
            for group in [32usize, 128] {
                for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                    let q = quantize(&w, rows, cols, QuantSpec::new(bits, group, scheme).unwrap())
                        .unwrap();
                    let dense = q.dequantize();
                    // What the kernel computes, and how far that may be from the exact product.
                    let act = |x: &[f32]| reference::q8_blocks(x);
                    let (want, mag) = reference::matmul(&dense, rows, cols, &act(&xv), 1);
                    let (exact, _) = reference::matmul(&dense, rows, cols, &xv, 1);
                    for (b, _) in &backends {
                        let id = b.upload_weight(WeightMatrix::Quantized(q.clone())).unwrap();
                        let (x, out) = (b.upload(&xv).unwrap(), b.alloc_f32(rows).unwrap());
                        b.matmul(id, x, out, 1).unwrap();
                        let got = b.read_now(out, 0, rows).unwrap();
                        let err = max_rel(&got, &want, &mag, 1e-3);
                        assert!(
                            err < matmul_tol(b),
                            "{bits}-bit g{group} {scheme:?} {:?}: relative error {err}",
                            b.paths()
                        );
                        let loss = max_rel(&got, &exact, &mag, 1e-3);
                        assert!(
                        loss < 2e-2,
                        "{bits}-bit g{group} {scheme:?} {:?}: q8 activations off the exact product by {loss}",
                        b.paths()
                    );
                        // The RMSNorm writing 8-bit blocks before the matvec against the
                        // reference norm followed by the reference matmul.
                        let normed = reference::rms_norm(&xv, &gv, cols, 1e-5);
                        let want_n = reference::matmul(&dense, rows, cols, &act(&normed), 1).0;
                        let (_, mag_n) = reference::matmul(&dense, rows, cols, &normed, 1);
                        let (g, scratch) = (b.upload(&gv).unwrap(), b.alloc_scratch(cols).unwrap());
                        let norm = RmsNorm {
                            weight: g,
                            dim: cols,
                            eps: 1e-5,
                        };
                        b.rms_norm_matmul(x, &norm, scratch, id, out, 1).unwrap();
                        let err =
                            max_rel(&b.read_now(out, 0, rows).unwrap(), &want_n, &mag_n, 1e-3);
                        assert!(
                            err < matmul_tol(b),
                            "norm + {bits}-bit g{group} {scheme:?} {:?}: relative error {err}",
                            b.paths()
                        );
                        // SwiGLU into a residual-adding matmul: 8-bit blocks from the SwiGLU
                        // kernel for the wide matvec.
                        let guv = rand_vec(&mut rng, 2 * cols);
                        let o0 = rand_vec(&mut rng, rows);
                        let h = reference::silu_mul(&guv[..cols], &guv[cols..]);
                        let (mut want_s, mag_s) =
                            reference::matmul(&dense, rows, cols, &act(&h), 1);
                        for (w, o) in want_s.iter_mut().zip(&o0) {
                            *w += o;
                        }
                        let gu = b.upload(&guv).unwrap();
                        b.write(out, 0, &o0).unwrap();
                        b.swiglu_matmul_add(gu, scratch, id, out, 1, cols).unwrap();
                        let err =
                            max_rel(&b.read_now(out, 0, rows).unwrap(), &want_s, &mag_s, 1e-3);
                        assert!(
                            err < matmul_tol(b),
                            "swiglu + {bits}-bit g{group} {scheme:?} {:?}: relative error {err}",
                            b.paths()
                        );
                        for buf in [x, out, g, scratch, gu] {
                            b.free(buf);
                        }
                    }
                }
            }
        }
    }
    for (b, _) in &backends {
        let k = b.compiled_kernels();
        for bits in [8, 4, 3, 2] {
            let narrow = k.iter().any(|l| {
                l.starts_with("matvec[")
                    && l.contains(&format!(",BITS={bits},"))
                    && l.contains("WIDE=0")
            });
            assert!(!narrow, "narrow {bits}-bit matvec: {k:?}");
            // Lanes taking several blocks at once (2080 columns) and one (2048).
            let unrolled = match bits {
                3 | 4 => vec!["UNROLL=1", "UNROLL=2"],
                2 => vec!["UNROLL=1", "UNROLL=4"],
                _ => vec![],
            };
            for u in unrolled {
                assert!(
                    k.iter().any(|l| l.contains(&format!(",BITS={bits},"))
                        && l.contains("WIDE=1")
                        && l.contains(u)),
                    "{bits}-bit wide matvec with {u}: {k:?}"
                );
            }
            let xq8 = k.iter().any(|l| {
                l.starts_with("matvec[")
                    && l.contains(&format!(",BITS={bits},"))
                    && l.contains("XQ8=1")
            });
            // The norm and SwiGLU always feed a wide matvec 8-bit blocks.
            assert!(xq8, "{bits}-bit matvec on 8-bit blocks: {k:?}");
        }
        for (kernel, on) in [("rms_norm[", true), ("swiglu[", true)] {
            let q8 = k
                .iter()
                .any(|l| l.starts_with(kernel) && l.contains("Q8_OUT=1"));
            assert_eq!(q8, on, "{kernel} with 8-bit output: {k:?}");
        }
    }
}

#[test]
fn dense_matmul_f32_and_f16() {
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = (45, 160);
    let w = rand_vec(&mut rng, rows * cols);
    let w16: Vec<half::f16> = w.iter().map(|v| half::f16::from_f32(*v)).collect();
    let w16_dense: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
    for b in variants() {
        check_matmul(
            &b,
            WeightMatrix::F32 {
                rows,
                cols,
                data: w.clone(),
            },
            &w,
            rows,
            cols,
            "f32",
        );
        check_matmul(
            &b,
            WeightMatrix::F16 {
                rows,
                cols,
                data: w16.clone(),
            },
            &w16_dense,
            rows,
            cols,
            "f16",
        );
    }
}

#[test]
fn weights_split_into_row_pieces() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (203, 576);
    let w = rand_vec(&mut rng, rows * cols);
    let q = quantize(
        &w,
        rows,
        cols,
        QuantSpec::new(3, 128, Scheme::Asymmetric).unwrap(),
    )
    .unwrap();
    let dense = q.dequantize();
    // 216 bytes per 3-bit row: 4 KiB bindings hold 18 rows, so 12 pieces.
    let b = WgpuBackend::new(&WgpuOptions {
        max_binding_bytes: Some(4096),
        f16: Some(false),
        ..WgpuOptions::software()
    })
    .unwrap();
    let id = b.upload_weight(WeightMatrix::Quantized(q)).unwrap();
    assert_eq!(b.weight_pieces(id), Some(12));
    b.free(b.upload(&[0.0]).unwrap());
    check_matmul(
        &b,
        WeightMatrix::Quantized(
            quantize(
                &w,
                rows,
                cols,
                QuantSpec::new(3, 128, Scheme::Asymmetric).unwrap(),
            )
            .unwrap(),
        ),
        &dense,
        rows,
        cols,
        "pieces",
    );
    let tokens = [0u32, 202, 17, 18, 100];
    let out = b.alloc_f32(tokens.len() * cols).unwrap();
    b.embed(id, &tokens, out).unwrap();
    let got = b.read_now(out, 0, tokens.len() * cols).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        let want = &dense[t as usize * cols..(t as usize + 1) * cols];
        // A lookup is the dequantization formula evaluated once in f32: exact up to fma.
        assert!(
            max_abs(&got[i * cols..(i + 1) * cols], want) < 1e-6,
            "token {t}"
        );
    }
}
