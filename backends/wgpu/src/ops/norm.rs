//! Norms: the RMSNorm kernel (f32 rows, or 8-bit blocks for a wide matvec), its fusions into
//! the matmul after it (normalise on load, 8-bit feed, or the words a residual add prepared),
//! the LayerNorm kernel, and the `Norm` op (either kind, with or without bias).

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct, weight, Internal};
use crate::ops::linear::{q8_len, q8_words_len, Epilogue, Input};
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::ops::{NormKind, Op};
use lowbit_core::{BufferId, Error, Result, WeightId};

/// An RMSNorm's parameters: `dim` weights in `weight`, `eps` added to the mean square.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RmsNorm {
    pub weight: BufferId,
    pub dim: usize,
    pub eps: f32,
}

/// How an RMSNorm's output reaches the matmul after it (`WgpuBackend::norm_feed`).
#[derive(Clone, Copy)]
pub(crate) enum NormFeed {
    /// Fused into the decode matvec, which normalises as it loads.
    Fused,
    /// The norm writes 8-bit activation blocks in this code order for the wide matvec.
    Q8(u32),
    /// The norm writes f32 rows.
    F32,
}

impl WgpuBackend {
    /// The `Norm` op on its own.
    pub(crate) fn norm(&self, op: &Op) -> Result<()> {
        let Op::Norm {
            kind,
            x,
            out,
            weight,
            bias,
            rows,
            dim,
            eps,
        } = *op
        else {
            return Err(Error::invalid_config("norm: not a norm op"));
        };
        if kind == NormKind::Rms && bias.is_none() {
            return self.norm_into(x, weight, out, rows, dim, eps, None);
        }
        self.norm_rows(kind, x, weight, bias, out, rows, dim, eps)
    }

