//! Fused epilogues between ops: attention writing 8-bit blocks for the output projection, the
//! gate|up matvec applying the SwiGLU, and residual adds preparing the next RMSNorm's input
//! (also for a head split into row pieces), each against the reference or the unfused path.

use crate::calls::{self, AttentionParams, Calls, QkvParams, RmsNorm};
use crate::reference;
use crate::{matmul_tol, max_abs, max_rel, rand_vec, variants_with};
use lowbit_core::ops::{Op, RopeStyle};
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

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
