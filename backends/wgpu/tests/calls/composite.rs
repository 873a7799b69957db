//! The former composite backend methods (`matmul_add`, `rms_norm_qkv_rope`, `ffn_swiglu`,
//! ...) as a trait on every backend: each records its op list in one `Backend::run`.

use super::{attention_op, ffn_ops, linear_op, norm_op, qkv_rope_ops, rope_store_ops};
use super::{AttentionParams, QkvParams, RmsNorm};
use lowbit_core::future::block_on;
use lowbit_core::ops::{Activation, Op, TokenIds};
use lowbit_core::{Backend, BufferId, DType, Result, WeightId};

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
