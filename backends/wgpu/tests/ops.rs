//! Every WebGPU kernel against a scalar f64-accumulating reference, on Mesa's lavapipe (CI
//! installs mesa-vulkan-drivers; no adapter is a failure, not a skip). Sizes are deliberately
//! not multiples of the workgroup or tile sizes. Each kernel path the adapter supports (f32 /
//! f16 matmul, subgroup / workgroup-memory reductions) runs the same cases.

mod reference;

mod calls;

use calls::{AttentionParams, Calls, QkvParams, RmsNorm};
use lowbit_core::future::block_on;
use lowbit_core::ops::{Op, RopeStyle};
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, ErrorCode, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::{KernelPaths, WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn backend(f16: bool, subgroups: bool) -> WgpuBackend {
    backend_with(f16, subgroups, false)
}

fn backend_with(f16: bool, subgroups: bool, wide_matvec: bool) -> WgpuBackend {
    WgpuBackend::new(&WgpuOptions {
        f16: Some(f16),
        subgroups: Some(subgroups),
        wide_matvec,
        // The wide variants also fuse an RMSNorm into any narrow matvec they run.
        fused_norm: wide_matvec,
        ..WgpuOptions::software()
    })
    .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
}

/// A backend on the adapter's own kernel paths with these decode matvec options.
fn matvec_backend(wide_matvec: bool, fused_norm: bool) -> WgpuBackend {
    WgpuBackend::new(&WgpuOptions {
        wide_matvec,
        fused_norm,
        ..WgpuOptions::software()
    })
    .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
}

/// Every kernel path the adapter supports, each as its own backend.
fn variants() -> Vec<WgpuBackend> {
    variants_with(false)
}

fn variants_with(wide_matvec: bool) -> Vec<WgpuBackend> {
    let auto = WgpuBackend::new(&WgpuOptions::software())
        .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
        .paths();
    let mut v = Vec::new();
    for f16 in [false, true] {
        for sg in [false, true] {
            if (!f16 || auto.f16) && (!sg || auto.subgroups) {
                let b = backend_with(f16, sg, wide_matvec);
                assert_eq!(b.paths(), KernelPaths { f16, subgroups: sg });
                v.push(b);
            }
        }
    }
    eprintln!("adapter paths: {auto:?}; testing {} variants", v.len());
    v
}

/// Largest `|got - want| / (mag + floor)` over the outputs.
fn max_rel(got: &[f32], want: &[f32], mag: &[f32], floor: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .zip(mag)
        .map(|((g, w), m)| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g - w).abs() / (m + floor)
        })
        .fold(0.0, f32::max)
}

fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g - w).abs()
        })
        .fold(0.0, f32::max)
}

/// Matmul error bound relative to Σ|w·x| of the output. f32: summation order differs from the
/// reference, a few ulps per term at most (1e-5 covers 1536 terms with margin). f16: weights
/// and activations are rounded to 11-bit mantissas and 4-term dots summed in f16, so each product
/// carries ~1e-3 relative error.
fn matmul_tol(b: &WgpuBackend) -> f32 {
    if b.paths().f16 {
        4e-3
    } else {
        1e-5
    }
}

fn check_matmul(
    b: &WgpuBackend,
    w: WeightMatrix,
    dense: &[f32],
    rows: usize,
    cols: usize,
    what: &str,
) {
    let mut rng = StdRng::seed_from_u64(rows as u64 * 31 + cols as u64);
    let id = b.upload_weight(w).unwrap();
    for n in [1usize, 3, 17, 64] {
        let xv = rand_vec(&mut rng, n * cols);
        let x = b.upload(&xv).unwrap();
        let out = b.alloc_f32(n * rows).unwrap();
        b.matmul(id, x, out, n).unwrap();
        let got = b.read_now(out, 0, n * rows).unwrap();
        let (want, mag) = reference::matmul(dense, rows, cols, &xv, n);
        let err = max_rel(&got, &want, &mag, 1e-3);
        assert!(
            err < matmul_tol(b),
            "{what} n={n} {:?}: relative error {err}",
            b.paths()
        );
        // matmul_add: the same sums added to what `out` held (the fused residual epilogue).
        let base = rand_vec(&mut rng, n * rows);
        b.write(out, 0, &base).unwrap();
        b.matmul_add(id, x, out, n).unwrap();
        let summed = b.read_now(out, 0, n * rows).unwrap();
        for ((s, g), r) in summed.iter().zip(&got).zip(&base) {
            assert!(
                (s - (g + r)).abs() <= 1e-6 * (1.0 + g.abs() + r.abs()),
                "{what} n={n} matmul_add: {s} vs {g} + {r}"
            );
        }
        b.free(x);
        b.free(out);
    }
}

