//! Running one [`Op`] on the CPU: every shape is checked against the buffers first (a refused
//! op writes nothing), then the kernels of [`crate::ops`] and [`crate::matmul`] run.

use crate::backend::{ensure, span, CpuBackend};
use crate::buffers::View;
use crate::kernels::scalar;
use crate::ops::attention::Geometry;
use crate::ops::norm::NormParams;
use crate::{matmul, ops};
use half::f16;
use lowbit_core::backend::{BufferId, DType, WeightId, WeightMatrix};
use lowbit_core::error::{Error, Result};
use lowbit_core::kv::KvView;
use lowbit_core::ops::{AttentionShape, Cols, Im2col, Mask, NormKind, Op, RopeShape, TokenIds};

/// Errors with `INVALID_CONFIG` naming `op` unless `ok`.
fn require(op: &str, ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    lowbit_core::ops::ensure(op, ok, what)
}

/// Values a buffer needs for `rows` rows of `width` of the view `c`, without overflow.
fn cols_need(op: &str, c: &Cols, rows: usize, width: usize) -> Result<usize> {
    if rows == 0 {
        return Ok(0);
    }
    span(op, &[rows - 1, c.stride])?
        .checked_add(c.offset)
        .and_then(|v| v.checked_add(width))
        .ok_or_else(|| Error::invalid_config(format!("{op}: view {c:?} overflows usize")))
}

/// Copies rows of a view into a dense vector.
fn gather(src: &[f32], c: &Cols, rows: usize, width: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * width);
    for r in 0..rows {
        v.extend_from_slice(&src[c.at(r, 0)..c.at(r, 0) + width]);
    }
    v
}

/// Writes dense rows into a view.
fn scatter(dst: &mut [f32], c: &Cols, width: usize, rows: &[f32]) {
    for (r, row) in rows.chunks_exact(width).enumerate() {
        dst[c.at(r, 0)..c.at(r, 0) + width].copy_from_slice(row);
    }
}

