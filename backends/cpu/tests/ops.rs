//! Non-matmul operations against direct scalar formulas, on every instruction set available.

mod common;

use common::*;
use lowbit_core::backend::{AttentionParams, Backend, QkvParams, RopeStyle, WeightMatrix};
use lowbit_core::quant::Scheme;
use lowbit_core::ErrorCode;

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: [{i}] got {g}, want {w}");
    }
}

#[test]
fn rope_both_styles() {
    let mut rng = rng(10);
    let (n_tokens, n_heads, hd, pos0, theta) = (3, 2, 8, 5, 10000.0f32);
    for b in backends() {
        for style in [RopeStyle::Adjacent, RopeStyle::Halves] {
            let x = random_vec(&mut rng, n_tokens * n_heads * hd, 1.0);
            let buf = b.upload(&x).unwrap();
            b.rope(buf, n_tokens, n_heads, hd, pos0, theta, style)
                .unwrap();
            let got = b.read(buf, 0, x.len()).unwrap();
            let mut want = x.clone();
            for t in 0..n_tokens {
                for h in 0..n_heads {
                    let base = (t * n_heads + h) * hd;
                    for i in 0..hd / 2 {
                        let ang =
                            (pos0 + t) as f64 * (theta as f64).powf(-2.0 * i as f64 / hd as f64);
                        let (a, c) = match style {
                            RopeStyle::Adjacent => (base + 2 * i, base + 2 * i + 1),
                            RopeStyle::Halves => (base + i, base + i + hd / 2),
                        };
                        let (x0, x1) = (x[a] as f64, x[c] as f64);
                        want[a] = (x0 * ang.cos() - x1 * ang.sin()) as f32;
                        want[c] = (x0 * ang.sin() + x1 * ang.cos()) as f32;
                    }
                }
            }
            // cos/sin rounded to f32 and two f32 products: a few ulp of values ≤ 1.
            assert_close(&got, &want, 1e-5, &format!("rope {style:?}"));
        }
        let buf = b.alloc(10).unwrap();
        assert!(b.rope(buf, 1, 1, 7, 0, 1e4, RopeStyle::Halves).is_err());
        assert!(b.rope(buf, 2, 1, 8, 0, 1e4, RopeStyle::Halves).is_err());
    }
}

