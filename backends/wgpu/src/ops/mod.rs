//! The op families, one file each: each holds its kernels' keys and dispatches, the fused
//! composites the fusion pass maps groups of ops onto, and the single op. `run_op` runs one
//! [`Op`] on its own.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod embed;
pub(crate) mod im2col;
pub(crate) mod linear;
pub(crate) mod norm;
pub(crate) mod rope;
pub(crate) mod rotate;
pub(crate) mod softmax;

use crate::backend::WgpuBackend;
use crate::shader::Define;
use crate::weights::WeightKind;
use lowbit_core::ops::Op;
use lowbit_core::quant::Scheme;
use lowbit_core::{Error, ErrorCode, Result};

/// The error of an op (or a variant of one) this backend has no kernel for yet.
pub(crate) fn not_yet(what: &str) -> Error {
    Error::new(
        ErrorCode::UnsupportedModel,
        format!("webgpu: {what} is not implemented yet"),
    )
}

impl WgpuBackend {
    /// Records one op on its own (no fusion with its neighbours).
    pub(crate) fn run_op(&self, op: &Op) -> Result<()> {
        match op {
            Op::Embed { table, ids, out } => self.embed(*table, ids, *out),
            Op::Linear {
                w,
                bias,
                x,
                out,
                n,
                accumulate,
            } => self.linear(*w, *bias, *x, *out, *n, *accumulate),
            Op::Norm { .. } => self.norm(op),
            Op::Activation { act, x, out, len } => self.activation(*act, *x, *out, *len),
            Op::Glu {
                act,
                x,
                out,
                n,
                width,
            } => self.glu(*act, *x, *out, *n, *width),
            Op::Rope { x, out, shape } => self.rope(x, out, shape),
            Op::KvWrite {
                k,
                v,
                kv,
                pos0,
                n_tokens,
            } => self.kv_write(k, v, kv, *pos0, *n_tokens),
            Op::Attention { q, kv, out, shape } => self.attention(*q, kv, *out, shape),
            Op::Add { dst, src, len } => self.add(*dst, *src, *len),
            Op::Scale { x, len, factor } => self.scale(*x, *len, *factor),
            Op::Softmax { x, rows, len } => self.softmax(*x, *rows, *len),
            Op::Argmax {
                x,
                len,
                out,
                out_offset,
            } => self.argmax(*x, *len, *out, *out_offset),
            Op::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => self.copy(*src, *src_offset, *dst, *dst_offset, *len),
            Op::Im2col { x, out, shape } => self.im2col(*x, *out, shape),
        }
    }

    /// Constants every kernel shares.
    pub(crate) fn base_defines(&self, wg: u32) -> Vec<(&'static str, Define)> {
        vec![
            ("WORKGROUP_SIZE", Define::U32(wg)),
            ("USE_SUBGROUPS", Define::Bool(self.dev.subgroups)),
        ]
    }

    pub(crate) fn weight_defines(kind: WeightKind, f16: bool) -> Vec<(&'static str, Define)> {
        let (k, bits, group, asym, grid) = match kind {
            WeightKind::Quant { spec: s, grid } => (
                0,
                s.bits,
                s.group_size,
                s.scheme == Scheme::Asymmetric,
                grid,
            ),
            WeightKind::F32 => (1, 8, 32, false, false),
            WeightKind::F16 => (2, 8, 32, false, false),
        };
        vec![
            ("WEIGHT_KIND", Define::U32(k)),
            ("BITS", Define::U32(u32::from(bits))),
            ("GROUP_SIZE", Define::U32(group as u32)),
            ("ASYMMETRIC", Define::Bool(asym)),
            // Codes index a learned table of levels (weights.wgsl); compiled out when false.
            ("GRID", Define::Bool(grid)),
            ("USE_F16", Define::Bool(f16)),
        ]
    }

    pub(crate) fn max_groups(&self) -> u32 {
        self.dev.limits.max_compute_workgroups_per_dimension
    }
}
