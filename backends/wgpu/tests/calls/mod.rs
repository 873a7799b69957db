//! The op lists the tests record, named after what they compute: each call records its ops in
//! one `Backend::run`, so a call whose ops form a fused group (with scratch intermediates)
//! runs the fused kernels, and a sequence of calls runs them apart. Reads wait at once.

#![allow(dead_code)]

use lowbit_core::future::block_on;
use lowbit_core::kv::{KvLayout, KvView};
use lowbit_core::ops::{
    Activation, AttentionShape, Cols, Mask, NormKind, Op, RopeShape, RopeStyle, TokenIds,
};
use lowbit_core::{Backend, BufferId, DType, Result, WeightId};

/// An RMSNorm: `dim` weights in `weight`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub weight: BufferId,
    pub dim: usize,
    pub eps: f32,
}

/// Causal attention of `n_tokens` rows at `pos0 ..` over `pos0 + n_tokens` cache rows.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl AttentionParams {
    /// The cache view over `k` and `v` (rows up to this step's).
    pub fn view(&self, k: BufferId, v: BufferId) -> KvView {
        kv_view(
            k,
            v,
            self.n_kv_heads,
            self.head_dim,
            self.pos0 + self.n_tokens,
        )
    }
}

/// `n_tokens` fused `q | k | v` rows at `pos0 ..`, as the LLaMA adapter records them.
#[derive(Clone, Copy, Debug)]
pub struct QkvParams {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub theta: f32,
    pub style: RopeStyle,
}

