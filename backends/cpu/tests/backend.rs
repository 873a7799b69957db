//! CPU-only behaviour around the ops: registration, typed buffers, and bad input refused with
//! `INVALID_CONFIG` (never a panic), leaving buffers as they were.

mod common;

use lowbit_core::backend::{Backend, BufferId, DType, WeightId, WeightMatrix};
use lowbit_core::kv::KvView;
use lowbit_core::ops::{AttentionShape, Cols, Mask, NormKind, Op, RopeShape, RopeStyle, TokenIds};
use lowbit_core::quant::Scheme;
use lowbit_core::{block_on, ErrorCode};
use lowbit_cpu::CpuBackend;

fn read(b: &CpuBackend, buf: BufferId, len: usize) -> Vec<f32> {
    block_on(b.read(buf, 0, len)).unwrap()
}

/// Runs `op` and returns its error message, asserting the code.
fn refused(b: &CpuBackend, op: Op) -> String {
    let e = b.run(&[op]).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig, "{e}");
    e.message
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

#[test]
fn typed_buffers_convert_on_write_and_read() {
    let b = CpuBackend::new(1).unwrap();
    // f16: 1/3 rounds to the nearest half, 65504 is the largest finite one.
    let h = b.alloc(DType::F16, 4).unwrap();
    b.write(h, 1, &[1.0 / 3.0, 65504.0]).unwrap();
    let got = read(&b, h, 4);
    assert_eq!(
        got,
        vec![0.0, half::f16::from_f32(1.0 / 3.0).to_f32(), 65504.0, 0.0]
    );
    // Int8 blocks: scale max/127, so 127·k values are exact and the rest round to the grid.
    let q = b.alloc(DType::Q8Block, 40).unwrap();
    let mut x: Vec<f32> = (0..32).map(|i| i as f32 * 0.5).collect();
    x[31] = 127.0 * 0.25;
    b.write(q, 0, &x).unwrap();
    let got = read(&b, q, 32);
    assert_eq!(got[31], 31.75);
    assert_eq!(got[4], 2.0);
    assert_eq!(got[1], 0.5);
    // A last, partial block may be written whole; a write inside a block is refused.
    b.write(q, 32, &[1.0; 8]).unwrap();
    assert_eq!(read(&b, q, 40)[32..], [1.0; 8]);
    let e = b.write(q, 4, &[1.0; 4]).unwrap_err();
    assert!(e.message.contains("whole blocks"), "{e}");
    // Ops compute on f32 buffers only.
    let out = b.alloc(DType::F32, 4).unwrap();
    let msg = refused(
        &b,
        Op::Copy {
            src: h,
            src_offset: 0,
            dst: out,
            dst_offset: 0,
            len: 4,
        },
    );
    assert!(msg.contains("f16"), "{msg}");
    assert!(block_on(b.read(h, 2, 3)).is_err());
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let b = CpuBackend::new(2).unwrap();
    let w = b
        .upload_weight(WeightMatrix::F32 {
            rows: 4,
            cols: 8,
            data: vec![1.0; 32],
        })
        .unwrap();
    let x = b.upload(&[1.0; 8]).unwrap();
    let small = b.upload(&[1.0; 3]).unwrap();
    let out = b.upload(&[7.0; 4]).unwrap();
    let lin = |x, out, n, bias| Op::Linear {
        w,
        bias,
        x,
        out,
        n,
        accumulate: false,
    };
    assert!(refused(&b, lin(small, out, 1, None)).contains("x holds 3"));
    assert!(refused(&b, lin(x, small, 1, None)).contains("output buffer"));
    assert!(refused(&b, lin(x, out, 2, None)).contains("x holds 8"));
    assert!(refused(&b, lin(x, out, 1, Some(small))).contains("bias"));
    assert!(refused(&b, lin(x, x, 1, None)).contains("distinct"));
    assert!(refused(
        &b,
        Op::Linear {
            w: WeightId(99),
            bias: None,
            x,
            out,
            n: 1,
            accumulate: false
        }
    )
    .contains("unknown CPU weight"));
    assert_eq!(read(&b, out, 4), vec![7.0; 4], "a refused op wrote");

    let norm = |dim| Op::Norm {
        kind: NormKind::Layer,
        x,
        out,
        weight: small,
        bias: None,
        rows: 1,
        dim,
        eps: 1e-5,
    };
    assert!(refused(&b, norm(0)).contains("dim"));
    assert!(refused(&b, norm(4)).contains("weight"));

    let rope = |head_dim, offset| Op::Rope {
        x: Cols::new(x, offset, 8),
        out: Cols::new(x, offset, 8),
        shape: RopeShape {
            n_tokens: 1,
            n_heads: 1,
            head_dim,
            pos0: 3,
            theta_bits: 10_000f32.to_bits(),
            style: RopeStyle::Halves,
        },
    };
    assert!(refused(&b, rope(3, 0)).contains("even"));
    assert!(refused(&b, rope(8, 1)).contains("x holds 8"));
    assert!(refused(&b, rope(8, usize::MAX)).contains("overflows"));

    // KV rows past the cache, and a short value source: neither store is touched.
    let k = b.upload(&[5.0; 8]).unwrap();
    let v = b.upload(&[5.0; 8]).unwrap();
    let kv = KvView::over(k, v, 1, 4, 2);
    let write = |v_src, pos0| Op::KvWrite {
        k: Cols::dense(x, 4),
        v: Cols::dense(v_src, 4),
        kv,
        pos0,
        n_tokens: 1,
    };
    assert!(refused(&b, write(x, 2)).contains("past the cache"));
    assert!(refused(&b, write(small, 0)).contains("values holds 3"));
    assert_eq!(read(&b, k, 8), vec![5.0; 8]);

    let att = |kv, n_heads, kv_len, mask| Op::Attention {
        q: x,
        kv,
        out,
        shape: AttentionShape {
            n_tokens: 1,
            pos0: 0,
            kv_len,
            n_heads,
            scale: 0.5,
            mask,
        },
    };
    assert!(refused(&b, att(kv, 1, 3, Mask::None)).contains("kv_len"));
    assert!(refused(&b, att(kv, 1, 2, Mask::Padding { valid: 3 })).contains("padding"));
    let two_heads = KvView::over(k, v, 2, 2, 2);
    assert!(refused(&b, att(two_heads, 3, 2, Mask::Causal)).contains("multiple"));

    let table = b
        .upload_weight(WeightMatrix::F32 {
            rows: 2,
            cols: 4,
            data: vec![0.0; 8],
        })
        .unwrap();
    let embed = |ids| Op::Embed { table, ids, out };
    assert!(refused(&b, embed(TokenIds::Host(vec![0, 2]))).contains("token 2"));
    assert!(refused(&b, embed(TokenIds::Host(vec![0, 1]))).contains("output buffer"));
    assert!(refused(
        &b,
        embed(TokenIds::Device {
            buf: small,
            offset: 2,
            n: 2
        })
    )
    .contains("ids"));

    assert!(refused(
        &b,
        Op::Argmax {
            x,
            len: 8,
            out,
            out_offset: 4
        }
    )
    .contains("output buffer"));
    assert!(refused(
        &b,
        Op::Copy {
            src: x,
            src_offset: usize::MAX,
            dst: out,
            dst_offset: 0,
            len: 2
        }
    )
    .contains("source"));
    b.free(small);
    assert!(refused(&b, lin(small, out, 1, None)).contains("unknown CPU buffer"));
    assert_eq!(read(&b, out, 4), vec![7.0; 4], "a refused op wrote");
}

