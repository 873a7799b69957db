//! Gemma 3's decoder layers as the Gemma 3 adapter records them, for the backends' fusion
//! passes to meet: the embedding scale, separate q/k/v projections with per-head RMSNorm of
//! queries and keys, NeoX RoPE, a sliding-window layer then a global one, the output
//! projections normalised before their residual adds (sandwich norms) and a tanh-GELU GeGLU.

use super::build::{CaseBuilder, Format};
use super::tolerance::MODEL;
use super::Case;
use crate::backend::{BufferId, DType, WeightId};
use crate::kv::{KvLayout, KvView};
use crate::ops::{Activation, AttentionShape, Cols, Mask, NormKind, Op, RopeShape, RopeStyle};
use crate::quant::Scheme;

/// Every Gemma-layer case: decode with the window binding, and prefill.
pub(super) fn gemma_layers() -> Vec<Case> {
    let mut v = Vec::new();
    for f in [
        Format::quant(4, 32, Scheme::Asymmetric),
        Format::quant(8, 32, Scheme::Symmetric),
    ] {
        v.push(two_layers(f, 1, 5));
        v.push(two_layers(f, 7, 0));
    }
    v
}

/// A small Gemma: 4 query heads of 64 on one kv head (queries wider than the residual), an FFN
/// of 160, a window of 3 keys on the local layer.
const DIM: usize = 128;
const N_HEADS: usize = 4;
const N_KV: usize = 1;
const HEAD_DIM: usize = 64;
const FFN: usize = 160;
const WINDOW: usize = 3;
const CACHE_ROWS: usize = 16;
const Q_DIM: usize = N_HEADS * HEAD_DIM;
const KV_DIM: usize = N_KV * HEAD_DIM;

/// One layer's weights, norms, cache and attention kind.
struct Layer {
    norms: [BufferId; 4],
    q_norm: BufferId,
    k_norm: BufferId,
    wq: WeightId,
    wk: WeightId,
    wv: WeightId,
    wo: WeightId,
    w_gate_up: WeightId,
    w_down: WeightId,
    kv: KvView,
    mask: Mask,
    theta: f32,
}

fn layer(b: &mut CaseBuilder, f: Format, local: bool) -> Layer {
    let norm = |b: &mut CaseBuilder, dim| {
        let w = b.uniform(dim, 0.5, 1.5);
        b.data(w)
    };
    let norms = [norm(b, DIM), norm(b, DIM), norm(b, DIM), norm(b, DIM)];
    let (q_norm, k_norm) = (norm(b, HEAD_DIM), norm(b, HEAD_DIM));
    let k = b.input(CACHE_ROWS * KV_DIM);
    let v = b.input(CACHE_ROWS * KV_DIM);
    let (mask, theta) = if local {
        (Mask::Window { window: WINDOW }, 10_000.0)
    } else {
        (Mask::Causal, 1_000_000.0)
    };
    Layer {
        norms,
        q_norm,
        k_norm,
        wq: b.weight(f, Q_DIM, DIM),
        wk: b.weight(f, KV_DIM, DIM),
        wv: b.weight(f, KV_DIM, DIM),
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
        mask,
        theta,
    }
}

/// Scratch buffers of a step of `n` rows.
struct Scratch {
    h: BufferId,
    q: BufferId,
    k: BufferId,
    v: BufferId,
    att: BufferId,
    gu: BufferId,
    ff: BufferId,
}

/// RMSNorm of `rows` rows of `dim` values from `x` into `out`.
fn rms(x: BufferId, out: BufferId, weight: BufferId, rows: usize, dim: usize) -> Op {
    Op::Norm {
        kind: NormKind::Rms,
        x,
        out,
        weight,
        bias: None,
        rows,
        dim,
        eps: 1e-6,
    }
}

fn linear(w: WeightId, x: BufferId, out: BufferId, n: usize) -> Op {
    Op::Linear {
        w,
        bias: None,
        x,
        out,
        n,
        accumulate: false,
    }
}

/// Records one layer on residual rows `x` exactly as the Gemma 3 adapter does.
fn record_layer(b: &mut CaseBuilder, l: &Layer, s: &Scratch, x: BufferId, n: usize, pos0: usize) {
    let rope = |n_heads| RopeShape {
        n_tokens: n,
        n_heads,
        head_dim: HEAD_DIM,
        pos0,
        theta_bits: l.theta.to_bits(),
        style: RopeStyle::Halves,
    };
    let (q, k) = (Cols::dense(s.q, Q_DIM), Cols::dense(s.k, KV_DIM));
    let [attn_norm, post_attn, ffn_norm, post_ffn] = l.norms;
    for op in [
        rms(x, s.h, attn_norm, n, DIM),
        linear(l.wq, s.h, s.q, n),
        linear(l.wk, s.h, s.k, n),
        linear(l.wv, s.h, s.v, n),
        rms(s.q, s.q, l.q_norm, n * N_HEADS, HEAD_DIM),
        rms(s.k, s.k, l.k_norm, n * N_KV, HEAD_DIM),
        Op::Rope {
            x: q,
            out: q,
            shape: rope(N_HEADS),
        },
        Op::Rope {
            x: k,
            out: k,
            shape: rope(N_KV),
        },
        Op::KvWrite {
            k,
            v: Cols::dense(s.v, KV_DIM),
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
                mask: l.mask,
            },
        },
        linear(l.wo, s.att, s.h, n),
        rms(s.h, s.h, post_attn, n, DIM),
        Op::Add {
            dst: x,
            src: s.h,
            len: n * DIM,
        },
        rms(x, s.h, ffn_norm, n, DIM),
        linear(l.w_gate_up, s.h, s.gu, n),
        Op::Glu {
            act: Activation::GeluTanh,
            x: s.gu,
            out: s.ff,
            n,
            width: FFN,
        },
        linear(l.w_down, s.ff, s.h, n),
        rms(s.h, s.h, post_ffn, n, DIM),
        Op::Add {
            dst: x,
            src: s.h,
            len: n * DIM,
        },
    ] {
        b.op(op);
    }
}

/// The embedding scale, then a local and a global layer on `n` rows at `pos0`; checks the
/// residual and both caches.
fn two_layers(f: Format, n: usize, pos0: usize) -> Case {
    let step = if n == 1 { "decode" } else { "prefill" };
    let shape = format!(
        "local+global {step} n={n} pos0={pos0} dim={DIM} heads={N_HEADS}/{N_KV}x{HEAD_DIM} \
         window={WINDOW}"
    );
    let mut b = CaseBuilder::new("gemma3_layer", shape, f.name(), MODEL);
    let layers = [layer(&mut b, f, true), layer(&mut b, f, false)];
    let s = Scratch {
        h: b.scratch(n * DIM),
        q: b.scratch(n * Q_DIM),
        k: b.scratch(n * KV_DIM),
        v: b.scratch(n * KV_DIM),
        att: b.scratch(n * Q_DIM),
        gu: b.scratch(n * 2 * FFN),
        ff: b.scratch(n * FFN),
    };
    let x = b.input(n * DIM);
    b.op(Op::Scale {
        x,
        len: n * DIM,
        factor: (DIM as f32).sqrt(),
    });
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
