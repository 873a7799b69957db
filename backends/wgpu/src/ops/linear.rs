//! Linear maps: the decode matvec (narrow, or wide on 8-bit activation blocks) and the tiled
//! (or cooperative-matrix) prefill matmul of `matmul.wgsl`, their inputs (`Input`) and
//! epilogues (`Epilogue`: store, residual add, either with a bias, RoPE + KV store, SwiGLU,
//! next norm's input),
//! and the `Linear` op.

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct, weight, NormReady, State};
use crate::device::{COOP_TILE_K, COOP_TILE_R, COOP_TILE_T};
use crate::ops::norm::RmsNorm;
use crate::ops::rope::QkvParams;
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::fold;
use crate::weights::{GpuWeight, WeightKind};
use lowbit_core::ops::RopeStyle;
use lowbit_core::{BufferId, Error, Result, WeightId};

/// The order in which a wide matvec unpacks `bits`-bit codes, which 8-bit activation blocks
/// must follow (`ORDER_*` in q8.wgsl: 2- and 3-bit stride-4, 4-bit even/odd, 8-bit natural).
pub(crate) fn code_order(bits: u8) -> u32 {
    match bits {
        2 | 3 => 2,
        4 => 1,
        _ => 0,
    }
}

/// What a matmul's `x` holds.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    /// f32 activations.
    F32,
    /// f32 activations to RMS-normalise on the fly (decode matvec only).
    Norm(&'a RmsNorm),
    /// 8-bit activation blocks in the weight format's order (wide matvec only, `q8.wgsl`).
    Q8,
    /// The same with a scale per word of four codes (`q8.wgsl`), as `Epilogue::Swiglu` writes.
    Q8Words,
    /// Words of g · x as `Epilogue::AddNorm` writes them, then its `parts` partial sums of x²:
    /// the matvec scales its sums by 1 / sqrt(Σx² / cols + eps), an RMSNorm of x with weights g.
    Q8WordsRms { parts: u32, eps: f32 },
}

/// What a matmul does with its sums.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `out = sums`.
    Store,
    /// `out += sums` (a residual add).
    Add,
    /// `out = sums + bias` (a linear map's bias, `rows` values).
    StoreBias(BufferId),
    /// `out += sums + bias`.
    AddBias(BufferId),
    /// The q|k|v rows of one decode token (one piece; see `rope_epilogue`): RoPE(q) to `out`,
    /// RoPE(k) and v to row `p.pos0` of the caches.
    Rope {
        k_cache: BufferId,
        v_cache: BufferId,
        p: &'a QkvParams,
    },
    /// The gate|up rows of one decode token (one piece, gate rows then up rows; see
    /// `swiglu_epilogue`): silu(gate) · up to `out` as 8-bit words with their own scales
    /// (`Input::Q8Words`) in code order `order`.
    Swiglu { order: u32 },
    /// `out += sums` of one decode token (wide matvec, one piece), preparing the next RMSNorm
    /// of `out` as well: g · out (g: `norm`'s weights) to `words` as 8-bit words with their own
    /// scales in code order `order`, then one partial sum of out² per workgroup
    /// (`Input::Q8WordsRms`) for the matvec of `next`.
    AddNorm {
        norm: RmsNorm,
        words: BufferId,
        order: u32,
        next: WeightId,
    },
}

/// Values (f32 slots) a row of `len` activations takes: `len`, or as 8-bit activation blocks
/// (12 words per 32 values, see q8.wgsl).
pub(crate) fn q8_len(len: usize, q8: bool) -> usize {
    if q8 {
        len / 32 * 12
    } else {
        len
    }
}

/// Values (f32 slots) a row of `len` activations takes as 8-bit words with their own scales
/// (16 words per 32 values, see q8.wgsl).
pub(crate) fn q8_words_len(len: usize) -> usize {
    len / 32 * 16
}

