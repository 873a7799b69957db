//! The op lists of the LLaMA pattern's pieces (norm, linear, q|k|v with RoPE and the cache
//! write, attention, the feed-forward block), as the adapter records them.

use super::{kv_view, AttentionParams, QkvParams, RmsNorm};
use lowbit_core::ops::{Activation, AttentionShape, Cols, Mask, NormKind, Op};
use lowbit_core::{BufferId, WeightId};

pub fn norm_op(x: BufferId, n: &RmsNorm, out: BufferId, rows: usize) -> Op {
    Op::Norm {
        kind: NormKind::Rms,
        x,
        out,
        weight: n.weight,
        bias: None,
        rows,
        dim: n.dim,
        eps: n.eps,
    }
}

pub fn linear_op(w: WeightId, x: BufferId, out: BufferId, n: usize, accumulate: bool) -> Op {
    Op::Linear {
        w,
        bias: None,
        x,
        out,
        n,
        accumulate,
    }
}

/// `Linear(q|k|v) + Rope(q) + Rope(k in place) + KvWrite`, the LLaMA pattern after the norm.
pub fn qkv_rope_ops(
    w: WeightId,
    h: BufferId,
    qkv: BufferId,
    q: BufferId,
    kc: BufferId,
    vc: BufferId,
    p: &QkvParams,
) -> Vec<Op> {
    let mut ops = vec![linear_op(w, h, qkv, p.n_tokens, false)];
    ops.extend(rope_store_ops(qkv, q, kc, vc, p));
    ops
}

/// `Rope(q) + Rope(k in place) + KvWrite` over fused rows `qkv`.
pub fn rope_store_ops(
    qkv: BufferId,
    q: BufferId,
    kc: BufferId,
    vc: BufferId,
    p: &QkvParams,
) -> Vec<Op> {
    let (q_dim, kv_dim, row) = (p.q_dim(), p.kv_dim(), p.row_len());
    let k = Cols::new(qkv, q_dim, row);
    vec![
        Op::Rope {
            x: Cols::new(qkv, 0, row),
            out: Cols::dense(q, q_dim),
            shape: p.rope(p.n_heads),
        },
        Op::Rope {
            x: k,
            out: k,
            shape: p.rope(p.n_kv_heads),
        },
        Op::KvWrite {
            k,
            v: Cols::new(qkv, q_dim + kv_dim, row),
            kv: kv_view(kc, vc, p.n_kv_heads, p.head_dim, p.pos0 + p.n_tokens),
            pos0: p.pos0,
            n_tokens: p.n_tokens,
        },
    ]
}

pub fn attention_op(
    q: BufferId,
    kc: BufferId,
    vc: BufferId,
    out: BufferId,
    p: &AttentionParams,
) -> Op {
    Op::Attention {
        q,
        kv: p.view(kc, vc),
        out,
        shape: AttentionShape {
            n_tokens: p.n_tokens,
            pos0: p.pos0,
            kv_len: p.pos0 + p.n_tokens,
            n_heads: p.n_heads,
            scale: p.scale,
            mask: Mask::Causal,
        },
    }
}

/// `Norm + Linear(gate|up) + Glu{Silu} + Linear(down, accumulate into x)`.
#[allow(clippy::too_many_arguments)]
pub fn ffn_ops(
    x: BufferId,
    n: &RmsNorm,
    h: BufferId,
    w_gu: WeightId,
    gu: BufferId,
    ff: BufferId,
    w_down: WeightId,
    rows: usize,
    width: usize,
) -> Vec<Op> {
    vec![
        norm_op(x, n, h, rows),
        linear_op(w_gu, h, gu, rows, false),
        Op::Glu {
            act: Activation::Silu,
            x: gu,
            out: ff,
            n: rows,
            width,
        },
        linear_op(w_down, ff, x, rows, true),
    ]
}
