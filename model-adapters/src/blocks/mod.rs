//! The reusable pieces of transformer models, recorded as [`Op`]s: norms, a pre-norm decoder
//! attention block (optionally with per-head q/k norms and a norm after it, Gemma's sandwich), a
//! gated feed-forward, a post-norm encoder layer (BERT) and the LM head.
//!
//! Every model family is assembled from these, so each piece is written once. A block holds
//! its weights and shape (plain structs); the buffers it works in are passed per call, and it
//! only appends ops to a list the caller hands to [`lowbit_core::Backend::run`]. Blocks never
//! name a backend or a fused kernel: backends fuse neighbouring ops themselves.

use lowbit_core::ops::{Activation, AttentionShape, Mask, NormKind, RopeShape, RopeStyle};
use lowbit_core::{BufferId, KvView, Op, WeightId};

mod attention;

pub use attention::{DecoderAttention, DecoderAttentionBuffers, QkvProjection, QkvRows};

/// A row-wise norm with its weights.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    /// RMSNorm or LayerNorm.
    pub kind: NormKind,
    /// `dim` per-column weights.
    pub weight: BufferId,
    /// `dim` per-column biases (LayerNorm), if any.
    pub bias: Option<BufferId>,
    /// Values per row.
    pub dim: usize,
    /// Added to the variance (mean square).
    pub eps: f32,
}

impl Norm {
    /// Records the norm of `rows` rows of `x` into `out` (may be `x`: in place).
    pub fn record(&self, ops: &mut Vec<Op>, x: BufferId, out: BufferId, rows: usize) {
        ops.push(Op::Norm {
            kind: self.kind,
            x,
            out,
            weight: self.weight,
            bias: self.bias,
            rows,
            dim: self.dim,
            eps: self.eps,
        });
    }
}

/// How attention heads are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` is a multiple: grouped-query attention).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

impl Heads {
    /// Values of a query row (`n_heads × head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Values of a key (or value) row (`n_kv_heads × head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values of a fused q|k|v row.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// The usual score scale `1/sqrt(head_dim)`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// RoPE parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base of the rotation frequencies.
    pub theta: f32,
    /// Pairing of a head's dimensions.
    pub style: RopeStyle,
}

impl Rope {
    /// The shape of RoPE over `n_tokens` rows of `n_heads` heads from position `pos0`.
    fn shape(&self, n_tokens: usize, n_heads: usize, head_dim: usize, pos0: usize) -> RopeShape {
        RopeShape {
            n_tokens,
            n_heads,
            head_dim,
            pos0,
            theta_bits: self.theta.to_bits(),
            style: self.style,
        }
    }
}

/// `x += W·input` for `n` rows, or `x += norm(W·input)` through `h` (scratch, `n × dim`) when
/// there is a post-norm.
fn record_residual(
    ops: &mut Vec<Op>,
    w: WeightId,
    post_norm: Option<Norm>,
    input: BufferId,
    x: BufferId,
    h: BufferId,
    n: usize,
) {
    let Some(norm) = post_norm else {
        ops.push(Op::Linear {
            w,
            bias: None,
            x: input,
            out: x,
            n,
            accumulate: true,
        });
        return;
    };
    ops.push(Op::Linear {
        w,
        bias: None,
        x: input,
        out: h,
        n,
        accumulate: false,
    });
    norm.record(ops, h, h, n);
    ops.push(Op::Add {
        dst: x,
        src: h,
        len: n * norm.dim,
    });
}

/// Buffers of [`GatedFfn`] over `n` rows.
#[derive(Clone, Copy, Debug)]
pub struct GatedFfnBuffers {
    /// Residual stream (`n × dim`): read, and the block's output added to it.
    pub x: BufferId,
    /// Normalised rows (`n × dim`, scratch).
    pub h: BufferId,
    /// Fused gate|up rows (`n × 2·ffn_dim`, scratch).
    pub gate_up: BufferId,
    /// Gated product (`n × ffn_dim`, scratch).
    pub ff: BufferId,
}

/// Pre-norm gated feed-forward (SwiGLU, GeGLU): norm → gate|up linear → `act(gate) · up` →
/// down projection added to the residual stream (normalised first when the block has a
/// post-norm).
#[derive(Clone, Copy, Debug)]
pub struct GatedFfn {
    /// The norm before the block.
    pub norm: Norm,
    /// Norm of the down projection before the residual add, if any.
    pub post_norm: Option<Norm>,
    /// Stacked projection, rows `gate (ffn_dim) | up (ffn_dim)`.
    pub w_gate_up: WeightId,
    /// Down projection (`dim × ffn_dim`).
    pub w_down: WeightId,
    /// Activation of the gate.
    pub act: Activation,
    /// Hidden size.
    pub ffn_dim: usize,
}