impl WgpuBackend {
    /// The `Linear` op on its own.
    pub(crate) fn linear(
        &self,
        w: WeightId,
        bias: Option<BufferId>,
        x: BufferId,
        out: BufferId,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        distinct("linear", x, out)?;
        let epilogue = match (bias, accumulate) {
            (None, false) => Epilogue::Store,
            (None, true) => Epilogue::Add,
            (Some(b), false) => Epilogue::StoreBias(b),
            (Some(b), true) => Epilogue::AddBias(b),
        };
        self.matmul_into(w, x, out, n, epilogue, Input::F32)
    }

    /// Whether `n` activation rows times `gw` take the wide matvec.
    pub(crate) fn wide_matvec(&self, gw: &GpuWeight, n: usize) -> bool {
        let t = self.tuning;
        // Rows of at least 32 values per lane of 2-, 3-, 4- or 8-bit codes (whole blocks per
        // lane, 8-, 12- or 16-byte code reads).
        let vec_codes =
            matches!(gw.kind, WeightKind::Quant { spec: s, .. } if matches!(s.bits, 2 | 3 | 4 | 8));
        n == 1 && t.wide_matvec && vec_codes && gw.cols >= 32 * t.matvec_wg as usize
    }

    /// The code order in which `n` rows of `cols` activations made by a producer of
    /// `producer_lanes` lanes may reach `w` as 8-bit blocks (the wide matvec; eight lanes per
    /// block), if they may.
    pub(crate) fn q8_input(
        &self,
        w: WeightId,
        n: usize,
        cols: usize,
        producer_lanes: u32,
    ) -> Result<Option<u32>> {
        let st = self.lock();
        let gw = weight(&st.weights, w)?;
        // A matrix stored in a rotated basis reads its rows rotated, from f32 rows.
        let (WeightKind::Quant { spec, .. }, true, None) =
            (gw.kind, self.wide_matvec(gw, n), &gw.rotation)
        else {
            return Ok(None);
        };
        Ok((gw.cols == cols && producer_lanes >= 8).then_some(code_order(spec.bits)))
    }