/// `matmul_add` of `n` token rows `xv` into an output filled with 0.5; returns the sums (the
/// output less 0.5).
fn matmul_add_to_half(
    b: &WgpuBackend,
    id: lowbit_core::WeightId,
    xv: &[f32],
    n: usize,
    rows: usize,
) -> Vec<f32> {
    let x = b.upload(xv).unwrap();
    let out = b.upload(&vec![0.5; n * rows]).unwrap();
    b.matmul_add(id, x, out, n).unwrap();
    let got = b
        .read_now(out, 0, n * rows)
        .unwrap()
        .iter()
        .map(|v| v - 0.5)
        .collect();
    b.free(x);
    b.free(out);
    got
}

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

/// `rms_norm_qkv_rope` for one decode token on wide and narrow backends (the q|k|v matvec
/// rotates and stores as it writes: no RoPE pass) equals the unfused sequence (norm, matvec into `qkv`,
/// `rope_store_qkv`) on the same backend: q, the stored cache row, and every other cache row
/// untouched. Both RoPE styles, 8/4/3/2-bit, 2080 columns, head dimensions 128 and 32.
#[test]
fn qkv_matvec_with_rope_epilogue() {
    let mut rng = StdRng::seed_from_u64(23);
    // The wide matvec after a norm writing 8-bit blocks for it (XQ8), on every path.
    let mut backends: Vec<(WgpuBackend, &str)> = variants_with(true)
        .into_iter()
        .map(|b| (b, "XQ8=1,WORD_SCALES=0,ROPE=1"))
        .collect();
    // The narrow matvec takes the epilogue too, after the f32 norm or with the norm fused.
    backends.push((backend(false, false), "WIDE=0"));
    backends.push((
        matvec_backend(false, true),
        "WIDE=0,UNROLL=1,ACCUMULATE=0,NORM=1",
    ));
    let cols = 2080;
    let xv = rand_vec(&mut rng, cols);
    let gv: Vec<f32> = rand_vec(&mut rng, cols).iter().map(|v| 1.0 + v).collect();
    for (b, input) in &backends {
        for style in [RopeStyle::Adjacent, RopeStyle::Halves] {
            for (heads, kv_heads, hd, pos0) in [(16usize, 4usize, 128usize, 5usize), (6, 2, 32, 0)]
            {
                for bits in [8u8, 4, 3, 2] {
                    let p = QkvParams {
                        n_tokens: 1,
                        pos0,
                        n_heads: heads,
                        n_kv_heads: kv_heads,
                        head_dim: hd,
                        theta: 10000.0,
                        style,
                    };
                    let (q_dim, kv_dim, rows) = (p.q_dim(), p.kv_dim(), p.row_len());
                    let spec = QuantSpec::new(bits, 32, Scheme::Symmetric).unwrap();
                    let w = quantize(&rand_vec(&mut rng, rows * cols), rows, cols, spec).unwrap();
                    let id = b.upload_weight(WeightMatrix::Quantized(w)).unwrap();
                    let cache_rows = pos0 + 3;
                    let sentinel = rand_vec(&mut rng, cache_rows * kv_dim);
                    let [x, g] = [&xv, &gv].map(|v| b.upload(v).unwrap());
                    let norm = RmsNorm {
                        weight: g,
                        dim: cols,
                        eps: 1e-5,
                    };
                    let run = |fused: bool| {
                        let [kc, vc] = [0; 2].map(|_| b.upload(&sentinel).unwrap());
                        let (h, qkv, q) = (
                            b.alloc_scratch(cols).unwrap(),
                            b.alloc_scratch(rows).unwrap(),
                            b.alloc_f32(q_dim).unwrap(),
                        );
                        if fused {
                            b.rms_norm_qkv_rope(x, &norm, h, id, qkv, q, kc, vc, &p)
                                .unwrap();
                        } else {
                            b.rms_norm_matmul(x, &norm, h, id, qkv, 1).unwrap();
                            b.rope_store_qkv(qkv, q, kc, vc, &p).unwrap();
                        }
                        let cache = cache_rows * kv_dim;
                        let out = [(q, q_dim), (kc, cache), (vc, cache)]
                            .map(|(buf, len)| b.read_now(buf, 0, len).unwrap());
                        for buf in [kc, vc, h, qkv, q] {
                            b.free(buf);
                        }
                        out
                    };
                    let (fused, want) = (run(true), run(false));
                    let what = format!(
                        "{style:?} {heads}/{kv_heads}x{hd} pos {pos0} {bits}-bit {:?}",
                        b.paths()
                    );
                    // The same sums; a fused-norm backend's unfused sequence normalises
                    // inside the matvec instead (rounding apart: matmul_tol).
                    for (i, name) in ["q", "k cache", "v cache"].iter().enumerate() {
                        let mag: Vec<f32> = want[i].iter().map(|v| v.abs().max(1.0)).collect();
                        let err = max_rel(&fused[i], &want[i], &mag, 1e-3);
                        assert!(err < matmul_tol(b).max(1e-4), "{what}: {name} {err}");
                    }
                    // Cache rows other than pos0 keep what they held.
                    for (i, name) in [(1, "k"), (2, "v")] {
                        for (r, row) in fused[i].chunks(kv_dim).enumerate() {
                            if r != pos0 {
                                let held = &sentinel[r * kv_dim..(r + 1) * kv_dim];
                                assert_eq!(row, held, "{what}: {name} row {r}");
                            }
                        }
                    }
                    for buf in [x, g] {
                        b.free(buf);
                    }
                }
            }
        }
        let k = b.compiled_kernels();
        assert!(
            k.iter()
                .any(|l| l.starts_with("matvec[") && l.contains("ROPE=1") && l.contains(input)),
            "the RoPE epilogue never ran with {input}: {k:?}"
        );
    }
}

