//! RoPE and the KV cache: the host-computed (cos, sin) tables, the strided `Rope` op, the
//! `KvWrite` op (strided row copies), and the fused q|k|v path: the decode matvec's RoPE
//! epilogue, or the prefill `rope_store_qkv` kernel (RoPE(q) out, RoPE(k) and v to the cache).

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct, weight, RopeTable, State};
use crate::ops::elementwise::CopyRows;
use crate::ops::linear::{Epilogue, Input};
use crate::ops::norm::RmsNorm;
use crate::ops::not_yet;
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::kv::KvView;
use lowbit_core::ops::{Cols, RopeShape, RopeStyle};
use lowbit_core::{BufferId, DType, Error, Result, WeightId};
use wgpu::util::DeviceExt;

/// Positions of the first RoPE table; it doubles when a step needs more.
const ROPE_MIN_POSITIONS: usize = 1024;

/// A fused q|k|v step: `n_tokens` rows of `q | k | v` (`row_len()` values each) at positions
/// `pos0 ..`: RoPE(q) to the query rows, RoPE(k) and v to the cache rows of their positions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QkvParams {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub theta: f32,
    pub style: RopeStyle,
}

impl QkvParams {
    /// Values of one query row.
    pub(crate) fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Values of one key (or value) row.
    pub(crate) fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values of one fused row: `q_dim + 2 × kv_dim`.
    pub(crate) fn row_len(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Errors unless the head dimension is even and positive (RoPE rotates pairs).
    pub(crate) fn check_head_dim(&self) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid_config(format!(
                "rope needs an even, positive head dimension, got {}",
                self.head_dim
            )));
        }
        Ok(())
    }

    /// Errors with `CONTEXT_OVERFLOW` unless a cache of `cache_len` values holds rows
    /// `pos0 .. pos0 + n_tokens`.
    pub(crate) fn check_cache(&self, cache_len: usize) -> Result<()> {
        check_cache_rows(cache_len, self.kv_dim(), self.pos0, self.n_tokens)
    }
}

/// Errors with `CONTEXT_OVERFLOW` unless a cache of `cache_len` values of rows of `row_len`
/// holds rows `pos0 .. pos0 + n`.
fn check_cache_rows(cache_len: usize, row_len: usize, pos0: usize, n: usize) -> Result<()> {
    let rows = pos0.saturating_add(n);
    if cache_len < rows.saturating_mul(row_len) {
        return Err(Error::context_overflow(format!(
            "the KV cache holds {} rows of {row_len}; rows up to {rows} were asked",
            cache_len / row_len.max(1)
        )));
    }
    Ok(())
}