    /// A norm of `rows` f32 rows of `dim` values from `x` into `out` (may be `x`): LayerNorm
    /// (`layer_norm`) or RMSNorm (`rms_norm`), either with `bias` added after the weights.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm_rows(
        &self,
        kind: NormKind,
        x: BufferId,
        weight: BufferId,
        bias: Option<BufferId>,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        distinct("norm weight", weight, out)?;
        if let Some(b) = bias {
            distinct("norm bias", b, out)?;
        }
        let in_place = x == out;
        let wg = self.tuning.norm_wg;
        let mut st = self.lock();
        check_len("norm input", st.buf(x)?, rows * dim)?;
        check_len("norm weight", st.buf(weight)?, dim)?;
        check_len("norm output", st.buf(out)?, rows * dim)?;
        let bb = match bias {
            Some(b) => {
                check_len("norm bias", st.buf(b)?, dim)?;
                Some(st.buf(b)?.buffer.clone())
            }
            None => None,
        };
        let (xb, wb, ob) = (
            st.buf(x)?.buffer.clone(),
            st.buf(weight)?.buffer.clone(),
            st.buf(out)?.buffer.clone(),
        );
        let mut defines = self.base_defines(wg);
        defines.extend([
            ("IN_PLACE", Define::Bool(in_place)),
            ("Q8_OUT", Define::Bool(false)),
            ("ORDER", Define::U32(0)),
            ("BIAS", Define::Bool(bias.is_some())),
        ]);
        let key = KernelKey {
            file: ShaderFile::Norm,
            entry: match kind {
                NormKind::Rms => "rms_norm",
                NormKind::Layer => "layer_norm",
            },
            defines,
        };
        use Slot::*;
        let mut slots = vec![Uniform, Read];
        let mut bindings = vec![Bind::Buffer(&wb)];
        if in_place {
            slots.push(ReadWrite);
            bindings.push(Bind::Buffer(&xb));
        } else {
            slots.extend([Read, ReadWrite]);
            bindings.extend([Bind::Buffer(&xb), Bind::Buffer(&ob)]);
        }
        if let Some(bb) = &bb {
            slots.push(Read);
            bindings.push(Bind::Buffer(bb));
        }
        let kernel = st.pipelines.get(&self.dev, &key, &slots)?;
        let (gx, gy) = fold(rows as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[dim as u32, eps.to_bits()],
                bindings: &bindings,
                groups: [gx, gy, 1],
            },
        )
    }

    /// RMSNorm of `rows` rows; with `q8` (`Some(order)`, see [`code_order`]; decode rows of a multiple of 32
    /// values) `out` receives 8-bit activation blocks for a wide matvec (`q8.wgsl`) instead.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm_into(
        &self,
        x: BufferId,
        weight: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
        q8: Option<u32>,
    ) -> Result<()> {
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        distinct("rms_norm weight", weight, out)?;
        let in_place = x == out;
        if q8.is_some() && (in_place || !dim.is_multiple_of(32) || self.tuning.norm_wg < 8) {
            return Err(Error::invalid_config(
                "8-bit norm output needs a distinct output, rows of a multiple of 32 and 8 lanes",
            ));
        }
        let wg = self.tuning.norm_wg;
        let mut st = self.lock();
        let (xb, wb, ob) = (st.buf(x)?, st.buf(weight)?, st.buf(out)?);
        check_len("rms_norm input", xb, rows * dim)?;
        check_len("rms_norm weight", wb, dim)?;
        check_len("rms_norm output", ob, rows * q8_len(dim, q8.is_some()))?;
        let (xb, wb, ob) = (xb.buffer.clone(), wb.buffer.clone(), ob.buffer.clone());
        let mut defines = self.base_defines(wg);
        defines.extend([
            ("IN_PLACE", Define::Bool(in_place)),
            ("Q8_OUT", Define::Bool(q8.is_some())),
            ("ORDER", Define::U32(q8.unwrap_or(0))),
            ("BIAS", Define::Bool(false)),
        ]);
        let key = KernelKey {
            file: ShaderFile::Norm,
            entry: "rms_norm",
            defines,
        };
        use Slot::*;
        let all = [Bind::Buffer(&wb), Bind::Buffer(&xb), Bind::Buffer(&ob)];
        let (slots, bindings): (&[Slot], &[Bind]) = if in_place {
            (&[Uniform, Read, ReadWrite], &all[..2])
        } else {
            (&[Uniform, Read, Read, ReadWrite], &all)
        };
        let kernel = st.pipelines.get(&self.dev, &key, slots)?;
        // One workgroup per row, or with 8-bit output (ceil(8 lanes × blocks / lanes), rows).
        let groups = if q8.is_some() {
            [
                ((dim / 32) * 8).div_ceil(wg as usize) as u32,
                rows as u32,
                1,
            ]
        } else {
            let (gx, gy) = fold(rows as u32, self.max_groups());
            [gx, gy, 1]
        };
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[dim as u32, eps.to_bits()],
                bindings,
                groups,
            },
        )
    }

    /// How an RMSNorm of `dim` values over `n` rows feeds the matmul of `w`: as 8-bit blocks
    /// for a wide matvec, fused into a narrow decode matvec where that pays
    /// (`Tuning::fuse_norm_into_narrow`), else as f32 rows.
    pub(crate) fn norm_feed(&self, w: WeightId, n: usize, dim: usize) -> Result<NormFeed> {
        let t = self.tuning;
        if let Some(order) = self.q8_input(w, n, dim, t.norm_wg)? {
            return Ok(NormFeed::Q8(order));
        }
        let st = self.lock();
        let gw = weight(&st.weights, w)?;
        let fuse = t.fused_norm
            && n == 1
            && gw.rotation.is_none()
            && !self.wide_matvec(gw, n)
            && gw.cols == dim
            && gw.stored_cols == dim
            && dim.is_multiple_of(8)
            && t.fuse_norm_into_narrow(&self.dev.limits, gw.rows, gw.cols);
        Ok(if fuse { NormFeed::Fused } else { NormFeed::F32 })
    }

    /// RMSNorm of `x` (through `scratch` unless fused) into the matmul of `w`, whose sums go
    /// to `out` as `epilogue` says.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm_matmul_into(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        if let Some((words, input)) = self.prepared_norm(x, norm, w, n)? {
            return self.matmul_into(w, words, out, n, epilogue, input);
        }
        let (dim, eps) = (norm.dim, norm.eps);
        match self.norm_feed(w, n, dim)? {
            NormFeed::Fused => self.matmul_into(w, x, out, n, epilogue, Input::Norm(norm)),
            NormFeed::Q8(order) => {
                // The blocks go to the backend's own buffer: the model's stays unwritten.
                let blocks = self.internal(Internal::Blocks, n * q8_len(dim, true))?;
                self.norm_into(x, norm.weight, blocks, n, dim, eps, Some(order))?;
                self.matmul_into(w, blocks, out, n, epilogue, Input::Q8)
            }
            NormFeed::F32 => {
                self.norm_into(x, norm.weight, scratch, n, dim, eps, None)?;
                self.matmul_into(w, scratch, out, n, epilogue, Input::F32)
            }
        }
    }

    /// `Norm{Rms} + Linear` fused (the norm's output `scratch` written only on the f32 path).
    pub(crate) fn rms_norm_matmul(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
    ) -> Result<()> {
        self.norm_matmul_into(x, norm, scratch, w, out, n, Epilogue::Store)
    }

    /// The epilogue of a residual add into `out` by one decode token through the matvec of
    /// `w`: `Epilogue::AddNorm` where the fusion pass found the next RMSNorm of `out`
    /// (`State::norm_hint`) and both matvecs can take it (the wide matvec of one-piece `w` with rows of whole
    /// 32-value blocks, the next one wide over as many columns), else `Epilogue::Add`.
    pub(crate) fn residual_epilogue(
        &self,
        w: WeightId,
        out: BufferId,
    ) -> Result<Epilogue<'static>> {
        let hint = {
            let mut st = self.lock();
            let Some(h) = st.norm_hint.take() else {
                return Ok(Epilogue::Add);
            };
            let gw = weight(&st.weights, w)?;
            let fits = h.x == out
                && self.wide_matvec(gw, 1)
                && gw.pieces.len() == 1
                && gw.rows == h.norm.dim
                && h.norm.dim.is_multiple_of(32);
            if !fits {
                return Ok(Epilogue::Add);
            }
            h
        };
        let dim = hint.norm.dim;
        let Some(order) = self.q8_input(hint.w, 1, dim, u32::MAX)? else {
            return Ok(Epilogue::Add);
        };
        // Words, then one partial per workgroup of at least 4 rows.
        let len = q8_words_len(dim) + dim / 4;
        let words = self.internal(Internal::NormWords, len)?;
        Ok(Epilogue::AddNorm {
            norm: hint.norm,
            words,
            order,
            next: hint.w,
        })
    }

    /// The input a residual add prepared for this RMSNorm of `x` into the matvec of `w`
    /// (`Epilogue::AddNorm`), if nothing has been recorded since: `(words, Input)`.
    pub(crate) fn prepared_norm(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        w: WeightId,
        n: usize,
    ) -> Result<Option<(BufferId, Input<'static>)>> {
        // The same `w` over as many columns takes the code order the words were made in.
        let ready = {
            let mut st = self.lock();
            let dispatches = st.rec.host.dispatches;
            st.norm_ready.take().filter(|r| {
                r.dispatches == dispatches
                    && r.x == x
                    && r.w == w
                    && r.norm.weight == norm.weight
                    && r.norm.dim == norm.dim
            })
        };
        let Some(r) = ready.filter(|_| n == 1) else {
            return Ok(None);
        };
        let input = Input::Q8WordsRms {
            parts: r.parts,
            eps: norm.eps,
        };
        Ok(Some((r.words, input)))
    }
}