#[test]
fn inconsistent_weights_are_refused() {
    let b = CpuBackend::new(1).unwrap();
    assert!(b
        .upload_weight(WeightMatrix::F32 {
            rows: 4,
            cols: 8,
            data: vec![0.0; 31]
        })
        .is_err());
    let mut rng = common::rng(4);
    let (mut m, _) = common::random_matrix(&mut rng, 4, 64, 3, 32, Scheme::Asymmetric);
    m.offsets.pop();
    assert!(b.upload_weight(WeightMatrix::Quantized(m)).is_err());
}

/// A quantized KV store (`DType::QBlock`) holds what the reference quantizer gives, and
/// attention over it equals attention over an f32 store holding those same values: the kernel
/// reads the blocks as stored, nothing else differs.
#[test]
fn quantized_kv_attention_reads_the_stored_values() {
    let b = CpuBackend::new(2).unwrap();
    let (n_kv, hd, rows, n_heads) = (2usize, 64usize, 8usize, 4usize);
    let row = n_kv * hd;
    let n = 5;
    let src: Vec<f32> = (0..n * row)
        .map(|i| ((i * 7919 % 613) as f32 / 306.0 - 1.0) * (1.0 + (i % 7) as f32 * 0.3))
        .collect();
    let vsrc: Vec<f32> = src.iter().rev().map(|x| 0.5 * x + 0.1).collect();
    let (ks, vs) = (b.upload(&src).unwrap(), b.upload(&vsrc).unwrap());
    for bits in [8u8, 4, 3, 2] {
        let dtype = DType::q_block(bits, 32).unwrap();
        let (kq, vq) = (
            b.alloc(dtype, rows * row).unwrap(),
            b.alloc(dtype, rows * row).unwrap(),
        );
        let layout = lowbit_core::kv::KvLayout {
            n_kv_heads: n_kv,
            head_dim: hd,
            rows,
            dtype,
            rotated: false,
        };
        let qkv = KvView {
            k: kq,
            v: vq,
            layout,
            side: None,
            ring: None,
        };
        // Two writes (prefill, then decode-like rows) at their cache positions.
        for (pos0, first, count) in [(0usize, 0usize, 3usize), (3, 3, 2)] {
            b.run(&[Op::KvWrite {
                k: Cols::new(ks, first * row, row),
                v: Cols::new(vs, first * row, row),
                kv: qkv,
                pos0,
                n_tokens: count,
            }])
            .unwrap();
        }
        let (kback, vback) = (read(&b, kq, n * row), read(&b, vq, n * row));
        let want = lowbit_core::conformance::reference::stored(dtype, &src);
        for (i, (g, w)) in kback.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{bits} bits, key {i}: {g} vs {w}"
            );
        }
        let (kf, vf) = (
            b.upload(&[kback.clone(), vec![0.0; (rows - n) * row]].concat())
                .unwrap(),
            b.upload(&[vback, vec![0.0; (rows - n) * row]].concat())
                .unwrap(),
        );
        let fkv = KvView::over(kf, vf, n_kv, hd, rows);
        let q: Vec<f32> = (0..2 * n_heads * hd)
            .map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0)
            .collect();
        let qb = b.upload(&q).unwrap();
        let att = |kv: KvView, out: BufferId| Op::Attention {
            q: qb,
            kv,
            out,
            shape: AttentionShape {
                n_tokens: 2,
                pos0: 3,
                kv_len: n,
                n_heads,
                scale: 0.125,
                mask: Mask::Causal,
            },
        };
        let (oq, of) = (
            b.alloc(DType::F32, 2 * n_heads * hd).unwrap(),
            b.alloc(DType::F32, 2 * n_heads * hd).unwrap(),
        );
        b.run(&[att(qkv, oq), att(fkv, of)]).unwrap();
        let (a, c) = (
            read(&b, oq, 2 * n_heads * hd),
            read(&b, of, 2 * n_heads * hd),
        );
        for (i, (x, y)) in a.iter().zip(&c).enumerate() {
            assert!((x - y).abs() <= 1e-5, "{bits} bits, output {i}: {x} vs {y}");
        }
        // Rows that do not hold whole blocks are refused, the store untouched.
        let odd = DType::q_block(bits, 96).unwrap();
        let (ko, vo) = (
            b.alloc(odd, rows * row).unwrap(),
            b.alloc(odd, rows * row).unwrap(),
        );
        let bad = KvView {
            k: ko,
            v: vo,
            layout: lowbit_core::kv::KvLayout {
                dtype: odd,
                ..layout
            },
            side: None,
            ring: None,
        };
        let msg = refused(
            &b,
            Op::KvWrite {
                k: Cols::new(ks, 0, row),
                v: Cols::new(vs, 0, row),
                kv: bad,
                pos0: 0,
                n_tokens: 1,
            },
        );
        assert!(msg.contains("whole blocks"), "{msg}");
    }
}