    /// `x · Wᵀ` into `out` as `epilogue` says; `input` says what `x` holds.
    pub(crate) fn matmul_into(
        &self,
        w: WeightId,
        x: BufferId,
        out: BufferId,
        n: usize,
        epilogue: Epilogue<'_>,
        input: Input<'_>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        // A dense matrix stored with zero columns reads rows widened to match; one stored in
        // a rotated basis reads rotated rows.
        let (cols, stored, rotated) = {
            let st = self.lock();
            let gw = weight(&st.weights, w)?;
            (gw.cols, gw.stored_cols, gw.rotation.is_some())
        };
        let x = if rotated {
            if !matches!(input, Input::F32) {
                return Err(Error::invalid_config(
                    "a matrix quantized in a rotated basis takes f32 rows only",
                ));
            }
            distinct("linear", x, out)?;
            self.rotate_rows(w, x, n)?
        } else if stored == cols {
            x
        } else if matches!(input, Input::F32) {
            distinct("linear", x, out)?;
            self.pad_rows(x, n, cols, stored)?
        } else {
            return Err(Error::invalid_config(
                "a matrix of columns not a multiple of 32 takes f32 rows only",
            ));
        };
        let (norm, xq8, words) = match input {
            Input::F32 => (None, false, false),
            Input::Norm(nm) => (Some(nm), false, false),
            Input::Q8 => (None, true, false),
            Input::Q8Words | Input::Q8WordsRms { .. } => (None, true, true),
        };
        let rms_in = match input {
            Input::Q8WordsRms { parts, eps } => Some((parts, eps)),
            _ => None,
        };
        if let Some(nm) = norm {
            distinct("rms_norm_matmul", nm.weight, out)?;
        }
        let t = self.tuning;
        let mut st = self.lock();
        let rope = match epilogue {
            Epilogue::Rope {
                k_cache,
                v_cache,
                p,
            } => {
                self.check_rope_epilogue(&st, w, n, p)?;
                for (a, b) in [(x, out), (x, k_cache), (x, v_cache)] {
                    distinct("q|k|v projection with RoPE", a, b)?;
                }
                for (a, b) in [(out, k_cache), (out, v_cache), (k_cache, v_cache)] {
                    distinct("q|k|v projection with RoPE", a, b)?;
                }
                check_len("RoPE q output", st.buf(out)?, p.q_dim())?;
                for c in [k_cache, v_cache] {
                    p.check_cache(st.buf(c)?.len)?;
                }
                let table = self.rope_table(&mut st, p.theta, p.head_dim, p.pos0 + 1)?;
                let (k, v) = (
                    st.buf(k_cache)?.buffer.clone(),
                    st.buf(v_cache)?.buffer.clone(),
                );
                Some((table, k, v, p))
            }
            _ => None,
        };
        let swiglu = match epilogue {
            Epilogue::Swiglu { order } => {
                if !self.swiglu_epilogue(&st, w, n)? {
                    return Err(Error::invalid_config(
                        "the SwiGLU epilogue needs one decode token into the wide matvec of a one-piece gate|up matrix",
                    ));
                }
                distinct("gate|up projection with SwiGLU", x, out)?;
                Some(order)
            }
            _ => None,
        };
        let norm_out = match epilogue {
            Epilogue::AddNorm {
                norm,
                words,
                order,
                next,
            } => {
                distinct("residual add with the next norm's input", x, words)?;
                distinct("residual add with the next norm's input", out, words)?;
                distinct("residual add with the next norm's input", norm.weight, out)?;
                Some((norm, words, order, next))
            }
            _ => None,
        };
        let accumulate = matches!(
            epilogue,
            Epilogue::Add | Epilogue::AddBias(_) | Epilogue::AddNorm { .. }
        );
        let bias = match epilogue {
            Epilogue::StoreBias(b) | Epilogue::AddBias(b) => {
                if norm.is_some() {
                    return Err(Error::invalid_config(
                        "a linear map's bias does not combine with a fused RMSNorm",
                    ));
                }
                distinct("linear bias", b, out)?;
                Some(b)
            }
            _ => None,
        };
        let State {
            buffers,
            weights,
            pipelines,
            rec,
            dummy,
            ..
        } = &mut *st;
        let gw = weight(weights, w)?;
        let get = |id: BufferId| {
            buffers
                .get(&id.0)
                .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", id.0)))
        };
        let (xb, ob) = (get(x)?, get(out)?);
        let bias_b = match bias {
            Some(b) => {
                let bb = get(b)?;
                check_len("linear bias", bb, gw.rows)?;
                Some(bb.buffer.clone())
            }
            None => None,
        };
        let in_len = if words {
            q8_words_len(gw.cols) + rms_in.map_or(0, |(parts, _)| parts as usize)
        } else {
            q8_len(gw.stored_cols, xq8)
        };
        check_len("matmul input", xb, n * in_len)?;
        if swiglu.is_some() {
            check_len("SwiGLU output", ob, q8_words_len(gw.rows / 2))?;
        } else if rope.is_none() {
            check_len("matmul output", ob, n * gw.rows)?;
        }
        let tiled = n > 1;
        let wide = self.wide_matvec(gw, n);
        if xq8 && (!wide || norm.is_some()) {
            return Err(Error::invalid_config(
                "8-bit activations feed only the wide decode matvec, without a fused norm",
            ));
        }
        if wide && norm.is_some() {
            return Err(Error::invalid_config(
                "a fused RMSNorm feeds only the narrow decode matvec (the wide one takes 8-bit blocks)",
            ));
        }
        let (entry, (wg, unroll), rows_per_wg) = if tiled {
            ("matmul_tiled", (256, 1), t.matvec_rows)
        } else if wide {
            let shape = t.wide_shape(&self.dev.limits, gw.cols, gw.kind);
            // The SwiGLU epilogue: a word's four gate and four up rows per workgroup; the
            // next norm's input: whole words (4 or 8 rows).
            let rows = if swiglu.is_some() {
                8
            } else if norm_out.is_some() {
                if t.matvec_rows >= 8 {
                    8
                } else {
                    4
                }
            } else {
                t.matvec_rows
            };
            ("matvec", shape, rows)
        } else {
            let (lanes, rows) = t.narrow_shape(&self.dev.limits);
            ("matvec", (lanes, 1), rows)
        };
        let norm_w = match norm {
            Some(nm) if !tiled && nm.dim == gw.cols => {
                let b = get(nm.weight)?;
                check_len("rms_norm weight", b, nm.dim)?;
                Some((b.buffer.clone(), nm.eps))
            }
            Some(_) => {
                return Err(Error::invalid_config(
                    "a fused RMSNorm needs a decode matvec and a norm as long as the rows",
                ))
            }
            None => None,
        };
        let norm_out = match norm_out {
            Some((nm, words, order, next)) => {
                if !wide || gw.pieces.len() != 1 || gw.rows != nm.dim || !nm.dim.is_multiple_of(32)
                {
                    return Err(Error::invalid_config(
                        "a residual add preparing the next norm needs one decode token into the wide matvec of a one-piece matrix with rows of whole 32-value blocks",
                    ));
                }
                let parts = (gw.rows as u32).div_ceil(rows_per_wg);
                let (g, wb) = (get(nm.weight)?, get(words)?);
                check_len("rms_norm weight", g, nm.dim)?;
                check_len(
                    "the next norm's input",
                    wb,
                    q8_words_len(nm.dim) + parts as usize,
                )?;
                Some((
                    g.buffer.clone(),
                    wb.buffer.clone(),
                    nm,
                    words,
                    order,
                    parts,
                    next,
                ))
            }
            None => None,
        };
        let out_order = swiglu.or(norm_out.as_ref().map(|n| n.4));
        // Prefill on cooperative matrices: fixed 128-token × 128-row tiles (eight 32-lane
        // subgroups of 32 × 64 outputs each).
        let coop = tiled && self.dev.coop_matrix;
        let (tile_t, tile_r, tile_k) = if coop {
            (COOP_TILE_T, COOP_TILE_R, COOP_TILE_K)
        } else {
            (t.tile_t, t.tile_r, t.tile_k())
        };
        let mut defines = self.base_defines(wg);
        defines.extend(Self::weight_defines(gw.kind, self.dev.f16));
        defines.extend([
            ("ROWS_PER_WG", Define::U32(rows_per_wg)),
            (
                "VEC2",
                Define::Bool(matches!(gw.kind, WeightKind::Quant { spec: s, .. } if s.bits == 2)),
            ),
            (
                "CODES3",
                Define::Bool(matches!(gw.kind, WeightKind::Quant { spec: s, .. } if s.bits == 3)),
            ),
            (
                "ORDER",
                Define::U32(match gw.kind {
                    WeightKind::Quant { spec: s, .. } => code_order(s.bits),
                    _ => 0,
                }),
            ),
            ("TILE_T", Define::U32(tile_t)),
            ("TILE_R", Define::U32(tile_r)),
            ("TILE_K", Define::U32(tile_k)),
            ("COOP_TILED", Define::Bool(coop)),
            (
                "INT_TILED",
                Define::Bool(
                    tiled
                        && !coop
                        && t.int_prefill
                        && matches!(gw.kind, WeightKind::Quant { spec: s, .. } if matches!(s.bits, 2 | 3 | 4 | 8)),
                ),
            ),
            ("WIDE", Define::Bool(wide)),
            ("UNROLL", Define::U32(unroll)),
            ("ACCUMULATE", Define::Bool(accumulate)),
            ("NORM", Define::Bool(norm_w.is_some())),
            ("XQ8", Define::Bool(xq8)),
            ("WORD_SCALES", Define::Bool(words)),
            ("ROPE", Define::Bool(rope.is_some())),
            ("SWIGLU", Define::Bool(swiglu.is_some())),
            ("NORM_OUT", Define::Bool(norm_out.is_some())),
            ("RMS_IN", Define::Bool(rms_in.is_some())),
            ("OUT_ORDER", Define::U32(out_order.unwrap_or(0))),
            ("BIAS", Define::Bool(bias_b.is_some())),
        ]);
        let key = KernelKey {
            file: ShaderFile::Matmul,
            entry,
            defines,
        };
        use Slot::*;
        // Codes, group parameters, input, output; then the wide kernel's fused norm weights
        // and its RoPE epilogue's table and caches, where present.
        let mut slots = vec![Uniform, Read, Read, Read, ReadWrite];
        if norm_w.is_some() {
            slots.push(Read);
        }
        if rope.is_some() {
            slots.extend([Read, ReadWrite, ReadWrite]);
        }
        if norm_out.is_some() {
            slots.extend([Read, ReadWrite]);
        }
        if bias_b.is_some() {
            slots.push(Read);
        }
        let kernel = pipelines.get(&self.dev, &key, &slots)?;
        for p in &gw.pieces {
            let groups = if tiled {
                [
                    p.rows.div_ceil(tile_r as usize) as u32,
                    n.div_ceil(tile_t as usize) as u32,
                    1,
                ]
            } else {
                let (gx, gy) = fold(
                    p.rows.div_ceil(rows_per_wg as usize) as u32,
                    self.max_groups(),
                );
                [gx, gy, n as u32]
            };
            let mut params = vec![
                p.rows as u32,
                gw.stored_cols as u32,
                n as u32,
                gw.rows as u32,
                p.row_start as u32,
                norm_w
                    .as_ref()
                    .map(|nw| nw.1)
                    .or(rms_in.map(|r| r.1))
                    .unwrap_or(0.0)
                    .to_bits(),
                rms_in.map_or(0, |r| r.0),
            ];
            let mut bindings = vec![
                Bind::Buffer(&p.data),
                Bind::Buffer(p.params.as_ref().unwrap_or(dummy)),
                Bind::Buffer(&xb.buffer),
                Bind::Buffer(&ob.buffer),
            ];
            if let Some((nw, _)) = &norm_w {
                bindings.push(Bind::Buffer(nw));
            }
            if let Some((table, k, v, qp)) = &rope {
                params.extend([
                    qp.pos0 as u32,
                    qp.head_dim as u32,
                    qp.q_dim() as u32,
                    qp.kv_dim() as u32,
                    u32::from(qp.style == RopeStyle::Adjacent),
                ]);
                bindings.extend([table, k, v].map(Bind::Buffer));
            }
            if let Some((g, wb, ..)) = &norm_out {
                bindings.extend([g, wb].map(Bind::Buffer));
            }
            if let Some(bb) = &bias_b {
                bindings.push(Bind::Buffer(bb));
            }
            rec.dispatch(
                &self.dev,
                &Dispatch {
                    kernel: &kernel,
                    params: &params,
                    bindings: &bindings,
                    groups,
                },
            )?;
        }
        st.norm_ready = norm_out.map(|(_, _, norm, words, _, parts, next)| NormReady {
            x: out,
            norm,
            w: next,
            words,
            parts,
            dispatches: st.rec.host.dispatches,
        });
        Ok(())
    }

    /// Whether the gate|up matvec of `w` for `n` tokens can apply the SwiGLU in its epilogue
    /// (`Epilogue::Swiglu`): one decode token, the wide matvec, one piece, whole 32-value
    /// blocks of output (gate and up rows alike), at least 8 lanes.
    pub(crate) fn swiglu_epilogue(&self, st: &State, w: WeightId, n: usize) -> Result<bool> {
        let gw = weight(&st.weights, w)?;
        let (lanes, _) = self.tuning.wide_shape(&self.dev.limits, gw.cols, gw.kind);
        Ok(n == 1
            && self.wide_matvec(gw, n)
            && gw.pieces.len() == 1
            && gw.rows.is_multiple_of(64)
            && lanes >= 8)
    }
}
