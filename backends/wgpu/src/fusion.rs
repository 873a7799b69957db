//! The fusion pass: an `&[Op]` list becomes a plan of groups, each either one op or a run of
//! ops that one of the fused composites computes (fewer dispatches, activations kept in
//! registers or exchanged as 8-bit blocks in the backend's own buffers):
//!
//! - `Norm{Rms} + Linear` → `rms_norm_matmul` (normalise on load, or an 8-bit feed);
//! - `[Norm{Rms}] + Linear(q|k|v) + Rope(q) + Rope(k, in place) + KvWrite` →
//!   `qkv_rope`, with or without the norm (the decode matvec's RoPE epilogue, or `rope_store_qkv`);
//! - `Attention + Linear(accumulate)` → `attention_matmul_add`;
//! - `[Norm{Rms} + Linear(gate|up)] + Glu{Silu} + Linear(accumulate into the norm's input)` →
//!   `ffn_swiglu` / `swiglu_matmul_add`;
//! - a residual add (the last two groups) followed by a norm-led group over its output prepares
//!   that norm's input in its epilogue (`State::norm_hint`, `Epilogue::AddNorm`).
//!
//! A group is taken only when its intermediates are scratch buffers no later op reads
//! (`read_later`), its buffers chain as the pattern says and its shapes fit; otherwise the ops
//! run one by one, so results never depend on fusion. Plans are cached by the step's shape
//! (`shape_key`: op kinds, buffers, weights and sizes, positions relative to the first), so a
//! decode step does not match again.

use crate::backend::WgpuBackend;
use crate::buffers::{NormHint, State};
use crate::ops::attention::AttentionParams;
use crate::ops::norm::RmsNorm;
use crate::ops::rope::QkvParams;
use lowbit_core::kv::KvView;
use lowbit_core::ops::{read_later, Activation, Cols, Mask, NormKind, Op, RopeShape, TokenIds};
use lowbit_core::{BufferId, DType, Result, WeightId};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// What a group of ops runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fused {
    /// One op on its own.
    Single,
    /// `Norm{Rms} + Linear`.
    NormLinear,
    /// `[Norm{Rms}] + Linear(q|k|v) + Rope(q) + Rope(k) + KvWrite`.
    QkvRope {
        /// Led by the norm.
        norm: bool,
    },
    /// `Attention + Linear(accumulate)`.
    AttentionLinear,
    /// `[Norm{Rms} + Linear(gate|up)] + Glu{Silu} + Linear(accumulate)`.
    Ffn {
        /// Led by the norm and the gate|up projection.
        norm: bool,
    },
}

impl Fused {
    /// Whether the group starts with an RMSNorm feeding a linear map.
    fn norm_led(self) -> bool {
        matches!(
            self,
            Fused::NormLinear | Fused::QkvRope { norm: true } | Fused::Ffn { norm: true }
        )
    }
}

/// A run of `len` ops of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// How it runs.
    pub fused: Fused,
    /// Ops it covers.
    pub len: usize,
    /// Ends in a residual add whose epilogue prepares the next group's norm.
    pub prepares_next_norm: bool,
}

/// The groups of one op list, in order.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The groups; their lengths add up to the list's.
    pub groups: Vec<Group>,
}

/// Plans kept at most (a model records a handful of step shapes; a long-running server with
/// many prefill lengths starts over past this).
const MAX_PLANS: usize = 256;