/// A rotated KV layout (each head stored as `H x / √head_dim`) gives the attention of the
/// unrotated one: exactly up to rounding in f32, and within the quantization's error in 8-bit
/// blocks (where rotation is what makes narrow widths usable).
#[test]
fn rotated_kv_attention_equals_the_plain_one() {
    let b = CpuBackend::new(2).unwrap();
    let (n_kv, hd, rows, n_heads, n) = (2usize, 64usize, 6usize, 4usize, 6usize);
    let row = n_kv * hd;
    let src: Vec<f32> = (0..n * row)
        .map(|i| ((i * 7919 % 613) as f32 / 306.0 - 1.0) + if i % 64 == 5 { 6.0 } else { 0.0 })
        .collect();
    let vsrc: Vec<f32> = src.iter().rev().map(|x| 0.5 * x + 0.1).collect();
    let (ks, vs) = (b.upload(&src).unwrap(), b.upload(&vsrc).unwrap());
    let q: Vec<f32> = (0..n * n_heads * hd)
        .map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0)
        .collect();
    let qb = b.upload(&q).unwrap();
    let attend = |dtype: DType, rotated: bool| -> Vec<f32> {
        let layout = lowbit_core::kv::KvLayout {
            n_kv_heads: n_kv,
            head_dim: hd,
            rows,
            dtype,
            rotated,
        };
        let kv = KvView {
            k: b.alloc(dtype, rows * row).unwrap(),
            v: b.alloc(dtype, rows * row).unwrap(),
            layout,
            side: None,
            ring: None,
        };
        let out = b.alloc(DType::F32, n * n_heads * hd).unwrap();
        b.run(&[
            Op::KvWrite {
                k: Cols::dense(ks, row),
                v: Cols::dense(vs, row),
                kv,
                pos0: 0,
                n_tokens: n,
            },
            Op::Attention {
                q: qb,
                kv,
                out,
                shape: AttentionShape {
                    n_tokens: n,
                    pos0: 0,
                    kv_len: n,
                    n_heads,
                    scale: 0.125,
                    mask: Mask::Causal,
                },
            },
        ])
        .unwrap();
        read(&b, out, n * n_heads * hd)
    };
    let plain = attend(DType::F32, false);
    let max_diff = |a: &[f32]| {
        a.iter()
            .zip(&plain)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(max_diff(&attend(DType::F32, true)) < 1e-5);
    let q8 = DType::q_block(8, 32).unwrap();
    let (rot, unrot) = (max_diff(&attend(q8, true)), max_diff(&attend(q8, false)));
    assert!(rot < 0.05, "8-bit rotated: {rot}");
    assert!(unrot < 0.1, "8-bit: {unrot}");
}

