//! Pre-norm decoder self-attention: the LLaMA form (one stacked q|k|v projection) and Gemma 3's
//! (separate projections, per-head q/k norms, a norm after the block, a sliding window).

use super::{record_residual, Heads, Norm, Rope};
use lowbit_core::ops::{AttentionShape, Cols, Mask};
use lowbit_core::{BufferId, KvView, Op, WeightId};

/// Buffers of [`DecoderAttention`] over `n` rows.
#[derive(Clone, Copy, Debug)]
pub struct DecoderAttentionBuffers {
    /// Residual stream (`n × dim`): read, and the block's output added to it.
    pub x: BufferId,
    /// Normalised rows (`n × dim`, scratch); also the output projection before a post-norm.
    pub h: BufferId,
    /// Fused q|k|v rows (`n × qkv_dim`, scratch), or the keys (`n × kv_dim`) of separate
    /// projections.
    pub qkv: BufferId,
    /// Values of separate projections (`n × kv_dim`, scratch; unused by a stacked one).
    pub v: BufferId,
    /// Rotated queries (`n × q_dim`, scratch).
    pub q: BufferId,
    /// Attention output (`n × q_dim`, scratch).
    pub att: BufferId,
}

/// How a decoder attention block projects its queries, keys and values.
#[derive(Clone, Copy, Debug)]
pub enum QkvProjection {
    /// One stacked matrix, rows `q (q_dim) | k (kv_dim) | v (kv_dim)`: one matmul into fused
    /// q|k|v rows (LLaMA).
    Stacked(WeightId),
    /// Three matrices into dense query, key and value rows, the queries and keys then
    /// RMS-normalised per head before RoPE (Gemma 3's QK-norm; a norm reads dense rows, hence
    /// the separate projections).
    HeadNormed {
        /// Query projection (`q_dim × dim`).
        wq: WeightId,
        /// Key projection (`kv_dim × dim`).
        wk: WeightId,
        /// Value projection (`kv_dim × dim`).
        wv: WeightId,
        /// Norm of each query head (`dim` = `head_dim`).
        q_norm: Norm,
        /// Norm of each key head (`dim` = `head_dim`).
        k_norm: Norm,
    },
}

/// Where the projected query, key and value rows of a [`DecoderAttention`] are: row 0 of each,
/// one row per token.
#[derive(Clone, Copy, Debug)]
pub struct QkvRows {
    /// Query rows (`q_dim` values each).
    pub q: Cols,
    /// Key rows (`kv_dim` values each).
    pub k: Cols,
    /// Value rows (`kv_dim` values each).
    pub v: Cols,
}

impl QkvRows {
    /// The same views from row `r` on.
    fn rows_from(self, r: usize) -> Self {
        let at = |c: Cols| Cols {
            offset: c.offset + r * c.stride,
            ..c
        };
        QkvRows {
            q: at(self.q),
            k: at(self.k),
            v: at(self.v),
        }
    }
}

/// Pre-norm causal self-attention of a decoder: norm → q|k|v projection (→ per-head q/k norms)
/// → RoPE of queries and keys → KV write → attention over the cache (causal or a sliding
/// window) → output projection added to the residual stream (normalised first when the block
/// has a post-norm: Gemma's sandwich).
#[derive(Clone, Copy, Debug)]
pub struct DecoderAttention {
    /// The norm before the block.
    pub norm: Norm,
    /// The q|k|v projection.
    pub qkv: QkvProjection,
    /// Output projection (`dim × q_dim`).
    pub wo: WeightId,
    /// Norm of the output projection before the residual add, if any.
    pub post_norm: Option<Norm>,
    /// Head layout.
    pub heads: Heads,
    /// RoPE of queries and keys.
    pub rope: Rope,
    /// [`Mask::Causal`], or [`Mask::Window`] on a sliding-window layer.
    pub mask: Mask,
    /// Score scale (usually [`Heads::scale`]).
    pub scale: f32,
}

impl DecoderAttention {
    /// Records the whole block for `n` rows at positions `pos0 ..` of the layer cache `kv`.
    pub fn record(
        &self,
        ops: &mut Vec<Op>,
        b: &DecoderAttentionBuffers,
        kv: KvView,
        n: usize,
        pos0: usize,
    ) {
        let rows = self.record_qkv(ops, b, n);
        self.record_attend(ops, rows, 0, b.q, b.att, kv, n, pos0);
        self.record_out(ops, b.att, b.x, b.h, n);
    }