/// A hash of what the plan of `ops` depends on: kinds, buffers, weights, sizes and the
/// positions relative to the first one (never host token ids or absolute positions).
fn shape_key(ops: &[Op]) -> u64 {
    let mut h = DefaultHasher::new();
    let base = ops.iter().find_map(|op| match op {
        Op::Rope { shape, .. } => Some(shape.pos0),
        Op::KvWrite { pos0, .. } => Some(*pos0),
        Op::Attention { shape, .. } => Some(shape.pos0),
        _ => None,
    });
    let rel = |p: usize| p.wrapping_sub(base.unwrap_or(0));
    ops.len().hash(&mut h);
    for op in ops {
        std::mem::discriminant(op).hash(&mut h);
        match op {
            Op::Embed { table, ids, out } => {
                (table, out).hash(&mut h);
                match ids {
                    TokenIds::Host(v) => v.len().hash(&mut h),
                    TokenIds::Device { buf, offset, n } => (buf, offset, n).hash(&mut h),
                }
            }
            Op::Linear {
                w,
                bias,
                x,
                out,
                n,
                accumulate,
            } => (w, bias, x, out, n, accumulate).hash(&mut h),
            Op::Norm {
                kind,
                x,
                out,
                weight,
                bias,
                rows,
                dim,
                eps,
            } => (kind, x, out, weight, bias, rows, dim, eps.to_bits()).hash(&mut h),
            Op::Activation { act, x, out, len } => (act, x, out, len).hash(&mut h),
            Op::Glu {
                act,
                x,
                out,
                n,
                width,
            } => (act, x, out, n, width).hash(&mut h),
            Op::Rope { x, out, shape } => {
                let s = RopeShape {
                    pos0: rel(shape.pos0),
                    ..*shape
                };
                (x, out, s).hash(&mut h)
            }
            Op::KvWrite {
                k,
                v,
                kv,
                pos0,
                n_tokens,
            } => (k, v, kv, rel(*pos0), n_tokens).hash(&mut h),
            Op::Attention { q, kv, out, shape } => {
                (q, kv, out, shape.n_tokens, shape.n_heads).hash(&mut h);
                (rel(shape.pos0), rel(shape.kv_len), shape.scale.to_bits()).hash(&mut h);
                shape.mask.hash(&mut h);
            }
            Op::Add { dst, src, len } => (dst, src, len).hash(&mut h),
            Op::Scale { x, len, factor } => (x, len, factor.to_bits()).hash(&mut h),
            Op::Softmax { x, rows, len } => (x, rows, len).hash(&mut h),
            Op::Argmax {
                x,
                len,
                out,
                out_offset,
            } => (x, len, out, out_offset).hash(&mut h),
            Op::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => (src, src_offset, dst, dst_offset, len).hash(&mut h),
            Op::Im2col { x, out, shape } => (x, out, shape).hash(&mut h),
        }
    }
    h.finish()
}

/// What the matcher needs to know about buffers and weights.
struct Facts<'a> {
    st: &'a State,
}

impl Facts<'_> {
    /// A scratch buffer whose value no op of `rest` reads: a fused kernel may skip writing it.
    fn elided(&self, buf: BufferId, rest: &[Op]) -> bool {
        self.st.buffers.get(&buf.0).is_some_and(|b| b.scratch) && !read_later(buf, rest)
    }

    /// Rows and columns of weight `w`.
    fn shape(&self, w: WeightId) -> Option<(usize, usize)> {
        self.st.weights.get(&w.0).map(|g| (g.rows, g.cols))
    }
}

/// `Norm{Rms, no bias}` of `x` into a distinct `out`: `(x, out, norm, rows)`.
fn rms_norm(op: &Op) -> Option<(BufferId, BufferId, RmsNorm, usize)> {
    match *op {
        Op::Norm {
            kind: NormKind::Rms,
            x,
            out,
            weight,
            bias: None,
            rows,
            dim,
            eps,
        } if x != out && weight != out => Some((x, out, RmsNorm { weight, dim, eps }, rows)),
        _ => None,
    }
}

/// `Linear{no bias}`: `(w, x, out, n, accumulate)`.
fn linear(op: &Op) -> Option<(WeightId, BufferId, BufferId, usize, bool)> {
    match *op {
        Op::Linear {
            w,
            bias: None,
            x,
            out,
            n,
            accumulate,
        } if x != out => Some((w, x, out, n, accumulate)),
        _ => None,
    }
}

/// A norm feeding the linear map after it, the norm's output elided: `(x, norm, h, w, out, n)`.
type NormInto = (BufferId, RmsNorm, BufferId, WeightId, BufferId, usize);

