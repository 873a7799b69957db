//! Case ops use their case's own buffer and weight indices; a run maps them to the backend's.

use crate::backend::{BufferId, WeightId};
use crate::kv::KvView;
use crate::ops::{Cols, Op, TokenIds};

/// `op` with the case's local buffer and weight ids replaced by the backend's. A local id
/// without a backend id maps to `u32::MAX`, which the backend rejects as unknown.
pub(super) fn remap(op: &Op, bufs: &[BufferId], weights: &[WeightId]) -> Op {
    let b = |id: BufferId| {
        bufs.get(id.0 as usize)
            .copied()
            .unwrap_or(BufferId(u32::MAX))
    };
    let w = |id: WeightId| {
        weights
            .get(id.0 as usize)
            .copied()
            .unwrap_or(WeightId(u32::MAX))
    };
    let c = |v: Cols| Cols { buf: b(v.buf), ..v };
    let kv = |v: KvView| KvView {
        k: b(v.k),
        v: b(v.v),
        layout: v.layout,
        side: v.side.map(|s| crate::kv::KvSide {
            k: b(s.k),
            v: b(s.v),
            ..s
        }),
        ring: v.ring,
    };
    match op.clone() {
        Op::Embed { table, ids, out } => Op::Embed {
            table: w(table),
            ids: match ids {
                TokenIds::Device { buf, offset, n } => TokenIds::Device {
                    buf: b(buf),
                    offset,
                    n,
                },
                host => host,
            },
            out: b(out),
        },
        Op::Linear {
            w: wt,
            bias,
            x,
            out,
            n,
            accumulate,
        } => Op::Linear {
            w: w(wt),
            bias: bias.map(b),
            x: b(x),
            out: b(out),
            n,
            accumulate,
        },
        Op::Norm {
            kind,
            x,
            out,
            weight,
            bias,
            rows,
            dim,
            eps,
        } => Op::Norm {
            kind,
            x: b(x),
            out: b(out),
            weight: b(weight),
            bias: bias.map(b),
            rows,
            dim,
            eps,
        },
        Op::Activation { act, x, out, len } => Op::Activation {
            act,
            x: b(x),
            out: b(out),
            len,
        },
        Op::Glu {
            act,
            x,
            out,
            n,
            width,
        } => Op::Glu {
            act,
            x: b(x),
            out: b(out),
            n,
            width,
        },
        Op::Rope { x, out, shape } => Op::Rope {
            x: c(x),
            out: c(out),
            shape,
        },
        Op::KvWrite {
            k,
            v,
            kv: view,
            pos0,
            n_tokens,
        } => Op::KvWrite {
            k: c(k),
            v: c(v),
            kv: kv(view),
            pos0,
            n_tokens,
        },
        Op::Attention {
            q,
            kv: view,
            out,
            shape,
        } => Op::Attention {
            q: b(q),
            kv: kv(view),
            out: b(out),
            shape,
        },
        Op::Add { dst, src, len } => Op::Add {
            dst: b(dst),
            src: b(src),
            len,
        },
        Op::Scale { x, len, factor } => Op::Scale {
            x: b(x),
            len,
            factor,
        },
        Op::Softmax { x, rows, len } => Op::Softmax { x: b(x), rows, len },
        Op::Argmax {
            x,
            len,
            out,
            out_offset,
        } => Op::Argmax {
            x: b(x),
            len,
            out: b(out),
            out_offset,
        },
        Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => Op::Copy {
            src: b(src),
            src_offset,
            dst: b(dst),
            dst_offset,
            len,
        },
        Op::Im2col { x, out, shape } => Op::Im2col {
            x: b(x),
            out: b(out),
            shape,
        },
    }
}