#[test]
fn attention_gqa_with_offset() {
    let mut rng = rng(11);
    let (n_tokens, pos0, n_heads, n_kv, hd) = (3, 4, 4, 2, 16);
    let ctx = pos0 + n_tokens;
    let p = AttentionParams {
        n_tokens,
        pos0,
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let q = random_vec(&mut rng, n_tokens * n_heads * hd, 2.0);
    // One extra cache row past the causal window: it must be ignored.
    let k = random_vec(&mut rng, (ctx + 1) * n_kv * hd, 2.0);
    let v = random_vec(&mut rng, (ctx + 1) * n_kv * hd, 2.0);
    let mut want = vec![0.0f32; q.len()];
    for i in 0..n_tokens {
        for h in 0..n_heads {
            let kvh = h / (n_heads / n_kv);
            let qv = &q[(i * n_heads + h) * hd..][..hd];
            let s: Vec<f64> = (0..=pos0 + i)
                .map(|t| {
                    let kt = &k[(t * n_kv + kvh) * hd..][..hd];
                    qv.iter().zip(kt).map(|(a, b)| (a * b) as f64).sum::<f64>() * p.scale as f64
                })
                .collect();
            let z: f64 = s.iter().map(|x| x.exp()).sum();
            for d in 0..hd {
                want[(i * n_heads + h) * hd + d] = s
                    .iter()
                    .enumerate()
                    .map(|(t, st)| st.exp() / z * v[(t * n_kv + kvh) * hd + d] as f64)
                    .sum::<f64>() as f32;
            }
        }
    }
    for b in backends() {
        let (qb, kb, vb) = (
            b.upload(&q).unwrap(),
            b.upload(&k).unwrap(),
            b.upload(&v).unwrap(),
        );
        let out = b.alloc(q.len()).unwrap();
        b.attention(qb, kb, vb, out, &p).unwrap();
        // Softmax weights in f32 (relative ~1e-6) times |v| ≤ 2: 1e-5 absolute.
        assert_close(&b.read(out, 0, q.len()).unwrap(), &want, 1e-5, "attention");
        let short = b.alloc((ctx - 1) * n_kv * hd).unwrap();
        let e = b.attention(qb, short, vb, out, &p).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        let bad = AttentionParams { n_kv_heads: 3, ..p };
        assert!(b.attention(qb, kb, vb, out, &bad).is_err());
    }
}

#[test]
fn rms_norm_silu_add_copy_kv_store() {
    let mut rng = rng(12);
    for b in backends() {
        let (rows, dim, eps) = (3, 40, 1e-5f32);
        let x = random_vec(&mut rng, rows * dim, 3.0);
        let w = random_vec(&mut rng, dim, 1.0);
        let (xb, wb, out) = (
            b.upload(&x).unwrap(),
            b.upload(&w).unwrap(),
            b.alloc(rows * dim).unwrap(),
        );
        b.rms_norm(xb, wb, out, rows, dim, eps).unwrap();
        let mut want = vec![0.0; rows * dim];
        for r in 0..rows {
            let xr = &x[r * dim..(r + 1) * dim];
            let ms: f64 = xr.iter().map(|v| (v * v) as f64).sum::<f64>() / dim as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            for d in 0..dim {
                want[r * dim + d] = (xr[d] as f64 * inv * w[d] as f64) as f32;
            }
        }
        // Outputs are O(3); f32 mean-square and rsqrt: 1e-5 absolute.
        assert_close(
            &b.read(out, 0, rows * dim).unwrap(),
            &want,
            1e-5,
            "rms_norm",
        );
        // In place (x == out) reads a snapshot of x.
        b.rms_norm(xb, wb, xb, rows, dim, eps).unwrap();
        assert_close(
            &b.read(xb, 0, rows * dim).unwrap(),
            &want,
            1e-5,
            "rms_norm in place",
        );
        assert!(b.rms_norm(xb, wb, out, rows + 1, dim, eps).is_err());

        let g = random_vec(&mut rng, 50, 6.0);
        let u = random_vec(&mut rng, 50, 2.0);
        let (gb, ub, ob) = (
            b.upload(&g).unwrap(),
            b.upload(&u).unwrap(),
            b.alloc(50).unwrap(),
        );
        b.silu_mul(gb, ub, ob, 50).unwrap();
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| (*g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64) as f32)
            .collect();
        // exp in f32: relative 1e-6 of values ≤ 12.
        assert_close(&b.read(ob, 0, 50).unwrap(), &want, 2e-5, "silu_mul");
        assert!(b.silu_mul(gb, ub, ob, 51).is_err());

        b.add(ob, ub, 50).unwrap();
        let sum: Vec<f32> = want.iter().zip(&u).map(|(a, b)| a + b).collect();
        assert_close(&b.read(ob, 0, 50).unwrap(), &sum, 2e-5, "add");
        b.add(ub, ub, 50).unwrap();
        let twice: Vec<f32> = u.iter().map(|v| 2.0 * v).collect();
        assert_close(&b.read(ub, 0, 50).unwrap(), &twice, 0.0, "add to itself");

        let dst = b.alloc(10).unwrap();
        b.copy(gb, 5, dst, 2, 8).unwrap();
        assert_close(&b.read(dst, 2, 8).unwrap(), &g[5..13], 0.0, "copy");
        assert!(b.copy(gb, 45, dst, 0, 8).is_err());
        assert!(b.copy(gb, 0, dst, 5, 8).is_err());

        let cache = b.alloc(6 * 4).unwrap();
        let src = b.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
        b.kv_store(src, cache, 3, 2, 4).unwrap();
        assert_close(
            &b.read(cache, 12, 8).unwrap(),
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            0.0,
            "kv_store",
        );
        assert!(b.kv_store(src, cache, 5, 2, 4).is_err());
        assert!(b.read(cache, 20, 5).is_err());
        assert!(b.write(cache, 22, &[0.0; 3]).is_err());
    }
}

#[test]
fn embed_dequantizes_looked_up_rows() {
    let mut rng = rng(13);
    for b in backends() {
        for (bits, scheme) in [
            (4u8, Scheme::Symmetric),
            (3, Scheme::Asymmetric),
            (8, Scheme::Asymmetric),
        ] {
            let (m, codes) = random_matrix(&mut rng, 11, 96, bits, 64, scheme);
            let dense = dequantize(&m, &codes);
            let table = b.upload_weight(WeightMatrix::Quantized(m)).unwrap();
            let out = b.alloc(3 * 96).unwrap();
            b.embed(table, &[7, 0, 10], out).unwrap();
            let want: Vec<f32> = [7, 0, 10]
                .iter()
                .flat_map(|&t| dense[t * 96..(t + 1) * 96].to_vec())
                .collect();
            // Same formula `scale * code + bias` in f32 on both sides.
            assert_close(&b.read(out, 0, 3 * 96).unwrap(), &want, 1e-6, "embed");
            let e = b.embed(table, &[11], out).unwrap_err();
            assert!(e.message.contains("token 11"));
            assert!(b.embed(table, &[0, 1, 2, 3], out).is_err());
        }
    }
}