impl QkvParams {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn row_len(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
    fn rope(&self, n_heads: usize) -> RopeShape {
        RopeShape {
            n_tokens: self.n_tokens,
            n_heads,
            head_dim: self.head_dim,
            pos0: self.pos0,
            theta_bits: self.theta.to_bits(),
            style: self.style,
        }
    }
}

/// A view of f32 caches `k`, `v` of `rows` rows.
pub fn kv_view(
    k: BufferId,
    v: BufferId,
    n_kv_heads: usize,
    head_dim: usize,
    rows: usize,
) -> KvView {
    KvView {
        k,
        v,
        layout: KvLayout {
            n_kv_heads,
            head_dim,
            rows,
            dtype: DType::F32,
        },
    }
}

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

/// The former backend calls, each one `run` of its op list.
pub trait Calls {
    fn read_now(&self, buf: BufferId, offset: usize, len: usize) -> Result<Vec<f32>>;
    fn alloc_f32(&self, len: usize) -> Result<BufferId>;
    fn matmul(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()>;
    fn matmul_add(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()>;
    fn rms_norm(
        &self,
        x: BufferId,
        g: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    fn rms_norm_matmul(
        &self,
        x: BufferId,
        n: &RmsNorm,
        h: BufferId,
        w: WeightId,
        out: BufferId,
        rows: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_qkv_rope(
        &self,
        x: BufferId,
        n: &RmsNorm,
        h: BufferId,
        w: WeightId,
        qkv: BufferId,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        p: &QkvParams,
    ) -> Result<()>;
    fn rope_store_qkv(
        &self,
        qkv: BufferId,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        p: &QkvParams,
    ) -> Result<()>;
    fn attention(
        &self,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        out: BufferId,
        p: &AttentionParams,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_matmul_add(
        &self,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        att: BufferId,
        p: &AttentionParams,
        w: WeightId,
        out: BufferId,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn ffn_swiglu(
        &self,
        x: BufferId,
        n: &RmsNorm,
        h: BufferId,
        w_gu: WeightId,
        gu: BufferId,
        ff: BufferId,
        w_down: WeightId,
        rows: usize,
        width: usize,
    ) -> Result<()>;
    fn swiglu(&self, gu: BufferId, out: BufferId, n: usize, width: usize) -> Result<()>;
    fn swiglu_matmul_add(
        &self,
        gu: BufferId,
        ff: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
        width: usize,
    ) -> Result<()>;
    fn embed(&self, table: WeightId, ids: &[u32], out: BufferId) -> Result<()>;
    fn embed_indirect(
        &self,
        table: WeightId,
        ids: BufferId,
        offset: usize,
        n: usize,
        out: BufferId,
    ) -> Result<()>;
    fn argmax(&self, x: BufferId, len: usize, out: BufferId, out_offset: usize) -> Result<()>;
    fn add(&self, dst: BufferId, src: BufferId, len: usize) -> Result<()>;
    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        len: usize,
    ) -> Result<()>;
}

impl<B: Backend + ?Sized> Calls for B {
    fn read_now(&self, buf: BufferId, offset: usize, len: usize) -> Result<Vec<f32>> {
        block_on(self.read(buf, offset, len))
    }
    fn alloc_f32(&self, len: usize) -> Result<BufferId> {
        self.alloc(DType::F32, len)
    }
    fn matmul(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()> {
        self.run(&[linear_op(w, x, out, n, false)])
    }
    fn matmul_add(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()> {
        self.run(&[linear_op(w, x, out, n, true)])
    }
    fn rms_norm(
        &self,
        x: BufferId,
        g: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let n = RmsNorm {
            weight: g,
            dim,
            eps,
        };
        self.run(&[norm_op(x, &n, out, rows)])
    }
    fn rms_norm_matmul(
        &self,
        x: BufferId,
        n: &RmsNorm,
        h: BufferId,
        w: WeightId,
        out: BufferId,
        rows: usize,
    ) -> Result<()> {
        self.run(&[norm_op(x, n, h, rows), linear_op(w, h, out, rows, false)])
    }
    fn rms_norm_qkv_rope(
        &self,
        x: BufferId,
        n: &RmsNorm,
        h: BufferId,
        w: WeightId,
        qkv: BufferId,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        let mut ops = vec![norm_op(x, n, h, p.n_tokens)];
        ops.extend(qkv_rope_ops(w, h, qkv, q, kc, vc, p));
        self.run(&ops)
    }
    fn rope_store_qkv(
        &self,
        qkv: BufferId,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        self.run(&rope_store_ops(qkv, q, kc, vc, p))
    }
    fn attention(
        &self,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        out: BufferId,
        p: &AttentionParams,
    ) -> Result<()> {
        self.run(&[attention_op(q, kc, vc, out, p)])
    }
    fn attention_matmul_add(
        &self,
        q: BufferId,
        kc: BufferId,
        vc: BufferId,
        att: BufferId,
        p: &AttentionParams,
        w: WeightId,
        out: BufferId,
    ) -> Result<()> {
        self.run(&[
            attention_op(q, kc, vc, att, p),
            linear_op(w, att, out, p.n_tokens, true),
        ])
    }
    fn ffn_swiglu(
        &self,
        x: BufferId,
        n: &RmsNorm,
        h: BufferId,
        w_gu: WeightId,
        gu: BufferId,
        ff: BufferId,
        w_down: WeightId,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        self.run(&ffn_ops(x, n, h, w_gu, gu, ff, w_down, rows, width))
    }
    fn swiglu(&self, gu: BufferId, out: BufferId, n: usize, width: usize) -> Result<()> {
        self.run(&[Op::Glu {
            act: Activation::Silu,
            x: gu,
            out,
            n,
            width,
        }])
    }
    fn swiglu_matmul_add(
        &self,
        gu: BufferId,
        ff: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
        width: usize,
    ) -> Result<()> {
        self.run(&[
            Op::Glu {
                act: Activation::Silu,
                x: gu,
                out: ff,
                n,
                width,
            },
            linear_op(w, ff, out, n, true),
        ])
    }
    fn embed(&self, table: WeightId, ids: &[u32], out: BufferId) -> Result<()> {
        self.run(&[Op::Embed {
            table,
            ids: TokenIds::Host(ids.to_vec()),
            out,
        }])
    }
    fn embed_indirect(
        &self,
        table: WeightId,
        ids: BufferId,
        offset: usize,
        n: usize,
        out: BufferId,
    ) -> Result<()> {
        self.run(&[Op::Embed {
            table,
            ids: TokenIds::Device {
                buf: ids,
                offset,
                n,
            },
            out,
        }])
    }
    fn argmax(&self, x: BufferId, len: usize, out: BufferId, out_offset: usize) -> Result<()> {
        self.run(&[Op::Argmax {
            x,
            len,
            out,
            out_offset,
        }])
    }
    fn add(&self, dst: BufferId, src: BufferId, len: usize) -> Result<()> {
        self.run(&[Op::Add { dst, src, len }])
    }
    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.run(&[Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        }])
    }
}

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