/// A quantized cache with full-precision sinks and a recent window: a query whose keys all lie
/// in the window (or the sinks) attends exactly as over f32 rows, even at 2 bits; writes
/// longer than the window are refused.
#[test]
fn recent_window_rows_are_read_at_full_precision() {
    let b: std::sync::Arc<dyn Backend> = std::sync::Arc::new(CpuBackend::new(2).unwrap());
    let (n_kv, hd, rows, n_heads) = (1usize, 64usize, 12usize, 2usize);
    let row = n_kv * hd;
    let src: Vec<f32> = (0..rows * row)
        .map(|i| (i * 7919 % 613) as f32 / 306.0 - 1.0)
        .collect();
    let ks = b.upload(&src).unwrap();
    let vs = b
        .upload(&src.iter().map(|x| x * 0.5).collect::<Vec<_>>())
        .unwrap();
    let q: Vec<f32> = (0..n_heads * hd)
        .map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0)
        .collect();
    let qb = b.upload(&q).unwrap();
    // Attention of one query at position `pos` over a cache written `step` rows at a time.
    let attend = |dtype: DType, sinks: usize, window: usize, pos: usize, step: usize| {
        let layout = lowbit_core::kv::KvLayout {
            n_kv_heads: n_kv,
            head_dim: hd,
            rows,
            dtype,
            rotated: dtype != DType::F32,
        };
        let cache =
            lowbit_core::KvCache::with_side(b.clone(), 1, layout, sinks, window, false, None)
                .unwrap();
        let kv = cache.layer(0).unwrap();
        for p0 in (0..=pos).step_by(step) {
            let count = step.min(pos + 1 - p0);
            b.run(&[Op::KvWrite {
                k: Cols::new(ks, p0 * row, row),
                v: Cols::new(vs, p0 * row, row),
                kv,
                pos0: p0,
                n_tokens: count,
            }])
            .unwrap();
        }
        let out = b.alloc(DType::F32, n_heads * hd).unwrap();
        b.run(&[Op::Attention {
            q: qb,
            kv,
            out,
            shape: AttentionShape {
                n_tokens: 1,
                pos0: pos,
                kv_len: pos + 1,
                n_heads,
                scale: 0.125,
                mask: Mask::Causal,
            },
        }])
        .unwrap();
        block_on(b.read(out, 0, n_heads * hd)).unwrap()
    };
    let q2 = DType::q_block(2, 32).unwrap();
    let diff = |a: &[f32], c: &[f32]| {
        a.iter()
            .zip(c)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    // Query at 9: the window of 10 covers rows 0..=9.
    let exact = attend(DType::F32, 0, 0, 9, 3);
    assert!(diff(&attend(q2, 0, 10, 9, 3), &exact) < 1e-5);
    // Sinks 0..4 and a window of 6 (rows 4..=9) cover all too.
    assert!(diff(&attend(q2, 4, 6, 9, 3), &exact) < 1e-5);
    // A window of 3 leaves rows 0..=6 at 2 bits: no longer exact.
    assert!(diff(&attend(q2, 0, 3, 9, 3), &exact) > 1e-3);
    // A write of more rows than the window is refused.
    let layout = lowbit_core::kv::KvLayout {
        n_kv_heads: n_kv,
        head_dim: hd,
        rows,
        dtype: q2,
        rotated: true,
    };
    let cache = lowbit_core::KvCache::with_side(b.clone(), 1, layout, 0, 2, false, None).unwrap();
    let e = b
        .run(&[Op::KvWrite {
            k: Cols::new(ks, 0, row),
            v: Cols::new(vs, 0, row),
            kv: cache.layer(0).unwrap(),
            pos0: 0,
            n_tokens: 3,
        }])
        .unwrap_err();
    assert!(e.message.contains("at most"), "{e}");
}