#[test]
fn rope_store_qkv_equals_rope_and_kv_store() {
    let mut rng = StdRng::seed_from_u64(16);
    let b = backend(false, false);
    for style in [RopeStyle::Adjacent, RopeStyle::Halves] {
        for (n, heads, kv_heads, hd, pos0) in [
            (1usize, 9usize, 3usize, 64usize, 1234usize),
            (7, 4, 4, 96, 5),
            (19, 6, 2, 128, 0),
        ] {
            let p = QkvParams {
                n_tokens: n,
                pos0,
                n_heads: heads,
                n_kv_heads: kv_heads,
                head_dim: hd,
                theta: 10000.0,
                style,
            };
            let (q_dim, kv_dim, row) = (p.q_dim(), p.kv_dim(), p.row_len());
            let src = rand_vec(&mut rng, n * row);
            let part = |off: usize, len: usize| -> Vec<f32> {
                src.chunks_exact(row)
                    .flat_map(|r| r[off..off + len].to_vec())
                    .collect()
            };
            let (mut want_q, mut want_k, want_v) = (
                part(0, q_dim),
                part(q_dim, kv_dim),
                part(q_dim + kv_dim, kv_dim),
            );
            reference::rope(&mut want_q, heads, hd, pos0, 10000.0, style);
            reference::rope(&mut want_k, kv_heads, hd, pos0, 10000.0, style);
            let cache_rows = pos0 + n + 2;
            let sentinel = vec![7.0f32; cache_rows * kv_dim];
            let (qkv, q, kc, vc) = (
                b.upload(&src).unwrap(),
                b.alloc_f32(n * q_dim).unwrap(),
                b.upload(&sentinel).unwrap(),
                b.upload(&sentinel).unwrap(),
            );
            b.rope_store_qkv(qkv, q, kc, vc, &p).unwrap();
            let what = format!("{style:?} n={n} heads={heads}/{kv_heads} hd={hd} pos0={pos0}");
            // One f32 rotation with exact table values: 1e-6.
            let err = max_abs(&b.read_now(q, 0, n * q_dim).unwrap(), &want_q);
            assert!(err < 1e-6, "{what}: q {err}");
            let (k_all, v_all) = (
                b.read_now(kc, 0, cache_rows * kv_dim).unwrap(),
                b.read_now(vc, 0, cache_rows * kv_dim).unwrap(),
            );
            let rows = pos0 * kv_dim..(pos0 + n) * kv_dim;
            let err = max_abs(&k_all[rows.clone()], &want_k);
            assert!(err < 1e-6, "{what}: k {err}");
            assert_eq!(&v_all[rows.clone()], &want_v[..], "{what}: v");
            for all in [&k_all, &v_all] {
                assert!(
                    all[..rows.start].iter().all(|v| *v == 7.0),
                    "{what}: rows before"
                );
                assert!(
                    all[rows.end..].iter().all(|v| *v == 7.0),
                    "{what}: rows after"
                );
            }
            let late = QkvParams {
                pos0: pos0 + 3,
                ..p
            };
            let e = b.rope_store_qkv(qkv, q, kc, vc, &late).unwrap_err();
            assert_eq!(e.code, ErrorCode::ContextOverflow, "{what}");
        }
    }
}