impl WgpuBackend {
    /// The RoPE table of (theta, head_dim) covering positions `0..need`, grown (doubling) when
    /// too short.
    pub(crate) fn rope_table(
        &self,
        st: &mut State,
        theta: f32,
        head_dim: usize,
        need: usize,
    ) -> Result<wgpu::Buffer> {
        let i = st
            .rope
            .iter()
            .position(|r| r.theta_bits == theta.to_bits() && r.head_dim == head_dim);
        if let Some(r) = i.map(|i| &st.rope[i]).filter(|r| r.positions >= need) {
            return Ok(r.buffer.clone());
        }
        let positions = need.next_power_of_two().max(ROPE_MIN_POSITIONS);
        let half = head_dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        let mut table = Vec::with_capacity(positions * half * 2);
        for pos in 0..positions {
            for f in &freqs {
                let (s, c) = (pos as f64 * f).sin_cos();
                table.push(c as f32);
                table.push(s as f32);
            }
        }
        self.dev
            .check_buffer_size(table.len() as u64 * 4, "the RoPE table")?;
        let buffer = self.dev.scoped("allocating the RoPE table", || {
            self.dev
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("rope table"),
                    contents: bytemuck::cast_slice(&table),
                    usage: wgpu::BufferUsages::STORAGE,
                })
        })?;
        let r = RopeTable {
            theta_bits: theta.to_bits(),
            head_dim,
            positions,
            buffer: buffer.clone(),
        };
        match i {
            Some(i) => {
                let old = std::mem::replace(&mut st.rope[i], r);
                st.rec.forget(&old.buffer);
            }
            None => st.rope.push(r),
        }
        Ok(buffer)
    }

    /// Errors unless the q|k|v matmul of `w` can take the RoPE epilogue (see `rope_epilogue`).
    pub(crate) fn check_rope_epilogue(
        &self,
        st: &State,
        w: WeightId,
        n: usize,
        p: &QkvParams,
    ) -> Result<()> {
        if n != 1 || !self.rope_epilogue(st, w, p)? {
            return Err(Error::invalid_config(
                "the RoPE epilogue needs one decode token into the matvec of a one-piece q|k|v matrix",
            ));
        }
        Ok(())
    }

    /// Whether the q|k|v matvec of `w` for `p` (one decode token, wide or narrow) can rotate
    /// and store as it writes: one piece of `p.row_len()` rows, RoPE pairs whole within a
    /// workgroup (even rows per workgroup), and the eight storage bindings it needs.
    pub(crate) fn rope_epilogue(&self, st: &State, w: WeightId, p: &QkvParams) -> Result<bool> {
        let gw = weight(&st.weights, w)?;
        let t = self.tuning;
        let even_rows = if self.wide_matvec(gw, 1) {
            t.matvec_rows.is_multiple_of(2)
        } else {
            t.narrow_shape(&self.dev.limits).1.is_multiple_of(2)
        };
        Ok(p.n_tokens == 1
            && gw.pieces.len() == 1
            && gw.rows == p.row_len()
            && p.head_dim.is_multiple_of(2)
            && even_rows
            && self.dev.limits.max_storage_buffers_per_shader_stage >= 8)
    }

    /// `[Norm +] Linear(q|k|v) + Rope(q) + Rope(k) + KvWrite` fused: the decode matvec's RoPE
    /// epilogue (no RoPE dispatch, `qkv` unused), else the [norm and] matmul and
    /// `rope_store_qkv`. `x` is the linear's input; with `norm = Some((nx, norm))` it is the
    /// norm's output (scratch) and `nx` the norm's input.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn qkv_rope(
        &self,
        norm: Option<(BufferId, &RmsNorm)>,
        x: BufferId,
        w: WeightId,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        p.check_head_dim()?;
        if self.rope_epilogue(&self.lock(), w, p)? {
            let epilogue = Epilogue::Rope {
                k_cache,
                v_cache,
                p,
            };
            return match norm {
                Some((nx, nm)) => self.norm_matmul_into(nx, nm, x, w, q_out, 1, epilogue),
                None => self.matmul_into(w, x, q_out, 1, epilogue, Input::F32),
            };
        }
        match norm {
            Some((nx, nm)) => self.rms_norm_matmul(nx, nm, x, w, qkv, p.n_tokens)?,
            None => self.matmul_into(w, x, qkv, p.n_tokens, Epilogue::Store, Input::F32)?,
        }
        self.rope_store_qkv(qkv, q_out, k_cache, v_cache, p)
    }

    /// RoPE(q) of the fused rows `qkv` to `q_out`, RoPE(k) and v to the cache rows: one kernel.
    pub(crate) fn rope_store_qkv(
        &self,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        if p.n_tokens == 0 {
            return Ok(());
        }
        p.check_head_dim()?;
        for (a, b) in [
            (qkv, q_out),
            (qkv, k_cache),
            (qkv, v_cache),
            (q_out, k_cache),
            (q_out, v_cache),
            (k_cache, v_cache),
        ] {
            distinct("rope_store_qkv", a, b)?;
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len(
            "rope_store_qkv input",
            st.buf(qkv)?,
            p.n_tokens * p.row_len(),
        )?;
        check_len(
            "rope_store_qkv q output",
            st.buf(q_out)?,
            p.n_tokens * p.q_dim(),
        )?;
        for c in [k_cache, v_cache] {
            p.check_cache(st.buf(c)?.len)?;
        }
        let bufs = [qkv, q_out, k_cache, v_cache].map(|id| st.buf(id).map(|b| b.buffer.clone()));
        let [a, b, c, d] = bufs;
        let bufs = [a?, b?, c?, d?];
        let table = self.rope_table(&mut st, p.theta, p.head_dim, p.pos0 + p.n_tokens)?;
        let mut defines = self.base_defines(wg);
        defines.push(("QKV", Define::Bool(true)));
        let key = KernelKey {
            file: ShaderFile::Rope,
            entry: "rope_qkv",
            defines,
        };
        use Slot::*;
        let kernel = st.pipelines.get(
            &self.dev,
            &key,
            &[Uniform, Read, Read, ReadWrite, ReadWrite, ReadWrite],
        )?;
        let total = p.n_tokens * (p.n_heads + 2 * p.n_kv_heads) * (p.head_dim / 2);
        let (gx, gy) = fold(total.div_ceil(wg as usize) as u32, self.max_groups());
        let [b_qkv, b_q, b_k, b_v] = &bufs;
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    p.n_tokens as u32,
                    p.n_heads as u32,
                    p.n_kv_heads as u32,
                    p.head_dim as u32,
                    u32::from(p.style == RopeStyle::Adjacent),
                    p.pos0 as u32,
                ],
                bindings: &[&table, b_qkv, b_q, b_k, b_v].map(Bind::Buffer),
                groups: [gx, gy, 1],
            },
        )
    }

    /// The `Rope` op: RoPE of the heads of `x`'s rows into `out`'s (the same view: in place).
    /// Two views of one buffer must be the same view or share no element.
    pub(crate) fn rope(&self, x: &Cols, out: &Cols, s: &RopeShape) -> Result<()> {
        if s.n_tokens == 0 || s.n_heads == 0 {
            return Ok(());
        }
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(2) {
            return Err(Error::invalid_config(format!(
                "rope needs an even head dimension, got {}",
                s.head_dim
            )));
        }
        let in_place = x.buf == out.buf;
        let width = s.width();
        // Each invocation reads one pair of `x` and writes the same pair of `out`: two views of
        // one buffer work when they are the same view or share no element.
        if in_place && x != out && views_overlap(x, out, s.n_tokens, width) {
            return Err(Error::invalid_config(
                "rope: the source and destination views of one buffer overlap without being the same view",
            ));
        }
        if x.stride < width || out.stride < width {
            return Err(Error::invalid_config(format!(
                "rope: rows of {width} values need a stride of at least {width}"
            )));
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len("rope input", st.buf(x.buf)?, x.span(s.n_tokens, width))?;
        check_len("rope output", st.buf(out.buf)?, out.span(s.n_tokens, width))?;
        let (xb, ob) = (
            st.buf(x.buf)?.buffer.clone(),
            st.buf(out.buf)?.buffer.clone(),
        );
        let table = self.rope_table(&mut st, s.theta(), s.head_dim, s.pos0 + s.n_tokens)?;
        let key = KernelKey {
            file: ShaderFile::Rope,
            entry: "rope",
            defines: {
                let mut d = self.base_defines(wg);
                d.push(("QKV", Define::Bool(false)));
                d.push(("IN_PLACE", Define::Bool(in_place)));
                d
            },
        };
        use Slot::*;
        let all = [Bind::Buffer(&table), Bind::Buffer(&xb), Bind::Buffer(&ob)];
        let (slots, bindings): (&[Slot], &[Bind]) = if in_place {
            (&[Uniform, Read, ReadWrite], &all[..2])
        } else {
            (&[Uniform, Read, Read, ReadWrite], &all)
        };
        let kernel = st.pipelines.get(&self.dev, &key, slots)?;
        let total = s.n_tokens * s.n_heads * (s.head_dim / 2);
        let (gx, gy) = fold(total.div_ceil(wg as usize) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    s.n_tokens as u32,
                    s.n_heads as u32,
                    s.head_dim as u32,
                    u32::from(s.style == RopeStyle::Adjacent),
                    s.pos0 as u32,
                    x.offset as u32,
                    x.stride as u32,
                    out.offset as u32,
                    out.stride as u32,
                ],
                bindings,
                groups: [gx, gy, 1],
            },
        )
    }

    /// The `KvWrite` op: key and value rows (strided views) to cache rows `pos0 ..`.
    pub(crate) fn kv_write(
        &self,
        k: &Cols,
        v: &Cols,
        kv: &KvView,
        pos0: usize,
        n: usize,
    ) -> Result<()> {
        if kv.layout.dtype != DType::F32 {
            return Err(not_yet(&format!(
                "a KV write to a {} cache",
                kv.layout.dtype.name()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let row = kv.layout.row_len();
        if pos0 + n > kv.layout.rows {
            return Err(Error::context_overflow(format!(
                "the KV cache holds {} rows; rows up to {} were asked",
                kv.layout.rows,
                pos0 + n
            )));
        }
        for (src, cache) in [(k, kv.k), (v, kv.v)] {
            distinct("kv_write", src.buf, cache)?;
            if src.stride < row {
                return Err(Error::invalid_config(format!(
                    "kv_write: rows of {row} values need a stride of at least {row}"
                )));
            }
            let mut st = self.lock();
            check_len("kv_write source", st.buf(src.buf)?, src.span(n, row))?;
            check_cache_rows(st.buf(cache)?.len, row, pos0, n)?;
            let (s, c) = (
                st.buf(src.buf)?.buffer.clone(),
                st.buf(cache)?.buffer.clone(),
            );
            let rows = (src.stride != row).then_some(CopyRows {
                width: row,
                src_stride: src.stride,
                dst_stride: row,
                zero_pad: false,
            });
            self.copy_values(
                &mut st,
                &c,
                pos0 * row,
                Bind::Buffer(&s),
                src.offset,
                n * row,
                rows,
            )?;
        }
        Ok(())
    }
}

/// Whether `rows` rows of `width` values of views `a` and `b` (of one buffer) share an element.
fn views_overlap(a: &Cols, b: &Cols, rows: usize, width: usize) -> bool {
    if rows == 0 || width == 0 {
        return false;
    }
    let (a_end, b_end) = (a.span(rows, width), b.span(rows, width));
    if a_end <= b.offset || b_end <= a.offset {
        return false;
    }
    if a.stride != b.stride {
        // Interleaved views of different strides: conservatively, overlapping spans overlap.
        return true;
    }
    // Equal strides: row r of `a` meets row r' of `b` when |d + (r − r')·stride| < width.
    let (d, stride) = (a.offset as i64 - b.offset as i64, a.stride as i64);
    let last = rows as i64 - 1;
    (-last..=last).any(|k| (d + k * stride).abs() < width as i64)
}