impl GatedFfn {
    /// Records the block for `n` rows.
    pub fn record(&self, ops: &mut Vec<Op>, b: &GatedFfnBuffers, n: usize) {
        self.norm.record(ops, b.x, b.h, n);
        ops.push(Op::Linear {
            w: self.w_gate_up,
            bias: None,
            x: b.h,
            out: b.gate_up,
            n,
            accumulate: false,
        });
        ops.push(Op::Glu {
            act: self.act,
            x: b.gate_up,
            out: b.ff,
            n,
            width: self.ffn_dim,
        });
        record_residual(ops, self.w_down, self.post_norm, b.ff, b.x, b.h, n);
    }
}

/// A linear map with an optional bias.
#[derive(Clone, Copy, Debug)]
pub struct Affine {
    /// The weight (`rows × cols`).
    pub w: WeightId,
    /// `rows` biases.
    pub bias: Option<BufferId>,
}

impl Affine {
    fn record(&self, ops: &mut Vec<Op>, x: BufferId, out: BufferId, n: usize, accumulate: bool) {
        ops.push(Op::Linear {
            w: self.w,
            bias: self.bias,
            x,
            out,
            n,
            accumulate,
        });
    }
}

/// Buffers of [`EncoderLayer`] over `n` rows.
#[derive(Clone, Copy, Debug)]
pub struct EncoderLayerBuffers {
    /// Hidden states (`n × dim`): the layer's input, overwritten by its output.
    pub x: BufferId,
    /// Queries (`n × dim`, scratch).
    pub q: BufferId,
    /// Keys (`n × dim`).
    pub k: BufferId,
    /// Values (`n × dim`).
    pub v: BufferId,
    /// Attention output (`n × dim`, scratch).
    pub att: BufferId,
    /// Feed-forward hidden rows (`n × ffn_dim`, scratch).
    pub ff: BufferId,
}

/// A post-norm encoder layer (BERT): `x = LN(x + attn(x)·Wo + bo)`, then
/// `x = LN(x + act(x·Wup + bup)·Wdown + bdown)`, attention bidirectional over the `n` rows
/// (every row, or the first `valid` ones of a padded input).
#[derive(Clone, Copy, Debug)]
pub struct EncoderLayer {
    /// Query projection.
    pub q: Affine,
    /// Key projection.
    pub k: Affine,
    /// Value projection.
    pub v: Affine,
    /// Attention output projection.
    pub out: Affine,
    /// Norm after the attention residual.
    pub attn_norm: Norm,
    /// Feed-forward up projection.
    pub up: Affine,
    /// Feed-forward down projection.
    pub down: Affine,
    /// Norm after the feed-forward residual.
    pub ffn_norm: Norm,
    /// Activation of the feed-forward.
    pub act: Activation,
    /// Attention heads (`n_heads × head_dim = dim`).
    pub n_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Feed-forward hidden size.
    pub ffn_dim: usize,
}

impl EncoderLayer {
    /// Records the layer over `n` rows; `mask` is [`Mask::None`] or [`Mask::Padding`].
    pub fn record(&self, ops: &mut Vec<Op>, b: &EncoderLayerBuffers, n: usize, mask: Mask) {
        self.q.record(ops, b.x, b.q, n, false);
        self.k.record(ops, b.x, b.k, n, false);
        self.v.record(ops, b.x, b.v, n, false);
        ops.push(Op::Attention {
            q: b.q,
            kv: KvView::over(b.k, b.v, self.n_heads, self.head_dim, n),
            out: b.att,
            shape: AttentionShape {
                n_tokens: n,
                pos0: 0,
                kv_len: n,
                n_heads: self.n_heads,
                scale: 1.0 / (self.head_dim as f32).sqrt(),
                mask,
            },
        });
        self.out.record(ops, b.att, b.x, n, true);
        self.attn_norm.record(ops, b.x, b.x, n);
        self.up.record(ops, b.x, b.ff, n, false);
        ops.push(Op::Activation {
            act: self.act,
            x: b.ff,
            out: b.ff,
            len: n * self.ffn_dim,
        });
        self.down.record(ops, b.ff, b.x, n, true);
        self.ffn_norm.record(ops, b.x, b.x, n);
    }
}

/// The final norm and output projection: logits of `n` rows of `x` (`h` is scratch).
pub fn record_lm_head(
    ops: &mut Vec<Op>,
    norm: &Norm,
    w: WeightId,
    x: BufferId,
    h: BufferId,
    logits: BufferId,
    n: usize,
) {
    norm.record(ops, x, h, n);
    ops.push(Op::Linear {
        w,
        bias: None,
        x: h,
        out: logits,
        n,
        accumulate: false,
    });
}
