//! Op lists a backend may fuse, recorded exactly as the model adapters record them: LLaMA
//! layers (decode and prefill, two layers so the residual add → norm chain appears), a greedy
//! decode step from `Embed` of a device token to `Argmax`, and the pairs GPU backends fuse
//! (norm + linear, attention + linear-accumulate, GLU + linear-accumulate, conv columns +
//! linear).

use super::build::{CaseBuilder, Format};
use super::tolerance::{LINEAR, MODEL};
use super::Case;
use crate::backend::{BufferId, DType, WeightId};
use crate::kv::{KvLayout, KvView};
use crate::ops::{
    Activation, AttentionShape, Cols, Im2col, Mask, NormKind, Op, RopeShape, RopeStyle, TokenIds,
};
use crate::quant::Scheme;

/// Every fused-pattern case.
pub(super) fn fused_patterns() -> Vec<Case> {
    let mut v = Vec::new();
    for f in [
        Format::quant(4, 32, Scheme::Asymmetric),
        Format::quant(8, 32, Scheme::Symmetric),
        Format::quant(2, 32, Scheme::Asymmetric),
    ] {
        v.push(llama_layers(f, 1, 5));
        v.push(llama_layers(f, 7, 0));
    }
    v.push(greedy_steps(Format::quant(4, 32, Scheme::Asymmetric)));
    // In a rotated basis (blocks of 128 columns, 32 for the FFN's 160): every linear rotates
    // its input, so no fused path may hand it anything else; the tied table is looked up and
    // rotated back, and multiplies rotated rows as the output projection.
    for f in [
        Format::rotated(4, 32, Scheme::Asymmetric, 128),
        Format::rotated(3, 64, Scheme::Symmetric, 128),
    ] {
        v.push(llama_layers(f, 1, 5));
        v.push(llama_layers(f, 7, 0));
    }
    v.push(greedy_steps(Format::rotated(
        4,
        64,
        Scheme::Asymmetric,
        128,
    )));
    v.extend(pairs());
    v
}

/// A small LLaMA: GQA with 2 query heads per kv head of 64, an FFN of 160.
const DIM: usize = 128;
const N_HEADS: usize = 2;
const N_KV: usize = 1;
const HEAD_DIM: usize = 64;
const FFN: usize = 160;
const CACHE_ROWS: usize = 16;
const Q_DIM: usize = N_HEADS * HEAD_DIM;
const KV_DIM: usize = N_KV * HEAD_DIM;
const ROW: usize = Q_DIM + 2 * KV_DIM;

/// One layer's weights and cache.
struct Layer {
    attn_norm: BufferId,
    ffn_norm: BufferId,
    wqkv: WeightId,
    wo: WeightId,
    w_gate_up: WeightId,
    w_down: WeightId,
    kv: KvView,
}

/// Scratch buffers of a step of `n` rows.
struct Scratch {
    h: BufferId,
    qkv: BufferId,
    q: BufferId,
    att: BufferId,
    gu: BufferId,
    ff: BufferId,
}

fn layer(b: &mut CaseBuilder, f: Format) -> Layer {
    let norm = |b: &mut CaseBuilder| {
        let w = b.uniform(DIM, 0.5, 1.5);
        b.data(w)
    };
    let attn_norm = norm(b);
    let ffn_norm = norm(b);
    // Cache rows before the step hold earlier tokens; later ones must stay untouched.
    let k = b.input(CACHE_ROWS * KV_DIM);
    let v = b.input(CACHE_ROWS * KV_DIM);
    Layer {
        attn_norm,
        ffn_norm,
        wqkv: b.weight(f, ROW, DIM),
        wo: b.weight(f, DIM, Q_DIM),
        w_gate_up: b.weight(f, 2 * FFN, DIM),
        w_down: b.weight(f, DIM, FFN),
        kv: KvView {
            k,
            v,
            layout: KvLayout {
                n_kv_heads: N_KV,
                head_dim: HEAD_DIM,
                rows: CACHE_ROWS,
                dtype: DType::F32,
                rotated: false,
            },
            side: None,
            ring: None,
        },
    }
}