/// Keys quantized per channel (KIVI): a query reads its window at full precision and older
/// keys as each channel's block of `group` tokens was quantized, values per token, exactly as
/// the reference quantizer gives them.
#[test]
fn keys_per_channel_are_quantized_in_token_groups() {
    let b: std::sync::Arc<dyn Backend> = std::sync::Arc::new(CpuBackend::new(2).unwrap());
    let (hd, rows, n_heads, g, window) = (64usize, 80usize, 2usize, 32usize, 32usize);
    let src: Vec<f32> = (0..rows * hd)
        .map(|i| (i * 7919 % 613) as f32 / 306.0 - 1.0 + if i % hd == 3 { 4.0 } else { 0.0 })
        .collect();
    let vsrc: Vec<f32> = src.iter().map(|x| x * 0.5 - 0.2).collect();
    let (ks, vs) = (b.upload(&src).unwrap(), b.upload(&vsrc).unwrap());
    let q: Vec<f32> = (0..n_heads * hd)
        .map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0)
        .collect();
    let qb = b.upload(&q).unwrap();
    let dtype = DType::q_block(4, g).unwrap();
    let layout = lowbit_core::kv::KvLayout {
        n_kv_heads: 1,
        head_dim: hd,
        rows,
        dtype,
        rotated: false,
    };
    assert!(lowbit_core::KvCache::with_side(b.clone(), 1, layout, 0, g - 1, true, None).is_err());
    let cache =
        lowbit_core::KvCache::with_side(b.clone(), 1, layout, 0, window, true, None).unwrap();
    let kv = cache.layer(0).unwrap();
    let pos = rows - 1;
    for p0 in (0..rows).step_by(20) {
        b.run(&[Op::KvWrite {
            k: Cols::new(ks, p0 * hd, hd),
            v: Cols::new(vs, p0 * hd, hd),
            kv,
            pos0: p0,
            n_tokens: 20,
        }])
        .unwrap();
    }
    let att = |kv: KvView, out: BufferId| Op::Attention {
        q: qb,
        kv,
        out,
        shape: AttentionShape {
            n_tokens: 1,
            pos0: pos,
            kv_len: rows,
            n_heads,
            scale: 0.125,
            mask: Mask::Causal,
        },
    };
    let out = b.alloc(DType::F32, n_heads * hd).unwrap();
    b.run(&[att(kv, out)]).unwrap();
    let got = block_on(b.read(out, 0, n_heads * hd)).unwrap();
    // The expected rows: keys older than the window per channel over token groups, values per
    // token, the window exact.
    let old = pos + 1 - window;
    let (mut k_exp, mut v_exp) = (src.clone(), vsrc.clone());
    // (a group is quantized over all its tokens, some of which may still be in the window)
    for grp in 0..old.div_ceil(g) {
        for c in 0..hd {
            let col: Vec<f32> = (0..g).map(|j| src[(grp * g + j) * hd + c]).collect();
            for (j, v) in lowbit_core::conformance::reference::stored(dtype, &col)
                .into_iter()
                .enumerate()
            {
                if grp * g + j < old {
                    k_exp[(grp * g + j) * hd + c] = v as f32;
                }
            }
        }
    }
    let v_q = lowbit_core::conformance::reference::stored(dtype, &vsrc[..old * hd]);
    for (d, v) in v_exp.iter_mut().zip(v_q) {
        *d = v as f32;
    }
    let fkv = KvView::over(
        b.upload(&k_exp).unwrap(),
        b.upload(&v_exp).unwrap(),
        1,
        hd,
        rows,
    );
    let want_buf = b.alloc(DType::F32, n_heads * hd).unwrap();
    b.run(&[att(fkv, want_buf)]).unwrap();
    let want = block_on(b.read(want_buf, 0, n_heads * hd)).unwrap();
    for (i, (x, y)) in got.iter().zip(&want).enumerate() {
        assert!((x - y).abs() <= 1e-5, "output {i}: {x} vs {y}");
    }
}