fn norm_linear(f: &Facts, ops: &[Op], rest: &[Op]) -> Option<NormInto> {
    let (x, h, norm, rows) = rms_norm(ops.first()?)?;
    let (w, hx, out, n, acc) = linear(ops.get(1)?)?;
    let cols = f.shape(w)?.1;
    (hx == h && n == rows && !acc && out != x && cols == norm.dim && f.elided(h, rest))
        .then_some((x, norm, h, w, out, n))
}

/// The q|k|v part of the LLaMA pattern (from the linear map on): the step's parameters and
/// `(w, input, qkv, q, kv)`.
fn qkv_rope(
    f: &Facts,
    ops: &[Op],
    rest: &[Op],
) -> Option<(QkvParams, WeightId, BufferId, BufferId, BufferId, KvView)> {
    let (w, x, qkv, n, acc) = linear(ops.first()?)?;
    let (
        Op::Rope {
            x: xq,
            out: oq,
            shape: sq,
        },
        Op::Rope {
            x: xk,
            out: ok,
            shape: sk,
        },
        Op::KvWrite {
            k,
            v,
            kv,
            pos0,
            n_tokens,
        },
    ) = (ops.get(1)?, ops.get(2)?, ops.get(3)?)
    else {
        return None;
    };
    let hd = sq.head_dim;
    let q_dim = sq.width();
    let kv_dim = kv.layout.row_len();
    let row = q_dim + 2 * kv_dim;
    let q = oq.buf;
    let shapes = !acc
        && sq.n_tokens == n
        && sk.n_tokens == n
        && *n_tokens == n
        && sq.pos0 == *pos0
        && sk.pos0 == *pos0
        && sk.head_dim == hd
        && kv.layout.head_dim == hd
        && sk.n_heads == kv.layout.n_kv_heads
        && sq.n_heads > 0
        && sk.theta_bits == sq.theta_bits
        && sk.style == sq.style
        && kv.layout.dtype == DType::F32
        && f.shape(w).is_some_and(|(rows, _)| rows == row);
    let views = *xq == Cols::new(qkv, 0, row)
        && *oq == Cols::dense(q, q_dim)
        && *xk == Cols::new(qkv, q_dim, row)
        && ok == xk
        && k == xk
        && *v == Cols::new(qkv, q_dim + kv_dim, row);
    let distinct =
        q != qkv && q != x && kv.k != kv.v && ![qkv, q, x].iter().any(|b| *b == kv.k || *b == kv.v);
    let p = QkvParams {
        n_tokens: n,
        pos0: *pos0,
        n_heads: sq.n_heads,
        n_kv_heads: kv.layout.n_kv_heads,
        head_dim: hd,
        theta: sq.theta(),
        style: sq.style,
    };
    (shapes && views && distinct && f.elided(qkv, rest)).then_some((p, w, x, qkv, q, *kv))
}

/// `Glu{Silu} + Linear(accumulate)`: `(gu, ff, w_down, out, n, width)`.
fn glu_linear(
    f: &Facts,
    ops: &[Op],
    rest: &[Op],
) -> Option<(BufferId, BufferId, WeightId, BufferId, usize, usize)> {
    let Op::Glu {
        act: Activation::Silu,
        x: gu,
        out: ff,
        n,
        width,
    } = *ops.first()?
    else {
        return None;
    };
    let (w, fx, out, m, acc) = linear(ops.get(1)?)?;
    (gu != ff && fx == ff && m == n && acc && out != gu && f.elided(ff, rest))
        .then_some((gu, ff, w, out, n, width))
}