fn scratch(b: &mut CaseBuilder, n: usize) -> Scratch {
    Scratch {
        h: b.scratch(n * DIM),
        qkv: b.scratch(n * ROW),
        q: b.scratch(n * Q_DIM),
        att: b.scratch(n * Q_DIM),
        gu: b.scratch(n * 2 * FFN),
        ff: b.scratch(n * FFN),
    }
}

fn rms(x: BufferId, out: BufferId, weight: BufferId, rows: usize) -> Op {
    Op::Norm {
        kind: NormKind::Rms,
        x,
        out,
        weight,
        bias: None,
        rows,
        dim: DIM,
        eps: 1e-5,
    }
}

fn linear(w: WeightId, x: BufferId, out: BufferId, n: usize, accumulate: bool) -> Op {
    Op::Linear {
        w,
        bias: None,
        x,
        out,
        n,
        accumulate,
    }
}

/// Records one layer on residual rows `x` exactly as the LLaMA adapter does.
fn record_layer(b: &mut CaseBuilder, l: &Layer, s: &Scratch, x: BufferId, n: usize, pos0: usize) {
    let rope = |n_heads| RopeShape {
        n_tokens: n,
        n_heads,
        head_dim: HEAD_DIM,
        pos0,
        theta_bits: 10_000f32.to_bits(),
        style: RopeStyle::Adjacent,
    };
    let keys = Cols::new(s.qkv, Q_DIM, ROW);
    for op in [
        rms(x, s.h, l.attn_norm, n),
        linear(l.wqkv, s.h, s.qkv, n, false),
        Op::Rope {
            x: Cols::new(s.qkv, 0, ROW),
            out: Cols::dense(s.q, Q_DIM),
            shape: rope(N_HEADS),
        },
        Op::Rope {
            x: keys,
            out: keys,
            shape: rope(N_KV),
        },
        Op::KvWrite {
            k: keys,
            v: Cols::new(s.qkv, Q_DIM + KV_DIM, ROW),
            kv: l.kv,
            pos0,
            n_tokens: n,
        },
        Op::Attention {
            q: s.q,
            kv: l.kv,
            out: s.att,
            shape: AttentionShape {
                n_tokens: n,
                pos0,
                kv_len: pos0 + n,
                n_heads: N_HEADS,
                scale: 1.0 / (HEAD_DIM as f32).sqrt(),
                mask: Mask::Causal,
            },
        },
        linear(l.wo, s.att, x, n, true),
        rms(x, s.h, l.ffn_norm, n),
        linear(l.w_gate_up, s.h, s.gu, n, false),
        Op::Glu {
            act: Activation::Silu,
            x: s.gu,
            out: s.ff,
            n,
            width: FFN,
        },
        linear(l.w_down, s.ff, x, n, true),
    ] {
        b.op(op);
    }
}

/// Two layers on `n` rows at `pos0`; checks the residual and both caches.
fn llama_layers(f: Format, n: usize, pos0: usize) -> Case {
    let step = if n == 1 { "decode" } else { "prefill" };
    let shape = format!("2 layers {step} n={n} pos0={pos0} dim={DIM} heads={N_HEADS}/{N_KV}");
    let mut b = CaseBuilder::new("llama_layer", shape, f.name(), MODEL);
    let layers = [layer(&mut b, f), layer(&mut b, f)];
    let s = scratch(&mut b, n);
    let x = b.input(n * DIM);
    for l in &layers {
        record_layer(&mut b, l, &s, x, n, pos0);
    }
    b.check_all(x);
    for l in &layers {
        b.check_all(l.kv.k);
        b.check_all(l.kv.v);
    }
    b.finish()
}

/// Vocabulary of the greedy steps.
const VOCAB: usize = 50;