/// A sliding-window ring (StreamingLLM: `sinks` leading tokens plus the last `window`) gives,
/// write after write past its rows, the attention over exactly those tokens, computed here by
/// hand; a write larger than the ring allows is refused.
#[test]
fn sliding_window_ring_attends_to_sinks_and_the_window() {
    use lowbit_core::kv::KvRing;
    let b = CpuBackend::new(2).unwrap();
    let (n_kv, hd, n_heads) = (2usize, 16usize, 4usize);
    let row = n_kv * hd;
    let n = 40;
    for sinks in [0usize, 3] {
        let ring = KvRing::new(sinks, 5, 3, 1);
        assert!(
            ring.rows() < n / 2,
            "the ring must be much shorter than the sequence"
        );
        let kvals: Vec<f32> = (0..n * row)
            .map(|i| ((i * 7919 % 613) as f32 / 306.0 - 1.0) * 0.8)
            .collect();
        let vvals: Vec<f32> = (0..n * row)
            .map(|i| (i * 104_729 % 401) as f32 / 200.0 - 1.0)
            .collect();
        let qvals: Vec<f32> = (0..n * n_heads * hd)
            .map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0)
            .collect();
        let (ks, vs) = (b.upload(&kvals).unwrap(), b.upload(&vvals).unwrap());
        let rows = ring.rows();
        let kv = KvView {
            ring: Some(ring),
            ..KvView::over(
                b.alloc(DType::F32, rows * row).unwrap(),
                b.alloc(DType::F32, rows * row).unwrap(),
                n_kv,
                hd,
                rows,
            )
        };
        let out = b.alloc(DType::F32, 3 * n_heads * hd).unwrap();
        let (mut pos0, mut step) = (0usize, 0usize);
        while pos0 < n {
            let count = [3usize, 1, 2][step % 3].min(n - pos0);
            step += 1;
            b.run(&[
                Op::KvWrite {
                    k: Cols::new(ks, pos0 * row, row),
                    v: Cols::new(vs, pos0 * row, row),
                    kv,
                    pos0,
                    n_tokens: count,
                },
                Op::Attention {
                    q: b.upload(&qvals[pos0 * n_heads * hd..(pos0 + count) * n_heads * hd])
                        .unwrap(),
                    kv,
                    out,
                    shape: AttentionShape {
                        n_tokens: count,
                        pos0,
                        kv_len: pos0 + count,
                        n_heads,
                        scale: 0.25,
                        mask: Mask::Causal,
                    },
                },
            ])
            .unwrap();
            let got = read(&b, out, count * n_heads * hd);
            for i in 0..count {
                let p = pos0 + i;
                let seen: Vec<usize> = (0..=p).filter(|&t| t < sinks || t + 5 > p).collect();
                for h in 0..n_heads {
                    let g = h / (n_heads / n_kv);
                    let q = &qvals[(p * n_heads + h) * hd..][..hd];
                    let logits: Vec<f32> = seen
                        .iter()
                        .map(|&t| {
                            let k = &kvals[t * row + g * hd..][..hd];
                            0.25 * q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f32::MIN, f32::max);
                    let w: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
                    let z: f32 = w.iter().sum();
                    for d in 0..hd {
                        let want: f32 = seen
                            .iter()
                            .zip(&w)
                            .map(|(&t, wt)| wt * vvals[t * row + g * hd + d])
                            .sum::<f32>()
                            / z;
                        let have = got[(i * n_heads + h) * hd + d];
                        assert!(
                            (have - want).abs() <= 1e-5,
                            "sinks {sinks}, position {p}, head {h}, dim {d}: {have} vs {want}"
                        );
                    }
                }
            }
            pos0 += count;
        }
        let msg = refused(
            &b,
            Op::KvWrite {
                k: Cols::new(ks, 0, row),
                v: Cols::new(vs, 0, row),
                kv,
                pos0: n,
                n_tokens: ring.max_write() + 1,
            },
        );
        assert!(msg.contains("at most"), "{msg}");
    }
}