impl CpuBackend {
    /// Runs one op.
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
            Op::Norm {
                kind,
                x,
                out,
                weight,
                bias,
                rows,
                dim,
                eps,
            } => self.norm(*kind, *x, *out, *weight, *bias, *rows, *dim, *eps),
            Op::Activation { act, x, out, len } => {
                let len = *len;
                self.unary("activation", *x, *out, len, len, |x, o| {
                    ops::elementwise::activation(*act, x, o)
                })
            }
            Op::Glu {
                act,
                x,
                out,
                n,
                width,
            } => {
                let (n, width) = (*n, *width);
                let need_in = span("glu", &[n, 2, width])?;
                let need_out = span("glu", &[n, width])?;
                self.unary("glu", *x, *out, need_in, need_out, |x, o| {
                    if width == 0 {
                        return;
                    }
                    for (or, gu) in o.chunks_exact_mut(width).zip(x.chunks_exact(2 * width)) {
                        let (g, u) = gu.split_at(width);
                        ops::elementwise::glu(*act, g, u, or);
                    }
                })
            }
            Op::Rope { x, out, shape } => self.rope(x, out, shape),
            Op::KvWrite {
                k,
                v,
                kv,
                pos0,
                n_tokens,
            } => self.kv_write(k, v, kv, *pos0, *n_tokens),
            Op::Attention { q, kv, out, shape } => self.attention(*q, kv, *out, shape),
            Op::Add { dst, src, len } => {
                let len = *len;
                ensure("add", "source", self.buffers.f32_len(*src)?, len)?;
                self.buffers.with(&[*src], *dst, |ins, d| {
                    ensure("add", "destination", d.len(), len)?;
                    ops::elementwise::add(&mut d[..len], &ins[0][..len]);
                    Ok(())
                })
            }
            Op::Scale { x, len, factor } => {
                let len = *len;
                self.buffers.write(*x, |b| {
                    ensure("scale", "x", b.len(), len)?;
                    ops::elementwise::scale(&mut b[..len], *factor);
                    Ok(())
                })
            }
            Op::Softmax { x, rows, len } => {
                let (rows, len) = (*rows, *len);
                let need = span("softmax", &[rows, len])?;
                self.buffers.write(*x, |b| {
                    ensure("softmax", "x", b.len(), need)?;
                    if len > 0 {
                        b[..need]
                            .chunks_exact_mut(len)
                            .for_each(ops::elementwise::softmax);
                    }
                    Ok(())
                })
            }
            Op::Argmax {
                x,
                len,
                out,
                out_offset,
            } => {
                let len = *len;
                let i = self.buffers.read(*x, |b| {
                    ensure("argmax", "x", b.len(), len)?;
                    Ok(ops::elementwise::argmax(&b[..len]))
                })?;
                self.buffers.write(*out, |o| {
                    ensure(
                        "argmax",
                        "output buffer",
                        o.len(),
                        out_offset.saturating_add(1),
                    )?;
                    o[*out_offset] = i as f32;
                    Ok(())
                })
            }
            Op::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => {
                let src_end = src_offset.saturating_add(*len);
                let dst_end = dst_offset.saturating_add(*len);
                ensure("copy", "source", self.buffers.f32_len(*src)?, src_end)?;
                self.buffers.with(&[*src], *dst, |ins, d| {
                    ensure("copy", "destination", d.len(), dst_end)?;
                    d[*dst_offset..dst_end].copy_from_slice(&ins[0][*src_offset..src_end]);
                    Ok(())
                })
            }
            Op::Im2col { x, out, shape } => self.im2col(*x, *out, shape),
        }
    }

    /// An op reading `need_in` values of `x` and writing `need_out` values of `out` (which may
    /// be `x`).
    fn unary(
        &self,
        op: &str,
        x: BufferId,
        out: BufferId,
        need_in: usize,
        need_out: usize,
        f: impl FnOnce(&[f32], &mut [f32]),
    ) -> Result<()> {
        ensure(op, "x", self.buffers.f32_len(x)?, need_in)?;
        self.buffers.with(&[x], out, |ins, o| {
            ensure(op, "output buffer", o.len(), need_out)?;
            f(&ins[0][..need_in], &mut o[..need_out]);
            Ok(())
        })
    }

    fn embed(&self, table: WeightId, ids: &TokenIds, out: BufferId) -> Result<()> {
        const OP: &str = "embed";
        let w = self.weight(table)?;
        let (rows, cols) = w.shape();
        // Host ids must lie in the table; device ids outside it leave their rows unwritten
        // (the op's contract: the host cannot check them without a round trip).
        let ids: Vec<Option<usize>> = match ids {
            TokenIds::Host(v) => {
                if let Some(t) = v.iter().find(|&&t| t as usize >= rows) {
                    return Err(Error::invalid_config(format!(
                        "{OP}: token {t} is outside the table of {rows} rows"
                    )));
                }
                v.iter().map(|&t| Some(t as usize)).collect()
            }
            TokenIds::Device { buf, offset, n } => self.buffers.read(*buf, |b| {
                ensure(OP, "ids", b.len(), offset.saturating_add(*n))?;
                Ok(b[*offset..*offset + *n]
                    .iter()
                    .map(|&v| {
                        (v >= 0.0 && v.fract() == 0.0 && (v as usize) < rows).then_some(v as usize)
                    })
                    .collect())
            })?,
        };
        let need = span(OP, &[ids.len(), cols])?;
        self.buffers.write(out, |o| {
            ensure(OP, "output buffer", o.len(), need)?;
            for (i, id) in ids.iter().enumerate() {
                let Some(r) = *id else { continue };
                let dst = &mut o[i * cols..(i + 1) * cols];
                // Only the looked-up rows are dequantized.
                match &*w {
                    WeightMatrix::F32 { data, .. } => {
                        dst.copy_from_slice(&data[r * cols..(r + 1) * cols])
                    }
                    WeightMatrix::F16 { data, .. } => {
                        for (d, s) in dst.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                            *d = f16::to_f32(*s);
                        }
                    }
                    WeightMatrix::Quantized(m) => {
                        scalar::dequantize_row(m, r, dst);
                        if let Some(rot) = m.rotation {
                            rot.unrotate(&rot.signs(cols), dst);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn linear(
        &self,
        w: WeightId,
        bias: Option<BufferId>,
        x: BufferId,
        out: BufferId,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "linear";
        require(OP, x != out, || "x and out must be distinct buffers".into())?;
        let wm = self.weight(w)?;
        let (rows, cols) = wm.shape();
        let need_x = span(OP, &[n, cols])?;
        let need_out = span(OP, &[n, rows])?;
        ensure(OP, "x", self.buffers.f32_len(x)?, need_x)?;
        if let Some(b) = bias {
            ensure(OP, "bias", self.buffers.f32_len(b)?, rows)?;
        }
        if need_out == 0 {
            return Ok(());
        }
        let inputs: Vec<BufferId> = std::iter::once(x).chain(bias).collect();
        self.buffers.with(&inputs, out, |ins, o| {
            ensure(OP, "output buffer", o.len(), need_out)?;
            let (x, o) = (&ins[0][..need_x], &mut o[..need_out]);
            if accumulate {
                // The product, then one add per value: the rounding of a matmul and an add.
                let mut prod = vec![0.0f32; need_out];
                matmul::matmul(&self.pool, self.isa, self.exact, &wm, x, n, &mut prod);
                ops::elementwise::add(o, &prod);
            } else {
                matmul::matmul(&self.pool, self.isa, self.exact, &wm, x, n, o);
            }
            if let Some(b) = ins.get(1) {
                for row in o.chunks_exact_mut(rows) {
                    ops::elementwise::add(row, &b[..rows]);
                }
            }
            Ok(())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        kind: NormKind,
        x: BufferId,
        out: BufferId,
        weight: BufferId,
        bias: Option<BufferId>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "norm";
        require(OP, dim > 0, || "dim must be positive".into())?;
        let need = span(OP, &[rows, dim])?;
        ensure(OP, "x", self.buffers.f32_len(x)?, need)?;
        ensure(OP, "weight", self.buffers.f32_len(weight)?, dim)?;
        if let Some(b) = bias {
            ensure(OP, "bias", self.buffers.f32_len(b)?, dim)?;
        }
        let inputs: Vec<BufferId> = [x, weight].into_iter().chain(bias).collect();
        self.buffers.with(&inputs, out, |ins, o| {
            ensure(OP, "output buffer", o.len(), need)?;
            let params = NormParams {
                kind,
                weight: &ins[1][..dim],
                bias: ins.get(2).map(|b| &b[..dim]),
                dim,
                eps,
            };
            let (x, o) = (&ins[0][..need], &mut o[..need]);
            ops::norm::norm(&self.pool, self.isa, x, &params, o);
            Ok(())
        })
    }

    fn rope(&self, x: &Cols, out: &Cols, s: &RopeShape) -> Result<()> {
        const OP: &str = "rope";
        let hd = s.head_dim;
        require(OP, hd > 0 && hd.is_multiple_of(2), || {
            format!("head_dim must be even and positive, got {hd}")
        })?;
        let width = span(OP, &[s.n_heads, hd])?;
        let need_x = cols_need(OP, x, s.n_tokens, width)?;
        let need_out = cols_need(OP, out, s.n_tokens, width)?;
        ensure(OP, "x", self.buffers.f32_len(x.buf)?, need_x)?;
        ensure(
            OP,
            "output buffer",
            self.buffers.f32_len(out.buf)?,
            need_out,
        )?;
        if s.n_tokens == 0 || width == 0 {
            return Ok(());
        }
        // Rows are gathered first, so any two views (in place, overlapping) work alike.
        let rotate = |src: &[f32]| {
            let mut rows = gather(src, x, s.n_tokens, width);
            ops::rope::rope(&mut rows, s.n_heads, hd, s.pos0, s.theta(), s.style);
            rows
        };
        if x.buf == out.buf {
            self.buffers.write(x.buf, |b| {
                let rows = rotate(b);
                scatter(b, out, width, &rows);
                Ok(())
            })
        } else {
            self.buffers.with(&[x.buf], out.buf, |ins, o| {
                let rows = rotate(ins[0]);
                scatter(o, out, width, &rows);
                Ok(())
            })
        }
    }

    fn kv_write(&self, k: &Cols, v: &Cols, kv: &KvView, pos0: usize, n: usize) -> Result<()> {
        const OP: &str = "kv_write";
        let row = span(OP, &[kv.layout.n_kv_heads, kv.layout.head_dim])?;
        let end_row = pos0.saturating_add(n);
        match kv.ring {
            Some(r) => require(OP, n <= r.max_write() && r.rows() <= kv.layout.rows, || {
                format!(
                    "a sliding-window ring of {} rows takes at most {} rows a write, not {n}",
                    r.rows(),
                    r.max_write()
                )
            })?,
            None => require(OP, end_row <= kv.layout.rows, || {
                format!(
                    "rows {pos0}..{end_row} are past the cache's {} rows",
                    kv.layout.rows
                )
            })?,
        }
        // Stored rows (a ring maps token t to row `ring.row(t)`); `end` bounds the store.
        let start = span(OP, &[kv.row(pos0), row])?;
        let end = span(
            OP,
            &[
                if kv.ring.is_some() {
                    kv.layout.rows
                } else {
                    end_row
                },
                row,
            ],
        )?;
        let parts = [(k, kv.k, "keys"), (v, kv.v, "values")];
        for (src, dst, what) in parts {
            ensure(
                OP,
                what,
                self.buffers.f32_len(src.buf)?,
                cols_need(OP, src, n, row)?,
            )?;
            ensure(OP, "cache", self.buffers.view_len(dst)?, end)?;
        }
        if let Some(side) = kv.side {
            require(OP, side.window == 0 || n <= side.window, || {
                format!(
                    "a cache with a {}-row recent window takes at most that many rows a write, not {n}",
                    side.window
                )
            })?;
            for b in [side.k, side.v] {
                ensure(
                    OP,
                    "side store",
                    self.buffers.f32_len(b)?,
                    side.rows() * row,
                )?;
            }
        }
        let sides = kv.side.map(|s| [s.k, s.v]);
        for (i, (src, dst, _)) in parts.into_iter().enumerate() {
            let quantized = matches!(self.buffers.dtype(dst)?, DType::QBlock { .. });
            if let DType::QBlock { group, .. } = self.buffers.dtype(dst)? {
                require(OP, row.is_multiple_of(usize::from(group).max(1)), || {
                    format!("rows of {row} values do not hold whole blocks of {group}")
                })?;
            }
            let hd = kv.layout.head_dim;
            if kv.layout.rotated {
                require(OP, hd.is_power_of_two(), || {
                    format!("a rotated cache needs a power-of-two head_dim, not {hd}")
                })?;
            }
            if quantized || kv.layout.rotated || kv.side.is_some() || kv.ring.is_some() {
                // Rows gathered (and each head rotated), then written whole blocks at a time.
                let mut rows = self.buffers.read(src.buf, |x| {
                    let mut rows = Vec::with_capacity(n * row);
                    for r in 0..n {
                        rows.extend_from_slice(&x[src.at(r, 0)..src.at(r, 0) + row]);
                    }
                    Ok(rows)
                })?;
                if kv.layout.rotated {
                    rows.chunks_exact_mut(hd).for_each(ops::attention::rotate);
                }
                let per_channel = i == 0 && kv.side.is_some_and(|s| s.key_channels);
                if !per_channel {
                    // Runs of consecutive stored rows (a ring wraps).
                    let mut r = 0;
                    while r < n {
                        let at = kv.row(pos0 + r);
                        let mut len = 1;
                        while r + len < n && kv.row(pos0 + r + len) == at + len {
                            len += 1;
                        }
                        self.buffers.write_values(
                            dst,
                            at * row,
                            &rows[r * row..(r + len) * row],
                        )?;
                        r += len;
                    }
                }
                if let (Some(side), Some(bufs)) = (kv.side, sides) {
                    // Full-precision copies: sinks at their row, every row in the ring.
                    self.buffers.write(bufs[i], |d| {
                        for (r, x) in rows.chunks_exact(row.max(1)).enumerate() {
                            let t = pos0 + r;
                            if t < side.sinks {
                                d[t * row..(t + 1) * row].copy_from_slice(x);
                            }
                            if side.window > 0 {
                                let at = side.sinks + t % (2 * side.window);
                                d[at * row..(at + 1) * row].copy_from_slice(x);
                            }
                        }
                        Ok(())
                    })?;
                    if per_channel {
                        self.key_channel_blocks(dst, bufs[0], &side, kv, row, pos0..pos0 + n)?;
                    }
                }
                continue;
            }
            self.buffers.with(&[src.buf], dst, |ins, d| {
                for (r, dr) in d[start..end].chunks_exact_mut(row.max(1)).enumerate() {
                    dr.copy_from_slice(&ins[0][src.at(r, 0)..src.at(r, 0) + row]);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Keys per channel: each group of `G` tokens completed by rows `pos0 .. pos0 + n` is
    /// quantized from the ring, channel by channel (block `(t / G) · row + c` holds channel
    /// `c` of those tokens).
    fn key_channel_blocks(
        &self,
        dst: BufferId,
        ring: BufferId,
        side: &lowbit_core::kv::KvSide,
        kv: &KvView,
        row: usize,
        tokens: std::ops::Range<usize>,
    ) -> Result<()> {
        let DType::QBlock { group, .. } = self.buffers.dtype(dst)? else {
            return Ok(());
        };
        let g = usize::from(group).max(1);
        for t in tokens {
            if (t + 1) % g != 0 {
                continue;
            }
            let first = t + 1 - g;
            let block = self.buffers.read(ring, |d| {
                let mut b = vec![0f32; row * g];
                for j in 0..g {
                    let at = side.sinks + (first + j) % (2 * side.window);
                    for c in 0..row {
                        b[c * g + j] = d[at * row + c];
                    }
                }
                Ok(b)
            })?;
            // A ring keeps groups whole (its sinks and period are multiples of the group).
            self.buffers
                .write_values(dst, kv.row(first) * row, &block)?;
        }
        Ok(())
    }

    fn attention(&self, q: BufferId, kv: &KvView, out: BufferId, s: &AttentionShape) -> Result<()> {
        const OP: &str = "attention";
        let (n_kv, hd) = (kv.layout.n_kv_heads, kv.layout.head_dim);
        require(
            OP,
            n_kv > 0 && hd > 0 && s.n_heads.is_multiple_of(n_kv),
            || {
                format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({n_kv}), head_dim {hd} positive",
                s.n_heads
            )
            },
        )?;
        // A ring holds any number of tokens in its rows.
        require(OP, s.kv_len <= kv.layout.rows || kv.ring.is_some(), || {
            format!(
                "kv_len {} is past the view's {} rows",
                s.kv_len, kv.layout.rows
            )
        })?;
        if let Mask::Padding { valid } = s.mask {
            require(OP, valid <= s.kv_len, || {
                format!("padding mask: {valid} valid rows of kv_len {}", s.kv_len)
            })?;
        }
        let need_q = span(OP, &[s.n_tokens, s.n_heads, hd])?;
        let stored = match kv.ring {
            Some(r) => r.rows().min(kv.layout.rows),
            None => s.kv_len,
        };
        let need_kv = span(OP, &[stored, n_kv, hd])?;
        ensure(OP, "q", self.buffers.f32_len(q)?, need_q)?;
        ensure(OP, "keys", self.buffers.view_len(kv.k)?, need_kv)?;
        ensure(OP, "values", self.buffers.view_len(kv.v)?, need_kv)?;
        if need_q == 0 {
            return Ok(());
        }
        if kv.layout.rotated {
            require(OP, hd.is_power_of_two(), || {
                format!("a rotated cache needs a power-of-two head_dim, not {hd}")
            })?;
        }
        let g = Geometry {
            shape: *s,
            n_kv_heads: n_kv,
            head_dim: hd,
            rotated: kv.layout.rotated,
        };
        let mut inputs = vec![q, kv.k, kv.v];
        if let Some(side) = kv.side {
            for b in [side.k, side.v] {
                ensure(
                    OP,
                    "side store",
                    self.buffers.f32_len(b)?,
                    side.rows() * n_kv * hd,
                )?;
            }
            inputs.extend([side.k, side.v]);
        }
        self.buffers.with_views(&inputs, out, |ins, o| {
            ensure(OP, "output buffer", o.len(), need_q)?;
            let View::F32(qv) = &ins[0] else {
                return Err(Error::invalid_config("attention: queries must be f32"));
            };
            let side = match (kv.side, ins.get(3), ins.get(4)) {
                (Some(s), Some(View::F32(k)), Some(View::F32(v))) => Some((s, *k, *v)),
                _ => None,
            };
            let rows = ops::attention::KvRows {
                k: ins[1].clone(),
                v: ins[2].clone(),
                side,
                view: *kv,
                key_group: match (kv.side, kv.layout.dtype) {
                    (Some(s), DType::QBlock { group, .. }) if s.key_channels => usize::from(group),
                    _ => 0,
                },
            };
            let pool = &self.pool;
            ops::attention::attention(pool, self.isa, qv, &rows, o, &g);
            Ok(())
        })
    }

    fn im2col(&self, x: BufferId, out: BufferId, s: &Im2col) -> Result<()> {
        const OP: &str = "im2col";
        require(OP, s.kernel_h > 0 && s.kernel_w > 0 && s.stride > 0, || {
            format!(
                "kernel {}x{} and stride {} must be positive",
                s.kernel_h, s.kernel_w, s.stride
            )
        })?;
        let need_x = span(OP, &[s.channels, s.height, s.width])?;
        let need_out = span(OP, &[s.out_rows(), s.row_len()])?;
        self.unary(OP, x, out, need_x, need_out, |x, o| {
            ops::elementwise::im2col(s, x, o)
        })
    }
}