/// The group starting at `all[i]`.
fn match_group(f: &Facts, all: &[Op], i: usize) -> Fused {
    let ops = &all[i..];
    // The ops after a group of `len` ops.
    let rest_of = |len: usize| &all[(i + len).min(all.len())..];
    // Longest patterns first.
    if let Some((_, _, h, _, _, _)) = norm_linear(f, ops, rest_of(5)) {
        if let Some((_, _, x, ..)) = qkv_rope(f, &ops[1..], rest_of(5)) {
            if x == h {
                return Fused::QkvRope { norm: true };
            }
        }
    }
    if let Some((x, _, h, _, gu, _)) = norm_linear(f, ops, rest_of(4)) {
        if let Some((g, _, _, out, _, _)) = glu_linear(f, &ops[2..], rest_of(4)) {
            if g == gu && out == x && out != h && f.elided(gu, rest_of(4)) {
                return Fused::Ffn { norm: true };
            }
        }
    }
    if norm_linear(f, ops, rest_of(2)).is_some() {
        return Fused::NormLinear;
    }
    if qkv_rope(f, ops, rest_of(4)).is_some() {
        return Fused::QkvRope { norm: false };
    }
    if let (
        Some(Op::Attention {
            q, kv, out, shape, ..
        }),
        Some(second),
    ) = (ops.first(), ops.get(1))
    {
        if let Some((_, x, o, n, true)) = linear(second) {
            let causal = shape.mask == Mask::Causal && shape.kv_len == shape.pos0 + shape.n_tokens;
            let fits = causal
                && kv.layout.dtype == DType::F32
                && x == *out
                && n == shape.n_tokens
                && ![*q, kv.k, kv.v, *out].contains(&o)
                && f.elided(*out, rest_of(2));
            if fits {
                return Fused::AttentionLinear;
            }
        }
    }
    if glu_linear(f, ops, rest_of(2)).is_some() {
        return Fused::Ffn { norm: false };
    }
    Fused::Single
}

fn group_len(fused: Fused) -> usize {
    match fused {
        Fused::Single => 1,
        Fused::NormLinear | Fused::AttentionLinear | Fused::Ffn { norm: false } => 2,
        Fused::QkvRope { norm: false } | Fused::Ffn { norm: true } => 4,
        Fused::QkvRope { norm: true } => 5,
    }
}

/// The plan of `ops`.
fn build(st: &State, ops: &[Op]) -> Plan {
    let f = Facts { st };
    let mut groups: Vec<Group> = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let fused = match_group(&f, ops, i);
        let len = group_len(fused);
        groups.push(Group {
            fused,
            len,
            prepares_next_norm: false,
        });
        i += len;
    }
    // A residual add into x followed by a norm-led group over x prepares that norm.
    let mut start = 0;
    for g in 0..groups.len().saturating_sub(1) {
        let (cur, next) = (groups[g], groups[g + 1]);
        let next_start = start + cur.len;
        let residual = matches!(cur.fused, Fused::AttentionLinear | Fused::Ffn { .. });
        if residual && next.fused.norm_led() {
            let out = match ops[next_start - 1] {
                Op::Linear { out, .. } => Some(out),
                _ => None,
            };
            let x = rms_norm(&ops[next_start]).map(|n| n.0);
            groups[g].prepares_next_norm = out.is_some() && out == x;
        }
        start = next_start;
    }
    Plan { groups }
}

impl WgpuBackend {
    /// The plan of `ops`, from the cache when this step shape was seen before.
    pub(crate) fn plan(&self, ops: &[Op]) -> Arc<Plan> {
        let key = shape_key(ops);
        let mut st = self.lock();
        if let Some(p) = st.plans.get(&key) {
            if p.groups.iter().map(|g| g.len).sum::<usize>() == ops.len() {
                return p.clone();
            }
        }
        let plan = Arc::new(build(&st, ops));
        if st.plans.len() >= MAX_PLANS {
            st.plans.clear();
        }
        st.plans.insert(key, plan.clone());
        plan
    }

    /// The fusion plan `run` would take for `ops` (tests inspect it).
    pub fn fusion_plan(&self, ops: &[Op]) -> Plan {
        (*self.plan(ops)).clone()
    }

    /// Records `ops` group by group.
    pub(crate) fn run_planned(&self, ops: &[Op]) -> Result<()> {
        let plan = self.plan(ops);
        let mut i = 0;
        for (g, group) in plan.groups.iter().enumerate() {
            let part = &ops[i..i + group.len];
            i += group.len;
            if group.prepares_next_norm {
                let next = plan.groups.get(g + 1).map(|n| &ops[i..i + n.len]);
                self.lock().norm_hint = next.and_then(next_norm_hint);
                let r = self.run_group(group.fused, part);
                self.lock().norm_hint = None;
                r?;
            } else {
                self.run_group(group.fused, part)?;
            }
        }
        Ok(())
    }

