//! A LLaMA-shaped model of random weights and the ops of its layers and steps, exactly as the
//! LLaMA adapter records them.

use super::{attention_op, ffn_ops, linear_op, norm_op, qkv_rope_ops};
use super::{AttentionParams, QkvParams, RmsNorm};
use lowbit_core::ops::{Op, RopeStyle, TokenIds};
use lowbit_core::{Backend, BufferId, DType, WeightId};

/// One LLaMA layer's buffers and weights (the adapter's recording, see the module docs of
/// `lowbit_core::ops`).
#[derive(Clone, Copy, Debug)]
pub struct LayerBufs {
    pub attn_norm: RmsNorm,
    pub ffn_norm: RmsNorm,
    pub wqkv: WeightId,
    pub wo: WeightId,
    pub w_gate_up: WeightId,
    pub w_down: WeightId,
    pub kc: BufferId,
    pub vc: BufferId,
}

/// The scratch and residual buffers of a LLaMA step.
#[derive(Clone, Copy, Debug)]
pub struct StepBufs {
    pub x: BufferId,
    pub h: BufferId,
    pub qkv: BufferId,
    pub q: BufferId,
    pub att: BufferId,
    pub gu: BufferId,
    pub ff: BufferId,
}

/// The ops of one LLaMA layer over `n` rows at `pos0 ..` (`max_seq` cache rows), exactly as
/// the adapter records them.
pub fn llama_layer_ops(
    l: &LayerBufs,
    s: &StepBufs,
    p: &QkvParams,
    ffn_width: usize,
    max_seq: usize,
) -> Vec<Op> {
    let n = p.n_tokens;
    let mut ops = vec![norm_op(s.x, &l.attn_norm, s.h, n)];
    ops.extend(qkv_rope_ops(l.wqkv, s.h, s.qkv, s.q, l.kc, l.vc, p));
    if let Some(Op::KvWrite { kv, .. }) = ops.last_mut() {
        kv.layout.rows = max_seq;
    }
    let a = AttentionParams {
        n_tokens: n,
        pos0: p.pos0,
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        head_dim: p.head_dim,
        scale: 1.0 / (p.head_dim as f32).sqrt(),
    };
    let mut att = attention_op(s.q, l.kc, l.vc, s.att, &a);
    if let Op::Attention { kv, .. } = &mut att {
        kv.layout.rows = max_seq;
    }
    ops.push(att);
    ops.push(linear_op(l.wo, s.att, s.x, n, true));
    ops.extend(ffn_ops(
        s.x,
        &l.ffn_norm,
        s.h,
        l.w_gate_up,
        s.gu,
        s.ff,
        l.w_down,
        n,
        ffn_width,
    ));
    ops
}

/// A LLaMA-shaped model of random 4-bit weights on a backend, recorded as the adapter records.
pub struct Llama {
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_seq: usize,
    pub layers: Vec<LayerBufs>,
    pub s: StepBufs,
    pub embedding: WeightId,
    pub output_norm: RmsNorm,
    pub lm_head: WeightId,
    pub logits: BufferId,
    /// Two f32 token slots (greedy decode alternates).
    pub tok: BufferId,
}

/// Shape of a [`Llama`].
#[derive(Clone, Copy, Debug)]
pub struct LlamaShape {
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_seq: usize,
    /// Token rows the scratch buffers hold.
    pub rows: usize,
}

impl Llama {
    /// Uploads random weights drawn from `seed` (the same seed, the same model).
    pub fn new(b: &dyn Backend, sh: LlamaShape, seed: u64) -> Llama {
        use lowbit_core::quant::quantize;
        use lowbit_core::{QuantSpec, Scheme, WeightMatrix};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let spec = QuantSpec::new(4, 32, Scheme::Symmetric).unwrap();
        let mut weight = |rows: usize, cols: usize| {
            // Scaled so activations stay near 1 through the layers, as trained weights keep them.
            let s = 1.0 / (cols as f32).sqrt();
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-s..s)).collect();
            b.upload_weight(WeightMatrix::Quantized(
                quantize(&v, rows, cols, spec).unwrap(),
            ))
            .unwrap()
        };
        let (dim, kv_dim) = (sh.dim, sh.kv_heads * sh.head_dim);
        let q_dim = sh.heads * sh.head_dim;
        let mut parts = Vec::new();
        for _ in 0..sh.layers {
            parts.push([
                weight(q_dim + 2 * kv_dim, dim),
                weight(dim, q_dim),
                weight(2 * sh.ffn, dim),
                weight(dim, sh.ffn),
            ]);
        }
        let embedding = weight(sh.vocab, dim);
        let lm_head = weight(sh.vocab, dim);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
        let mut norm = || {
            let g: Vec<f32> = (0..dim).map(|_| rng.gen_range(0.5f32..1.5)).collect();
            RmsNorm {
                weight: b.upload(&g).unwrap(),
                dim,
                eps: 1e-5,
            }
        };
        let layers = parts
            .into_iter()
            .map(|[wqkv, wo, w_gate_up, w_down]| LayerBufs {
                attn_norm: norm(),
                ffn_norm: norm(),
                wqkv,
                wo,
                w_gate_up,
                w_down,
                kc: b.alloc(DType::F32, sh.max_seq * kv_dim).unwrap(),
                vc: b.alloc(DType::F32, sh.max_seq * kv_dim).unwrap(),
            })
            .collect();
        let output_norm = norm();
        let n = sh.rows;
        let scratch = |len: usize| b.alloc_scratch(n * len).unwrap();
        let s = StepBufs {
            x: b.alloc(DType::F32, n * dim).unwrap(),
            h: scratch(dim),
            qkv: scratch(q_dim + 2 * kv_dim),
            q: scratch(q_dim),
            att: scratch(q_dim),
            gu: scratch(2 * sh.ffn),
            ff: scratch(sh.ffn),
        };
        Llama {
            dim,
            heads: sh.heads,
            kv_heads: sh.kv_heads,
            head_dim: sh.head_dim,
            ffn: sh.ffn,
            vocab: sh.vocab,
            max_seq: sh.max_seq,
            layers,
            s,
            embedding,
            output_norm,
            lm_head,
            logits: b.alloc(DType::F32, n * sh.vocab).unwrap(),
            tok: b.alloc(DType::F32, 2).unwrap(),
        }
    }

    /// The ops of a step over `ids` at `pos0 ..`: embed, the layers, the output norm and head
    /// (of the last row), and with `argmax_to` the greedy token into that slot of `tok`.
    pub fn step(&self, ids: TokenIds, pos0: usize, argmax_to: Option<usize>) -> Vec<Op> {
        let n = ids.len();
        let p = QkvParams {
            n_tokens: n,
            pos0,
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            theta: 10000.0,
            style: RopeStyle::Adjacent,
        };
        let mut ops = vec![Op::Embed {
            table: self.embedding,
            ids,
            out: self.s.x,
        }];
        for l in &self.layers {
            ops.extend(llama_layer_ops(l, &self.s, &p, self.ffn, self.max_seq));
        }
        // The head over every row (a prefill's last row is what a model reads).
        ops.push(norm_op(self.s.x, &self.output_norm, self.s.h, n));
        ops.push(linear_op(self.lm_head, self.s.h, self.logits, n, false));
        if let Some(slot) = argmax_to {
            ops.push(Op::Argmax {
                x: self.logits,
                len: self.vocab,
                out: self.tok,
                out_offset: slot,
            });
        }
        ops
    }
}
