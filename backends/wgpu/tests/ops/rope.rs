//! RoPE and the key/value cache write: the q|k|v matvec's RoPE epilogue against the unfused
//! sequence, `Rope` + `KvWrite` against the reference (and a write past the cache refused),
//! and RoPE between disjoint views of one buffer.

use crate::calls::{Calls, QkvParams, RmsNorm};
use crate::reference;
use crate::{backend, matmul_tol, matvec_backend, max_abs, max_rel, rand_vec, variants_with};
use lowbit_core::ops::{Cols, Op, RopeStyle};
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, ErrorCode, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::WgpuBackend;
use rand::rngs::StdRng;
use rand::SeedableRng;

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

/// RoPE between two views of one buffer that share no element (each row's first half rotated
/// into its second half) equals RoPE between two buffers; overlapping views that are not the
/// same view are refused.
#[test]
fn rope_between_disjoint_views_of_one_buffer() {
    let b = backend(false, false);
    let mut rng = StdRng::seed_from_u64(53);
    let (n, heads, hd) = (3usize, 2usize, 16usize);
    let width = heads * hd;
    let shape = lowbit_core::ops::RopeShape {
        n_tokens: n,
        n_heads: heads,
        head_dim: hd,
        pos0: 5,
        theta_bits: 10_000f32.to_bits(),
        style: RopeStyle::Halves,
    };
    let rows = rand_vec(&mut rng, n * 2 * width);
    // Reference: the first halves as their own buffer, rotated into another.
    let firsts: Vec<f32> = rows
        .chunks(2 * width)
        .flat_map(|r| r[..width].to_vec())
        .collect();
    let (src, dst) = (b.upload(&firsts).unwrap(), b.alloc_f32(n * width).unwrap());
    b.run(&[Op::Rope {
        x: Cols::dense(src, width),
        out: Cols::dense(dst, width),
        shape,
    }])
    .unwrap();
    let want = b.read_now(dst, 0, n * width).unwrap();
    let both = b.upload(&rows).unwrap();
    b.run(&[Op::Rope {
        x: Cols::new(both, 0, 2 * width),
        out: Cols::new(both, width, 2 * width),
        shape,
    }])
    .unwrap();
    let got = b.read_now(both, 0, n * 2 * width).unwrap();
    for t in 0..n {
        let row = &got[t * 2 * width..(t + 1) * 2 * width];
        assert_eq!(&row[..width], &rows[t * 2 * width..t * 2 * width + width]);
        assert_eq!(&row[width..], &want[t * width..(t + 1) * width], "row {t}");
    }
    let overlapping = b.run(&[Op::Rope {
        x: Cols::new(both, 0, 2 * width),
        out: Cols::new(both, 4, 2 * width),
        shape,
    }]);
    assert_eq!(overlapping.unwrap_err().code, ErrorCode::InvalidConfig);
}