    /// Records one group.
    fn run_group(&self, fused: Fused, ops: &[Op]) -> Result<()> {
        let lin = |op: &Op| {
            linear(op).ok_or_else(|| lowbit_core::Error::invalid_config("fusion: not a linear op"))
        };
        let norm = |op: &Op| {
            rms_norm(op).ok_or_else(|| lowbit_core::Error::invalid_config("fusion: not a norm op"))
        };
        match fused {
            Fused::Single => self.run_op(&ops[0]),
            Fused::NormLinear => {
                let (x, h, nm, _) = norm(&ops[0])?;
                let (w, _, out, n, _) = lin(&ops[1])?;
                self.rms_norm_matmul(x, &nm, h, w, out, n)
            }
            Fused::QkvRope { norm: with_norm } => {
                let q_ops = if with_norm { &ops[1..] } else { ops };
                let (p, w, x, qkv, q, kv) = qkv_parts(q_ops)?;
                let nm = if with_norm {
                    let (nx, h, nm, _) = norm(&ops[0])?;
                    debug_assert_eq!(h, x);
                    Some((nx, nm))
                } else {
                    None
                };
                let nm = nm.as_ref().map(|(nx, nm)| (*nx, nm));
                self.qkv_rope(nm, x, w, qkv, q, kv.k, kv.v, &p)
            }
            Fused::AttentionLinear => {
                let Op::Attention { q, kv, out, shape } = &ops[0] else {
                    return Err(lowbit_core::Error::invalid_config("fusion: not attention"));
                };
                let p = AttentionParams::of(kv, shape)?;
                let (w, _, o, _, _) = lin(&ops[1])?;
                self.attention_matmul_add(*q, kv.k, kv.v, *out, &p, w, o)
            }
            Fused::Ffn { norm: with_norm } => {
                let g_ops = if with_norm { &ops[2..] } else { ops };
                let Op::Glu {
                    x: gu,
                    out: ff,
                    n,
                    width,
                    ..
                } = g_ops[0]
                else {
                    return Err(lowbit_core::Error::invalid_config("fusion: not a glu op"));
                };
                let (w_down, _, out, _, _) = lin(&g_ops[1])?;
                if with_norm {
                    let (x, h, nm, _) = norm(&ops[0])?;
                    let (w_gu, ..) = lin(&ops[1])?;
                    self.ffn_swiglu(x, &nm, h, w_gu, gu, ff, w_down, n, width)
                } else {
                    self.swiglu_matmul_add(gu, ff, w_down, out, n, width)
                }
            }
        }
    }
}

/// The hint for a residual add before a norm-led group `next`.
fn next_norm_hint(next: &[Op]) -> Option<NormHint> {
    let (x, _, norm, _) = rms_norm(next.first()?)?;
    let (w, ..) = linear(next.get(1)?)?;
    Some(NormHint { x, norm, w })
}

/// The parts of a matched `Linear(q|k|v) + Rope + Rope + KvWrite` group.
fn qkv_parts(ops: &[Op]) -> Result<(QkvParams, WeightId, BufferId, BufferId, BufferId, KvView)> {
    let bad = || lowbit_core::Error::invalid_config("fusion: not a q|k|v group");
    let (w, x, qkv, n, _) = linear(&ops[0]).ok_or_else(bad)?;
    let (
        Op::Rope {
            out: oq, shape: sq, ..
        },
        Op::KvWrite { kv, pos0, .. },
    ) = (&ops[1], &ops[3])
    else {
        return Err(bad());
    };
    let p = QkvParams {
        n_tokens: n,
        pos0: *pos0,
        n_heads: sq.n_heads,
        n_kv_heads: kv.layout.n_kv_heads,
        head_dim: sq.head_dim,
        theta: sq.theta(),
        style: sq.style,
    };
    Ok((p, w, x, qkv, oq.buf, *kv))
}