/// Two greedy decode steps of a one-layer model with tied embeddings: `Embed` of the token in
/// slot 0, the layer, the output norm, the logits and `Argmax` into slot 1; then the same from
/// slot 1 into slot 0, so the second step reads a token the device chose.
fn greedy_steps(f: Format) -> Case {
    let shape = format!("2 steps pos0=3 vocab={VOCAB} dim={DIM} tied embeddings");
    let mut b = CaseBuilder::new("greedy_step", shape, f.name(), MODEL);
    let l = layer(&mut b, f);
    let table = b.weight(f, VOCAB, DIM);
    let output_norm = {
        let w = b.uniform(DIM, 0.5, 1.5);
        b.data(w)
    };
    let s = scratch(&mut b, 1);
    let tok = b.data(vec![5.0, 0.0]);
    let x = b.zeros(DIM);
    let logits = [b.zeros(VOCAB), b.zeros(VOCAB)];
    for (i, (from, to)) in [(0, 1), (1, 0)].into_iter().enumerate() {
        b.op(Op::Embed {
            table,
            ids: TokenIds::Device {
                buf: tok,
                offset: from,
                n: 1,
            },
            out: x,
        });
        record_layer(&mut b, &l, &s, x, 1, 3 + i);
        b.op(rms(x, s.h, output_norm, 1));
        b.op(linear(table, s.h, logits[i], 1, false));
        b.op(Op::Argmax {
            x: logits[i],
            len: VOCAB,
            out: tok,
            out_offset: to,
        });
    }
    b.check_all(logits[0]);
    b.check_all(logits[1]);
    b.check_index(tok, 1);
    b.check_index(tok, 0);
    b.finish()
}