    /// Norm of `n` rows of `b.x` into `b.h`, then the q|k|v projection (and the per-head
    /// norms); returns where the rows are.
    pub fn record_qkv(&self, ops: &mut Vec<Op>, b: &DecoderAttentionBuffers, n: usize) -> QkvRows {
        let hd = self.heads;
        self.norm.record(ops, b.x, b.h, n);
        let linear = |ops: &mut Vec<Op>, w, out| {
            ops.push(Op::Linear {
                w,
                bias: None,
                x: b.h,
                out,
                n,
                accumulate: false,
            })
        };
        match self.qkv {
            QkvProjection::Stacked(w) => {
                linear(ops, w, b.qkv);
                let row = hd.qkv_dim();
                QkvRows {
                    q: Cols::new(b.qkv, 0, row),
                    k: Cols::new(b.qkv, hd.q_dim(), row),
                    v: Cols::new(b.qkv, hd.q_dim() + hd.kv_dim(), row),
                }
            }
            QkvProjection::HeadNormed {
                wq,
                wk,
                wv,
                q_norm,
                k_norm,
            } => {
                linear(ops, wq, b.q);
                linear(ops, wk, b.qkv);
                linear(ops, wv, b.v);
                q_norm.record(ops, b.q, b.q, n * hd.n_heads);
                k_norm.record(ops, b.qkv, b.qkv, n * hd.n_kv_heads);
                QkvRows {
                    q: Cols::dense(b.q, hd.q_dim()),
                    k: Cols::dense(b.qkv, hd.kv_dim()),
                    v: Cols::dense(b.v, hd.kv_dim()),
                }
            }
        }
    }

    /// RoPE, KV write and attention of `n` projected rows starting at row `row0` of `rows`, at
    /// positions `pos0 ..` of `kv`: rotated queries go to `q` (which may be where the queries
    /// are: in place), the attention output to `att` (both from their start). Keys are
    /// rotated in place.
    #[allow(clippy::too_many_arguments)]
    pub fn record_attend(
        &self,
        ops: &mut Vec<Op>,
        rows: QkvRows,
        row0: usize,
        q: BufferId,
        att: BufferId,
        kv: KvView,
        n: usize,
        pos0: usize,
    ) {
        let h = self.heads;
        let rows = rows.rows_from(row0);
        ops.push(Op::Rope {
            x: rows.q,
            out: Cols::dense(q, h.q_dim()),
            shape: self.rope.shape(n, h.n_heads, h.head_dim, pos0),
        });
        ops.push(Op::Rope {
            x: rows.k,
            out: rows.k,
            shape: self.rope.shape(n, h.n_kv_heads, h.head_dim, pos0),
        });
        ops.push(Op::KvWrite {
            k: rows.k,
            v: rows.v,
            kv,
            pos0,
            n_tokens: n,
        });
        ops.push(Op::Attention {
            q,
            kv,
            out: att,
            shape: AttentionShape {
                n_tokens: n,
                pos0,
                kv_len: pos0 + n,
                n_heads: h.n_heads,
                scale: self.scale,
                mask: self.mask,
            },
        });
    }