#[test]
fn registered_and_described() {
    let b = lowbit_core::registry::create_backend(
        "cpu",
        &lowbit_core::registry::BackendOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let info = b.info();
    assert_eq!(info.name, "cpu");
    assert_eq!(info.threads, 2);
    assert!(!info.device.is_empty());
}

/// The fused operations the LLaMA adapter uses compute exactly what the unfused sequences they
/// replace compute, bit for bit.
#[test]
fn fused_ops_equal_their_unfused_sequences() {
    let mut rng = rng(20);
    for b in backends() {
        // rope_store_qkv == copy q/k/v out, rope q and k, kv_store k and v.
        for style in [RopeStyle::Adjacent, RopeStyle::Halves] {
            let p = QkvParams {
                n_tokens: 3,
                pos0: 4,
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 8,
                theta: 10000.0,
                style,
            };
            let (q_dim, kv_dim, row) = (p.q_dim(), p.kv_dim(), p.row_len());
            let src = random_vec(&mut rng, p.n_tokens * row, 2.0);
            let cache_len = (p.pos0 + p.n_tokens + 1) * kv_dim;
            let qkv = b.upload(&src).unwrap();
            let (q, kc, vc) = (
                b.alloc(p.n_tokens * q_dim).unwrap(),
                b.alloc(cache_len).unwrap(),
                b.alloc(cache_len).unwrap(),
            );
            b.rope_store_qkv(qkv, q, kc, vc, &p).unwrap();
            let (uq, uk, uv, ukc, uvc) = (
                b.alloc(p.n_tokens * q_dim).unwrap(),
                b.alloc(p.n_tokens * kv_dim).unwrap(),
                b.alloc(p.n_tokens * kv_dim).unwrap(),
                b.alloc(cache_len).unwrap(),
                b.alloc(cache_len).unwrap(),
            );
            for t in 0..p.n_tokens {
                b.copy(qkv, t * row, uq, t * q_dim, q_dim).unwrap();
                b.copy(qkv, t * row + q_dim, uk, t * kv_dim, kv_dim)
                    .unwrap();
                b.copy(qkv, t * row + q_dim + kv_dim, uv, t * kv_dim, kv_dim)
                    .unwrap();
            }
            let (n, hd, pos0) = (p.n_tokens, p.head_dim, p.pos0);
            b.rope(uq, n, p.n_heads, hd, pos0, p.theta, style).unwrap();
            b.rope(uk, n, p.n_kv_heads, hd, pos0, p.theta, style)
                .unwrap();
            b.kv_store(uk, ukc, pos0, n, kv_dim).unwrap();
            b.kv_store(uv, uvc, pos0, n, kv_dim).unwrap();
            for (fused, plain) in [(q, uq), (kc, ukc), (vc, uvc)] {
                let len = if fused == q { n * q_dim } else { cache_len };
                assert_eq!(
                    b.read(fused, 0, len).unwrap(),
                    b.read(plain, 0, len).unwrap(),
                    "{style:?}"
                );
            }
            let late = QkvParams {
                pos0: p.pos0 + 2,
                ..p
            };
            let e = b.rope_store_qkv(qkv, q, kc, vc, &late).unwrap_err();
            assert_eq!(e.code, ErrorCode::ContextOverflow);
            assert!(b.rope_store_qkv(qkv, q, kc, kc, &p).is_err());
        }

        // matmul_add == matmul into a temporary, then add.
        let (rows, cols) = (37, 64);
        let (m, _) = random_matrix(&mut rng, rows, cols, 4, 32, Scheme::Symmetric);
        let w = b.upload_weight(WeightMatrix::Quantized(m)).unwrap();
        for n in [1usize, 3] {
            let x = b.upload(&random_vec(&mut rng, n * cols, 1.0)).unwrap();
            let base = random_vec(&mut rng, n * rows, 1.0);
            let (acc, tmp, plain) = (
                b.upload(&base).unwrap(),
                b.alloc(n * rows).unwrap(),
                b.upload(&base).unwrap(),
            );
            b.matmul_add(w, x, acc, n).unwrap();
            b.matmul(w, x, tmp, n).unwrap();
            b.add(plain, tmp, n * rows).unwrap();
            assert_eq!(
                b.read(acc, 0, n * rows).unwrap(),
                b.read(plain, 0, n * rows).unwrap()
            );
            assert!(b.matmul_add(w, x, x, n).is_err());
        }

        // swiglu == silu_mul of each row's halves.
        let (n, width) = (3, 40);
        let gu = random_vec(&mut rng, n * 2 * width, 3.0);
        let (gub, out) = (b.upload(&gu).unwrap(), b.alloc(n * width).unwrap());
        b.swiglu(gub, out, n, width).unwrap();
        let got = b.read(out, 0, n * width).unwrap();
        for t in 0..n {
            let r = &gu[t * 2 * width..(t + 1) * 2 * width];
            let (g, u, o) = (
                b.upload(&r[..width]).unwrap(),
                b.upload(&r[width..]).unwrap(),
                b.alloc(width).unwrap(),
            );
            b.silu_mul(g, u, o, width).unwrap();
            assert_eq!(
                &got[t * width..(t + 1) * width],
                &b.read(o, 0, width).unwrap()[..]
            );
        }
        assert!(b.swiglu(gub, out, n + 1, width).is_err());
    }
}