/// The two-op patterns a backend may run as one kernel.
fn pairs() -> Vec<Case> {
    let mut v = Vec::new();

    // Norm + Linear.
    for (kind, f, n, dim, rows, bias) in [
        (
            NormKind::Rms,
            Format::quant(4, 32, Scheme::Asymmetric),
            1,
            160,
            96,
            false,
        ),
        (NormKind::Layer, Format::F16, 7, 224, 64, true),
        (
            NormKind::Rms,
            Format::rotated(8, 32, Scheme::Symmetric, 32),
            1,
            160,
            96,
            false,
        ),
    ] {
        let shape = format!(
            "{kind:?} {n}x{dim} -> {rows}{}",
            if bias { " +bias" } else { "" }
        );
        let mut b = CaseBuilder::new("norm+linear", shape, f.name(), LINEAR);
        let x = b.input(n * dim);
        let wn = b.uniform(dim, 0.5, 1.5);
        let weight = b.data(wn);
        let nb = bias.then(|| b.input(dim));
        let lb = bias.then(|| b.input(rows));
        let h = b.scratch(n * dim);
        let w = b.weight(f, rows, dim);
        let out = b.zeros(n * rows);
        b.op(Op::Norm {
            kind,
            x,
            out: h,
            weight,
            bias: nb,
            rows: n,
            dim,
            eps: 1e-5,
        });
        b.op(Op::Linear {
            w,
            bias: lb,
            x: h,
            out,
            n,
            accumulate: false,
        });
        b.check_all(out);
        v.push(b.finish());
    }

    // Attention + Linear(accumulate): the output projection into the residual.
    for (f, n, pos0, kv_len, mask, bias) in [
        (
            Format::quant(8, 32, Scheme::Symmetric),
            1,
            9,
            10,
            Mask::Causal,
            false,
        ),
        (Format::F16, 5, 0, 7, Mask::None, true),
        (
            Format::rotated(4, 32, Scheme::Asymmetric, 256),
            1,
            9,
            10,
            Mask::Causal,
            false,
        ),
    ] {
        let (heads, kv_heads, hd) = (4, 2, 64);
        let shape = format!("n={n} pos0={pos0} kv_len={kv_len} heads={heads}/{kv_heads} {mask:?}");
        let mut b = CaseBuilder::new("attention+linear", shape, f.name(), LINEAR);
        let qs = b.random(n * heads * hd, 3.0);
        let q = b.data(qs);
        let k = b.input(kv_len * kv_heads * hd);
        let vv = b.input(kv_len * kv_heads * hd);
        let att = b.scratch(n * heads * hd);
        let w = b.weight(f, 96, heads * hd);
        let lb = bias.then(|| b.input(96));
        let x = b.input(n * 96);
        b.op(Op::Attention {
            q,
            kv: KvView::over(k, vv, kv_heads, hd, kv_len),
            out: att,
            shape: AttentionShape {
                n_tokens: n,
                pos0,
                kv_len,
                n_heads: heads,
                scale: 1.0 / (hd as f32).sqrt(),
                mask,
            },
        });
        b.op(Op::Linear {
            w,
            bias: lb,
            x: att,
            out: x,
            n,
            accumulate: true,
        });
        b.check_all(x);
        v.push(b.finish());
    }

    // Glu + Linear(accumulate): the FFN's down projection into the residual.
    for (act, f, n, width) in [
        (
            Activation::Silu,
            Format::quant(4, 64, Scheme::Symmetric),
            1,
            160,
        ),
        (
            Activation::Gelu,
            Format::quant(3, 32, Scheme::Asymmetric),
            7,
            96,
        ),
        (
            Activation::Silu,
            Format::rotated(2, 32, Scheme::Asymmetric, 64),
            1,
            192,
        ),
    ] {
        let shape = format!("{} n={n} width={width} -> 96", act.name());
        let mut b = CaseBuilder::new("glu+linear", shape, f.name(), LINEAR);
        let gs = b.random(n * 2 * width, 3.0);
        let gu = b.data(gs);
        let ff = b.scratch(n * width);
        let w = b.weight(f, 96, width);
        let x = b.input(n * 96);
        b.op(Op::Glu {
            act,
            x: gu,
            out: ff,
            n,
            width,
        });
        b.op(linear(w, ff, x, n, true));
        b.check_all(x);
        v.push(b.finish());
    }

    // Im2col + Linear(bias) + GELU: Whisper's conv front end and a ViT patch embedding.
    for (name, f, s, out_ch) in [
        (
            "conv1d",
            Format::quant(8, 32, Scheme::Symmetric),
            Im2col {
                channels: 32,
                height: 1,
                width: 20,
                kernel_h: 1,
                kernel_w: 3,
                stride: 1,
                pad: 1,
            },
            48,
        ),
        (
            "patch embed",
            Format::F16,
            Im2col {
                channels: 3,
                height: 8,
                width: 8,
                kernel_h: 4,
                kernel_w: 4,
                stride: 4,
                pad: 0,
            },
            64,
        ),
    ] {
        let rows = s.out_rows();
        let shape = format!(
            "{name} {}x{}x{} -> {rows}x{out_ch}",
            s.channels, s.height, s.width
        );
        let mut b = CaseBuilder::new("im2col+linear", shape, f.name(), LINEAR);
        let x = b.input(s.channels * s.height * s.width);
        let cols = b.scratch(rows * s.row_len());
        let w = b.weight(f, out_ch, s.row_len());
        let bias = Some(b.input(out_ch));
        let out = b.zeros(rows * out_ch);
        b.op(Op::Im2col {
            x,
            out: cols,
            shape: s,
        });
        b.op(Op::Linear {
            w,
            bias,
            x: cols,
            out,
            n: rows,
            accumulate: false,
        });
        b.op(Op::Activation {
            act: Activation::Gelu,
            x: out,
            out,
            len: rows * out_ch,
        });
        b.check_all(out);
        v.push(b.finish());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::{reference, CheckKind};
    use super::*;

    /// The greedy steps' reference logits have a clear winner, so an index check is fair to a
    /// backend that quantizes activations (NMSE within [`MODEL`] puts its logits off by up to
    /// ≈ 0.1 of their spread; the gap is required to be five times that).
    #[test]
    fn greedy_steps_have_a_clear_winner() {
        for f in [
            Format::quant(4, 32, Scheme::Asymmetric),
            Format::rotated(4, 64, Scheme::Asymmetric, 128),
        ] {
            let case = greedy_steps(f);
            let out = reference::run(&case).unwrap();
            for (c, logits) in case.checks.iter().zip(&out) {
                if c.kind != CheckKind::Values {
                    continue;
                }
                let mut s = logits.clone();
                s.sort_by(|a, b| b.total_cmp(a));
                let spread = (s.iter().map(|v| v * v).sum::<f64>() / s.len() as f64).sqrt();
                let gap = s[0] - s[1];
                assert!(
                    gap > 0.5 * spread,
                    "{}: top-2 gap {gap} of spread {spread}",
                    f.name()
                );
            }
        }
    }

    #[test]
    fn every_case_runs_on_the_reference() {
        for case in super::super::cases() {
            let out =
                reference::run(&case).unwrap_or_else(|e| panic!("{} {}: {e}", case.op, case.shape));
            for (c, o) in case.checks.iter().zip(&out) {
                assert_eq!(o.len(), c.len);
                if c.kind == CheckKind::Values {
                    assert!(
                        o.iter().all(|v| v.is_finite()),
                        "{} {}",
                        case.op,
                        case.shape
                    );
                }
            }
        }
    }
}