    /// The output projection of `n` rows of `att`, added to the residual stream `x` (through
    /// the post-norm in `h` when the block has one).
    pub fn record_out(&self, ops: &mut Vec<Op>, att: BufferId, x: BufferId, h: BufferId, n: usize) {
        record_residual(ops, self.wo, self.post_norm, att, x, h, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_core::ops::{NormKind, RopeStyle};
    use lowbit_core::DType;
    use lowbit_core::KvLayout;

    fn attention() -> DecoderAttention {
        DecoderAttention {
            norm: Norm {
                kind: NormKind::Rms,
                weight: BufferId(90),
                bias: None,
                dim: 8,
                eps: 1e-5,
            },
            qkv: QkvProjection::Stacked(WeightId(1)),
            wo: WeightId(2),
            post_norm: None,
            heads: Heads {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 2,
            },
            rope: Rope {
                theta: 10_000.0,
                style: RopeStyle::Adjacent,
            },
            mask: Mask::Causal,
            scale: 1.0 / 2f32.sqrt(),
        }
    }

    fn buffers() -> DecoderAttentionBuffers {
        DecoderAttentionBuffers {
            x: BufferId(10),
            h: BufferId(11),
            qkv: BufferId(12),
            q: BufferId(13),
            att: BufferId(14),
            v: BufferId(15),
        }
    }

    fn kv() -> KvView {
        KvView {
            k: BufferId(20),
            v: BufferId(21),
            layout: KvLayout {
                n_kv_heads: 2,
                head_dim: 2,
                rows: 16,
                dtype: DType::F32,
                rotated: false,
            },
            side: None,
            ring: None,
        }
    }

    #[test]
    fn decoder_attention_records_the_llama_sequence_over_qkv_columns() {
        let bufs = buffers();
        let mut ops = Vec::new();
        attention().record(&mut ops, &bufs, kv(), 3, 5);
        let names: Vec<_> = ops.iter().map(Op::name).collect();
        let want = [
            "norm",
            "linear",
            "rope",
            "rope",
            "kv_write",
            "attention",
            "linear",
        ];
        assert_eq!(names, want);
        // q | k | v rows of 8 + 4 + 4 values: keys rotated in place from column 8, values at 12.
        let Op::Rope { x, out, shape } = &ops[3] else {
            panic!("{:?}", ops[3])
        };
        assert_eq!(
            (x, out),
            (&Cols::new(bufs.qkv, 8, 16), &Cols::new(bufs.qkv, 8, 16))
        );
        assert_eq!((shape.n_heads, shape.n_tokens, shape.pos0), (2, 3, 5));
        let Op::KvWrite { v, pos0, .. } = &ops[4] else {
            panic!("{:?}", ops[4])
        };
        assert_eq!((v, *pos0), (&Cols::new(bufs.qkv, 12, 16), 5));
        let Op::Attention { shape, .. } = &ops[5] else {
            panic!("{:?}", ops[5])
        };
        assert_eq!((shape.kv_len, shape.mask), (8, Mask::Causal));
        assert!(matches!(ops[6], Op::Linear { accumulate: true, out, .. } if out == bufs.x));
    }

    #[test]
    fn one_row_of_a_batch_is_addressed_by_its_row_offset() {
        let mut ops = Vec::new();
        let (q, att) = (BufferId(13), BufferId(14));
        let rows = attention().record_qkv(&mut Vec::new(), &buffers(), 3);
        attention().record_attend(&mut ops, rows, 2, q, att, kv(), 1, 7);
        let Op::Rope { x, out, shape } = &ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!((x.offset, x.stride, out.offset), (32, 16, 0));
        assert_eq!(shape.pos0, 7);
        let Op::KvWrite {
            k, pos0, n_tokens, ..
        } = &ops[2]
        else {
            panic!("{:?}", ops[2])
        };
        assert_eq!((k.offset, *pos0, *n_tokens), (40, 7, 1));
    }

    #[test]
    fn head_normed_attention_normalises_q_and_k_per_head_and_post_norms_the_output() {
        let norm = |weight, dim| Norm {
            kind: NormKind::Rms,
            weight: BufferId(weight),
            bias: None,
            dim,
            eps: 1e-6,
        };
        let gemma = DecoderAttention {
            qkv: QkvProjection::HeadNormed {
                wq: WeightId(3),
                wk: WeightId(4),
                wv: WeightId(5),
                q_norm: norm(91, 2),
                k_norm: norm(92, 2),
            },
            post_norm: Some(norm(93, 8)),
            mask: Mask::Window { window: 4 },
            ..attention()
        };
        let b = buffers();
        let mut ops = Vec::new();
        gemma.record(&mut ops, &b, kv(), 3, 5);
        let names: Vec<_> = ops.iter().map(Op::name).collect();
        let want = [
            "norm",
            "linear",
            "linear",
            "linear",
            "norm",
            "norm",
            "rope",
            "rope",
            "kv_write",
            "attention",
            "linear",
            "norm",
            "add",
        ];
        assert_eq!(names, want);
        // Per-head norms over dense rows: 3 tokens × 4 query heads, 3 × 2 key heads.
        let Op::Norm { x, rows, dim, .. } = &ops[4] else {
            panic!("{:?}", ops[4])
        };
        assert_eq!((*x, *rows, *dim), (b.q, 12, 2));
        let Op::Norm { x, rows, .. } = &ops[5] else {
            panic!("{:?}", ops[5])
        };
        assert_eq!((*x, *rows), (b.qkv, 6));
        // Queries rotated in place; values read from their own buffer.
        let Op::Rope { x, out, .. } = &ops[6] else {
            panic!("{:?}", ops[6])
        };
        assert_eq!((x, out), (&Cols::dense(b.q, 8), &Cols::dense(b.q, 8)));
        let Op::KvWrite { v, .. } = &ops[8] else {
            panic!("{:?}", ops[8])
        };
        assert_eq!(v, &Cols::dense(b.v, 4));
        let Op::Attention { shape, .. } = &ops[9] else {
            panic!("{:?}", ops[9])
        };
        assert_eq!(shape.mask, Mask::Window { window: 4 });
        // The output projection goes through the post-norm in `h`, then adds to `x`.
        assert!(matches!(ops[10], Op::Linear { accumulate: false, out, .. } if out == b.h));
        assert!(matches!(ops[12], Op::Add { dst, src, len: 24 } if dst == b.x && src == b.h));
    }
}