#[test]
fn argmax_and_indirect_embedding() {
    let mut rng = StdRng::seed_from_u64(17);
    let b = backend(false, false);
    // Ties go to the first index; NaN and -inf never win; all -inf/NaN gives 0 (the host rule).
    let big = rand_vec(&mut rng, 50_001);
    let mut cases: Vec<Vec<f32>> = vec![
        big.clone(),
        vec![0.1, 3.0, 3.0, -1.0],
        vec![f32::NAN, -5.0, f32::NAN, -4.0, -4.0],
        vec![f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
        vec![-f32::MAX, f32::NEG_INFINITY],
        vec![2.0; 777],
        // Longer than one argmax workgroup's span (1024): two passes, ties and NaN across
        // workgroups.
        vec![2.0; 3000],
        (0..2500)
            .map(|i| {
                if i % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect(),
        (0..2049).map(|i| i as f32 * 1e-3).collect(),
    ];
    let mut tied = big;
    tied[40_000] = 5.0;
    tied[45_000] = 5.0;
    cases.push(tied);
    let out = b.upload(&[9.0, 9.0, 9.0]).unwrap();
    for (i, v) in cases.iter().enumerate() {
        let x = b.upload(v).unwrap();
        b.argmax(x, v.len(), out, 1).unwrap();
        let got = b.read_now(out, 0, 3).unwrap();
        assert_eq!(got[1], lowbit_core::generate::argmax(v) as f32, "case {i}");
        assert_eq!(
            (got[0], got[2]),
            (9.0, 9.0),
            "case {i}: neighbours untouched"
        );
    }
    assert!(b.argmax(out, 3, out, 0).is_err());
    let kernels = b.compiled_kernels();
    for pass in [
        "PARTIAL=1,PAIRS=0",
        "PARTIAL=0,PAIRS=1",
        "PARTIAL=0,PAIRS=0",
    ] {
        assert!(
            kernels
                .iter()
                .any(|k| k.starts_with("argmax[") && k.contains(pass)),
            "argmax {pass} not compiled: {kernels:?}"
        );
    }

    // embed_indirect reads ids from a device buffer and equals embed of the same ids.
    let (rows, cols) = (300, 96);
    let dense = rand_vec(&mut rng, rows * cols);
    let spec = QuantSpec::new(4, 32, Scheme::Symmetric).unwrap();
    let table = b
        .upload_weight(WeightMatrix::Quantized(
            quantize(&dense, rows, cols, spec).unwrap(),
        ))
        .unwrap();
    let toks = [7u32, 299, 0];
    let ids = b.upload(&[5.0, 7.0, 299.0, 0.0]).unwrap();
    let (direct, indirect) = (
        b.alloc_f32(3 * cols).unwrap(),
        b.alloc_f32(3 * cols).unwrap(),
    );
    b.embed(table, &toks, direct).unwrap();
    b.embed_indirect(table, ids, 1, 3, indirect).unwrap();
    assert_eq!(
        b.read_now(indirect, 0, 3 * cols).unwrap(),
        b.read_now(direct, 0, 3 * cols).unwrap()
    );
    assert!(b.embed_indirect(table, ids, 2, 3, indirect).is_err());

    // A pipelined read: started, more work recorded, then redeemed.
    let pending = lowbit_core::Backend::read(&b, ids, 1, 2);
    b.argmax(ids, 4, out, 0).unwrap();
    assert_eq!(block_on(pending).unwrap(), vec![7.0, 299.0]);
    assert_eq!(b.read_now(out, 0, 1).unwrap(), vec![2.0]);
}

/// Decode attention into a wide output projection (`attention_matmul_add`): the attention
/// writes 8-bit activation blocks (one split, and several merged) in each code order, and the
/// result equals the f32 attention output (checked against the reference), quantized, times the
/// weights, plus the residual.
#[test]
fn attention_feeds_output_projection_q8() {
    let rows = 13usize;
    let mut seed = 40;
    for b in variants_with(true) {
        // 2048 = 16 heads of 128; 2080 = 65 heads of 32 (13 kv heads).
        for (heads, kv_heads, hd) in [(16usize, 4usize, 128usize), (65, 13, 32)] {
            for pos0 in [0usize, 37, 600] {
                for bits in [8u8, 4, 3, 2] {
                    seed += 1;
                    let mut rng = StdRng::seed_from_u64(seed);
                    let p = AttentionParams {
                        n_tokens: 1,
                        pos0,
                        n_heads: heads,
                        n_kv_heads: kv_heads,
                        head_dim: hd,
                        scale: 1.0 / (hd as f32).sqrt(),
                    };
                    let cols = heads * hd;
                    let kv = (pos0 + 1) * kv_heads * hd;
                    let qv: Vec<f32> = rand_vec(&mut rng, cols).iter().map(|v| v * 4.0).collect();
                    let (kvv, vvv) = (rand_vec(&mut rng, kv), rand_vec(&mut rng, kv));
                    let spec = QuantSpec::new(bits, 32, Scheme::Symmetric).unwrap();
                    let q = quantize(&rand_vec(&mut rng, rows * cols), rows, cols, spec).unwrap();
                    let dense = q.dequantize();
                    let o0 = rand_vec(&mut rng, rows);
                    let id = b.upload_weight(WeightMatrix::Quantized(q)).unwrap();
                    let bufs = [&qv, &kvv, &vvv, &o0].map(|v| b.upload(v).unwrap());
                    let [qb, kb, vb, out] = bufs;
                    let scratch = b.alloc_scratch(cols).unwrap();
                    // The f32 output, so the codes compare exactly (a value off by an ulp
                    // may round to the neighbouring code).
                    b.attention(qb, kb, vb, scratch, &p).unwrap();
                    let att = b.read_now(scratch, 0, cols).unwrap();
                    let err = max_abs(&att, &reference::attention(&qv, &kvv, &vvv, &p));
                    assert!(err < 2e-5, "{p:?} {:?}: {err}", b.paths());
                    let (mut want, mag) =
                        reference::matmul(&dense, rows, cols, &reference::q8_blocks(&att), 1);
                    for (w, o) in want.iter_mut().zip(&o0) {
                        *w += o;
                    }
                    b.attention_matmul_add(qb, kb, vb, scratch, &p, id, out)
                        .unwrap();
                    let err = max_rel(&b.read_now(out, 0, rows).unwrap(), &want, &mag, 1e-3);
                    assert!(
                        err < matmul_tol(&b),
                        "attention {heads}x{hd} pos {pos0} + {bits}-bit o {:?}: relative error {err}",
                        b.paths()
                    );
                    for buf in [qb, kb, vb, out, scratch] {
                        b.free(buf);
                    }
                }
            }
        }
        let k = b.compiled_kernels();
        for e in ["attn_split[", "attn_merge["] {
            for order in 0..3 {
                assert!(
                    k.iter().any(|l| l.starts_with(e)
                        && l.contains("Q8_OUT=1")
                        && l.contains(&format!("ORDER={order}"))),
                    "{e} with 8-bit output in order {order} never ran: {k:?}"
                );
            }
        }
    }
}

/// A tiny decode-like step (embed, norm, residual, norm, output matmul) on `b`: the logits,
/// the submissions made while recording, and the submissions in all.
fn tiny_step(b: &WgpuBackend) -> (Vec<f32>, u64, u64) {
    let mut rng = StdRng::seed_from_u64(8);
    let (vocab, dim) = (70, 64);
    let table = b
        .upload_weight(WeightMatrix::Quantized(
            quantize(
                &rand_vec(&mut rng, vocab * dim),
                vocab,
                dim,
                QuantSpec::new(4, 32, Scheme::Symmetric).unwrap(),
            )
            .unwrap(),
        ))
        .unwrap();
    let wn = b.upload(&vec![1.0; dim]).unwrap();
    let (x, h, logits) = (
        b.alloc_f32(dim).unwrap(),
        b.alloc_f32(dim).unwrap(),
        b.alloc_f32(vocab).unwrap(),
    );
    let before = b.submits();
    b.embed(table, &[5], x).unwrap();
    b.rms_norm(x, wn, h, 1, dim, 1e-5).unwrap();
    b.add(x, h, dim).unwrap();
    b.rms_norm(x, wn, h, 1, dim, 1e-5).unwrap();
    b.matmul(table, h, logits, 1).unwrap();
    let recording = b.submits() - before;
    let l = b.read_now(logits, 0, vocab).unwrap();
    (l, recording, b.submits() - before)
}

#[test]
fn a_step_is_one_submission() {
    let (l, recording, submits) = tiny_step(&backend(false, false));
    assert_eq!(recording, 0, "recording must not submit");
    assert_eq!(submits, 1);
    assert!(l.iter().all(|v| v.is_finite()));
}

#[test]
fn errors_are_typed() {
    let b = backend(false, false);
    let e = b.alloc_f32(usize::MAX / 8).unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfMemory);
    assert!(e.message.contains("bytes"), "{e}");
    let x = b.alloc_f32(4).unwrap();
    assert_eq!(
        b.read_now(x, 2, 4).unwrap_err().code,
        ErrorCode::InvalidConfig
    );
    b.free(x);
    assert_eq!(
        b.read_now(x, 0, 1).unwrap_err().code,
        ErrorCode::InvalidConfig
    );
    // Dense matrices of any width upload (padded to whole blocks); an empty one does not.
    let e = b
        .upload_weight(WeightMatrix::F32 {
            rows: 0,
            cols: 20,
            data: Vec::new(),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedModel);
}

#[test]
fn auto_selection_skips_software_adapters() {
    // With the default switches (no allow_software_adapter) lavapipe is not eligible; CI's
    // machine has no GPU, so the answer is either a hardware adapter or "not supported".
    match WgpuBackend::new(&WgpuOptions::from_tuning(&Default::default())) {
        Ok(b) => assert!(
            !b.info().device.contains("Cpu"),
            "picked {}",
            b.info().device
        ),
        Err(e) => assert_eq!(e.code, ErrorCode::WebgpuNotSupported),
    }
}

#[test]
fn profiling_counts_kernels_when_supported() {
    let b = match WgpuBackend::new(&WgpuOptions {
        profiling: true,
        ..WgpuOptions::software()
    }) {
        Ok(b) => b,
        // Lavapipe versions without timestamp queries refuse with a typed error.
        Err(e) => {
            eprintln!("no timestamp queries: {e}");
            return assert_eq!(e.code, ErrorCode::WebgpuNotSupported);
        }
    };
    let x = b.upload(&[1.0; 300]).unwrap();
    b.add(x, x, 300).unwrap();
    b.add(x, x, 300).unwrap();
    assert_eq!(b.read_now(x, 0, 1).unwrap(), vec![4.0]);
    let t = b.kernel_timings().expect("profiling on");
    // The two adds, and the one gap between them (barrier and launch).
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(
        t.iter()
            .any(|k| k.kernel.starts_with("add[") && k.count == 2),
        "{t:?}"
    );
    assert!(
        t.iter()
            .any(|k| k.kernel.starts_with("(between kernels") && k.count == 1),
        "{t:?}"
    );
}

/// A step split into submissions of at most two dispatches (`dispatches_per_submit`) computes
/// the same values as one submission, and does submit several times.
#[test]
fn split_submissions_compute_the_same_step() {
    let split = WgpuBackend::new(&WgpuOptions {
        dispatches_per_submit: Some(2),
        ..WgpuOptions::software()
    })
    .unwrap();
    let (one, _, n1) = tiny_step(&WgpuBackend::new(&WgpuOptions::software()).unwrap());
    let (many, _, n2) = tiny_step(&split);
    assert_eq!(n1, 1);
    assert!(n2 >= 3, "{n2} submissions");
    assert_eq!(one, many);
}

/// The feed-forward block with the SwiGLU applied by the gate|up matvec (`ffn_swiglu`: 8-bit
/// words with their own scales into the down matvec) against the f32 reference and against
/// the same backend's unfused path, for 8-, 4-, 3- and 2-bit weights on every kernel path. Gate
/// and up swapped, or a word's values taken in another order, are off by the whole output.
#[test]
fn ffn_swiglu_epilogue() {
    let mut rng = StdRng::seed_from_u64(31);
    // Rows of 64 blocks and more, so both matvecs are wide; 2080: 65 blocks per down row (the
    // last lane takes a second block) and 65 blocks of SwiGLU output.
    let (dim, width) = (2048usize, 2080usize);
    let xv = rand_vec(&mut rng, dim);
    let gv: Vec<f32> = rand_vec(&mut rng, dim).iter().map(|v| 1.0 + v).collect();
    let wgu = rand_vec(&mut rng, 2 * width * dim);
    let wd = rand_vec(&mut rng, dim * width);
    let normed_ref = reference::rms_norm(&xv, &gv, dim, 1e-5);
    for b in variants_with(true) {
        for bits in [8u8, 4, 3, 2] {
            let spec = QuantSpec::new(bits, 32, Scheme::Symmetric).unwrap();
            let qgu = quantize(&wgu, 2 * width, dim, spec).unwrap();
            let qd = quantize(&wd, dim, width, spec).unwrap();
            let (gu, _) = reference::matmul(&qgu.dequantize(), 2 * width, dim, &normed_ref, 1);
            let h = reference::silu_mul(&gu[..width], &gu[width..]);
            let (down, mag) = reference::matmul(&qd.dequantize(), dim, width, &h, 1);
            let want: Vec<f32> = xv.iter().zip(&down).map(|(a, d)| a + d).collect();
            let mag: Vec<f32> = xv.iter().zip(&mag).map(|(a, m)| a.abs() + m).collect();
            let w_gu = b.upload_weight(WeightMatrix::Quantized(qgu)).unwrap();
            let w_d = b.upload_weight(WeightMatrix::Quantized(qd)).unwrap();
            let run = |fused: bool| {
                let (x, g) = (b.upload(&xv).unwrap(), b.upload(&gv).unwrap());
                let normed = b.alloc_scratch(dim).unwrap();
                let (gate_up, hidden) = (
                    b.alloc_scratch(2 * width).unwrap(),
                    b.alloc_scratch(width).unwrap(),
                );
                let norm = RmsNorm {
                    weight: g,
                    dim,
                    eps: 1e-5,
                };
                if fused {
                    b.ffn_swiglu(x, &norm, normed, w_gu, gate_up, hidden, w_d, 1, width)
                        .unwrap();
                } else {
                    b.rms_norm_matmul(x, &norm, normed, w_gu, gate_up, 1)
                        .unwrap();
                    b.swiglu_matmul_add(gate_up, hidden, w_d, x, 1, width)
                        .unwrap();
                }
                b.read_now(x, 0, dim).unwrap()
            };
            let (fused, unfused) = (run(true), run(false));
            // Both quantize the normed row and the SwiGLU output to 8 bits.
            let e = max_rel(&fused, &want, &mag, 1e-3);
            assert!(e < 1e-2, "{bits}-bit: fused FFN off the reference by {e}");
            let e = max_rel(&fused, &unfused, &mag, 1e-3);
            assert!(e < 1e-2, "{bits}-bit: fused FFN off the unfused one by {e}");
        }
        let k = b.compiled_kernels();
        for define in ["SWIGLU=1", "WORD_SCALES=1"] {
            assert!(
                k.iter()
                    .any(|l| l.starts_with("matvec[") && l.contains(define)),
                "no matvec with {define}: {k:?}"
            );
        }
    }
}

/// Residual adds that prepare the next RMSNorm's input (the fusion pass's hint: the down
/// matvec's epilogue writes g · x as 8-bit words and partial sums of x², and the next gate|up,
/// q|k|v and head matvecs scale by 1 / rms(x)) against the same chain run list by list, for
/// 8-, 4-, 3- and 2-bit weights on every kernel path; and a copy or an add to x between the
/// residual add and the norm, which must leave the prepared input unused.
#[test]
fn residual_add_prepares_next_norm() {
    let mut rng = StdRng::seed_from_u64(37);
    let (dim, width, vocab) = (2048usize, 2080usize, 1000usize);
    let p = QkvParams {
        n_tokens: 1,
        pos0: 3,
        n_heads: 16,
        n_kv_heads: 4,
        head_dim: 128,
        theta: 10000.0,
        style: RopeStyle::Halves,
    };
    let rows = p.row_len();
    let xv = rand_vec(&mut rng, dim);
    let overwrite = rand_vec(&mut rng, dim);
    let gains: [Vec<f32>; 4] =
        [0; 4].map(|_| rand_vec(&mut rng, dim).iter().map(|v| 1.0 + v).collect());
    let mats = [
        (2 * width, dim),
        (dim, width),
        (2 * width, dim),
        (dim, width),
        (rows, dim),
        (vocab, dim),
    ]
    // Scaled so each layer keeps its activations near 1, as trained weights do (unscaled, the
    // chain multiplies every rounding difference by the layer's gain).
    .map(|(r, c)| {
        let s = 1.0 / (c as f32).sqrt();
        let v: Vec<f32> = rand_vec(&mut rng, r * c).iter().map(|v| v * s).collect();
        (v, r, c)
    });
    for b in variants_with(true) {
        for bits in [8u8, 4, 3, 2] {
            let spec = QuantSpec::new(bits, 32, Scheme::Symmetric).unwrap();
            let [gu_a, d_a, gu_b, d_b, qkv_w, head] = mats.each_ref().map(|(v, r, c)| {
                let q = quantize(v, *r, *c, spec).unwrap();
                b.upload_weight(WeightMatrix::Quantized(q)).unwrap()
            });
            let norms = gains.each_ref().map(|g| RmsNorm {
                weight: b.upload(g).unwrap(),
                dim,
                eps: 1e-5,
            });
            let [na, nb, nc, nd] = [&norms[0], &norms[1], &norms[2], &norms[3]];
            // hints: one op list; between: 1 overwrites x after the first residual add,
            // 2 adds to it there.
            let run = |hints: bool, between: u8| {
                let x = b.upload(&xv).unwrap();
                let other = b.upload(&overwrite).unwrap();
                let [normed, hidden, gate_up, qkv] =
                    [dim, width, 2 * width, rows].map(|n| b.alloc_scratch(n).unwrap());
                let q = b.alloc_f32(p.q_dim()).unwrap();
                let cache = (p.pos0 + 1) * p.kv_dim();
                let [kc, vc] = [0; 2].map(|_| b.alloc_f32(cache).unwrap());
                let logits = b.alloc_f32(vocab).unwrap();
                // With hints, the whole chain is one op list (the fusion pass finds each
                // residual add's next norm); without, each block is its own list.
                let mut lists: Vec<Vec<Op>> = Vec::new();
                let ffn = |n: &RmsNorm, gu, d| {
                    calls::ffn_ops(x, n, normed, gu, gate_up, hidden, d, 1, width)
                };
                lists.push(ffn(na, gu_a, d_a));
                match between {
                    1 => lists.push(vec![Op::Copy {
                        src: other,
                        src_offset: 0,
                        dst: x,
                        dst_offset: 0,
                        len: dim,
                    }]),
                    2 => lists.push(vec![Op::Add {
                        dst: x,
                        src: other,
                        len: dim,
                    }]),
                    _ => {}
                }
                lists.push(ffn(nb, gu_b, d_b));
                let mut qkv_list = vec![calls::norm_op(x, nc, normed, 1)];
                qkv_list.extend(calls::qkv_rope_ops(qkv_w, normed, qkv, q, kc, vc, &p));
                lists.push(qkv_list);
                lists.push(ffn(na, gu_a, d_a));
                lists.push(vec![
                    calls::norm_op(x, nd, normed, 1),
                    calls::linear_op(head, normed, logits, 1, false),
                ]);
                if hints {
                    b.run(&lists.concat()).unwrap();
                } else {
                    for ops in &lists {
                        b.run(ops).unwrap();
                    }
                }
                let out = [
                    (x, dim),
                    (q, p.q_dim()),
                    (kc, cache),
                    (vc, cache),
                    (logits, vocab),
                ]
                .map(|(buf, len)| b.read_now(buf, 0, len).unwrap());
                for buf in [x, other, normed, hidden, gate_up, qkv, q, kc, vc, logits] {
                    b.free(buf);
                }
                out
            };
            for between in [0, 1, 2] {
                let (got, want) = (run(true, between), run(false, between));
                // Both quantize each norm's output to 8 bits, per word here and per block
                // there, and the SwiGLU multiplies such differences: errors are measured
                // against each output's largest value.
                for (i, name) in ["x", "q", "k cache", "v cache", "logits"]
                    .iter()
                    .enumerate()
                {
                    let top = want[i].iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    let e = max_abs(&got[i], &want[i]) / top;
                    assert!(
                        e < 1e-2,
                        "{bits}-bit {:?} (between: {between}): {name} off by {e}",
                        b.paths()
                    );
                }
            }
        }
        let k = b.compiled_kernels();
        for defines in [
            ["NORM_OUT=1", "ACCUMULATE=1"],
            ["RMS_IN=1", "SWIGLU=1"],
            ["RMS_IN=1", "ROPE=1"],
            ["RMS_IN=1", "ACCUMULATE=0"],
        ] {
            assert!(
                k.iter()
                    .any(|l| l.starts_with("matvec[") && defines.iter().all(|d| l.contains(d))),
                "no matvec with {defines:?}: {k:?}"
            );
        }
    }
}

/// A residual add preparing the head's norm when the head is split into row pieces (a binding
/// too small for it, as browsers' are for a large vocabulary): every piece scales by the same
/// 1 / rms(x). Against the same chain without the hint.
#[test]
fn prepared_norm_feeds_a_split_head() {
    let mut rng = StdRng::seed_from_u64(41);
    let (dim, width, vocab) = (2048usize, 2080usize, 6000usize);
    // 1 KiB per 4-bit row of 2048 values: gate|up (4160 rows) fits 4.5 MiB, the head does not.
    let b = WgpuBackend::new(&WgpuOptions {
        max_binding_bytes: Some(4608 << 10),
        wide_matvec: true,
        ..WgpuOptions::software()
    })
    .unwrap();
    let spec = QuantSpec::new(4, 32, Scheme::Symmetric).unwrap();
    let mut upload = |r: usize, c: usize| {
        let s = 1.0 / (c as f32).sqrt();
        let v: Vec<f32> = rand_vec(&mut rng, r * c).iter().map(|v| v * s).collect();
        let q = quantize(&v, r, c, spec).unwrap();
        b.upload_weight(WeightMatrix::Quantized(q)).unwrap()
    };
    let (gu, down, head) = (
        upload(2 * width, dim),
        upload(dim, width),
        upload(vocab, dim),
    );
    assert_eq!(b.weight_pieces(gu), Some(1));
    assert_eq!(b.weight_pieces(head), Some(2));
    let xv = rand_vec(&mut rng, dim);
    let [na, nb] = [0; 2].map(|_| {
        let g: Vec<f32> = rand_vec(&mut rng, dim).iter().map(|v| 1.0 + v).collect();
        RmsNorm {
            weight: b.upload(&g).unwrap(),
            dim,
            eps: 1e-5,
        }
    });
    let run = |hint: bool| {
        let x = b.upload(&xv).unwrap();
        let [normed, hidden, gate_up, logits] =
            [dim, width, 2 * width, vocab].map(|n| b.alloc_scratch(n).unwrap());
        let mut ops = calls::ffn_ops(x, &na, normed, gu, gate_up, hidden, down, 1, width);
        let head_ops = [
            calls::norm_op(x, &nb, normed, 1),
            calls::linear_op(head, normed, logits, 1, false),
        ];
        // One list: the fusion pass prepares the head's norm in the down matvec's epilogue.
        if hint {
            ops.extend(head_ops);
            b.run(&ops).unwrap();
        } else {
            b.run(&ops).unwrap();
            b.run(&head_ops).unwrap();
        }
        let out = b.read_now(logits, 0, vocab).unwrap();
        for buf in [x, normed, hidden, gate_up, logits] {
            b.free(buf);
        }
        out
    };
    let (got, want) = (run(true), run(false));
    let top = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let e = max_abs(&got, &want) / top;
    assert!(e < 1e-2, "split head off by {e}");
    let k = b.compiled_kernels();
    assert!(
        k.iter().any(|l| l.starts_with("matvec[")
            && l.contains("RMS_IN=1")
            && l.contains("ACCUMULATE=0")),
        "no head matvec on the prepared norm: {k:?}"
    );
}

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
