//! The scalar f64 reference: an interpreter of [`Op`] lists over host `Vec<f64>` buffers,
//! written from the op definitions in [`crate::ops`] and nothing else (no backend code).
//! Weights are dequantized with [`crate::quant`] and widened to f64.

use super::{BufferInit, Case};
use crate::backend::{BufferId, DType, WeightId, WeightMatrix};
use crate::error::{Error, Result};
use crate::ops::{ensure, Cols, NormKind, Op, RopeStyle, TokenIds};

/// A dense weight in f64.
struct Dense {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

fn dense(w: &WeightMatrix) -> Dense {
    let (rows, cols) = w.shape();
    let data = match w {
        WeightMatrix::F32 { data, .. } => data.iter().map(|&v| f64::from(v)).collect(),
        WeightMatrix::F16 { data, .. } => data.iter().map(|v| f64::from(v.to_f32())).collect(),
        WeightMatrix::Quantized(q) => q.dequantize().into_iter().map(f64::from).collect(),
    };
    Dense { rows, cols, data }
}

/// The value a buffer of `dtype` holds after `data` is written to it: f16 rounds to nearest,
/// `Q8Block` stores each block of 32 as `round(x / d) · d` with `d = max|x| / 127` (ties to
/// even).
pub fn stored(dtype: DType, data: &[f32]) -> Vec<f64> {
    match dtype {
        DType::F32 => data.iter().map(|&v| f64::from(v)).collect(),
        DType::F16 => data
            .iter()
            .map(|&v| f64::from(half::f16::from_f32(v).to_f32()))
            .collect(),
        DType::Q8Block => {
            let mut out = Vec::with_capacity(data.len());
            for block in data.chunks(32) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(
                    block
                        .iter()
                        .map(|&v| f64::from((v * id).round_ties_even() * d)),
                );
            }
            out
        }
        DType::QBlock { bits, group } => {
            // Per block: the parameters `kv_block_params` chooses, each value at the nearest
            // code.
            let levels = ((1u32 << bits) - 1) as f32;
            let mut out = Vec::with_capacity(data.len());
            for block in data.chunks(usize::from(group).max(1)) {
                let (scale, min) = crate::quant::kv_block_params(block, u32::from(bits));
                let (m, s) = (min.to_f32(), scale.to_f32());
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                out.extend(block.iter().map(|&v| {
                    let v = if v.is_finite() { v } else { 0.0 };
                    let q = ((v - m) * inv).round().clamp(0.0, levels);
                    f64::from(q * s + m)
                }));
            }
            out
        }
    }
}

/// Runs `case`'s ops and returns the values of its checks, in order.
///
/// Errors with `INVALID_CONFIG` where an op does not fit its buffers (a bug in the case).
pub fn run(case: &Case) -> Result<Vec<Vec<f64>>> {
    let mut bufs: Vec<Vec<f64>> = case.buffers.iter().map(initial).collect();
    let weights: Vec<Dense> = case.weights.iter().map(dense).collect();
    for op in &case.ops {
        apply(op, &mut bufs, &weights)?;
    }
    case.checks
        .iter()
        .map(|c| {
            let b = buf(&bufs, BufferId(c.buf as u32))?;
            b.get(c.offset..c.offset + c.len)
                .map(<[f64]>::to_vec)
                .ok_or_else(|| Error::invalid_config("check outside its buffer"))
        })
        .collect()
}

fn initial(b: &BufferInit) -> Vec<f64> {
    match &b.data {
        Some(d) => stored(b.dtype, d),
        None => vec![0.0; b.len],
    }
}

fn buf(bufs: &[Vec<f64>], id: BufferId) -> Result<&Vec<f64>> {
    bufs.get(id.0 as usize)
        .ok_or_else(|| Error::invalid_config(format!("no buffer {}", id.0)))
}

/// A copy of `len` values of `id` from `offset`.
fn take(bufs: &[Vec<f64>], id: BufferId, offset: usize, len: usize) -> Result<Vec<f64>> {
    let b = buf(bufs, id)?;
    b.get(offset..offset + len)
        .map(<[f64]>::to_vec)
        .ok_or_else(|| Error::invalid_config(format!("buffer {} is too short", id.0)))
}

/// Writes `vals` to `id` from `offset`.
fn put(bufs: &mut [Vec<f64>], id: BufferId, offset: usize, vals: &[f64]) -> Result<()> {
    let b = bufs
        .get_mut(id.0 as usize)
        .and_then(|b| b.get_mut(offset..offset + vals.len()))
        .ok_or_else(|| Error::invalid_config(format!("buffer {} is too short", id.0)))?;
    b.copy_from_slice(vals);
    Ok(())
}

fn weight(weights: &[Dense], id: WeightId) -> Result<&Dense> {
    weights
        .get(id.0 as usize)
        .ok_or_else(|| Error::invalid_config(format!("no weight {}", id.0)))
}

/// Rows of a column view, `width` values each.
fn take_cols(bufs: &[Vec<f64>], v: Cols, rows: usize, width: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rows * width);
    for r in 0..rows {
        out.extend(take(bufs, v.buf, v.at(r, 0), width)?);
    }
    Ok(out)
}

fn put_cols(bufs: &mut [Vec<f64>], v: Cols, width: usize, vals: &[f64]) -> Result<()> {
    for (r, row) in vals.chunks(width.max(1)).enumerate() {
        put(bufs, v.buf, v.at(r, 0), row)?;
    }
    Ok(())
}

/// One op, per its definition in [`crate::ops`].
fn apply(op: &Op, bufs: &mut [Vec<f64>], weights: &[Dense]) -> Result<()> {
    match op {
        Op::Embed { table, ids, out } => {
            let t = weight(weights, *table)?;
            let ids: Vec<f64> = match ids {
                TokenIds::Host(v) => v.iter().map(|&i| f64::from(i)).collect(),
                TokenIds::Device { buf, offset, n } => take(bufs, *buf, *offset, *n)?,
            };
            for (i, id) in ids.into_iter().enumerate() {
                // Ids outside the table leave their rows unwritten.
                if id >= 0.0 && id.fract() == 0.0 && (id as usize) < t.rows {
                    let r = id as usize;
                    put(
                        bufs,
                        *out,
                        i * t.cols,
                        &t.data[r * t.cols..(r + 1) * t.cols],
                    )?;
                }
            }
        }
        Op::Linear {
            w,
            bias,
            x,
            out,
            n,
            accumulate,
        } => {
            let wm = weight(weights, *w)?;
            let (rows, cols) = (wm.rows, wm.cols);
            let xs = take(bufs, *x, 0, n * cols)?;
            let b = match bias {
                Some(b) => take(bufs, *b, 0, rows)?,
                None => vec![0.0; rows],
            };
            let mut o = if *accumulate {
                take(bufs, *out, 0, n * rows)?
            } else {
                vec![0.0; n * rows]
            };
            for t in 0..*n {
                let xr = &xs[t * cols..(t + 1) * cols];
                for r in 0..rows {
                    let wr = &wm.data[r * cols..(r + 1) * cols];
                    let dot: f64 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                    o[t * rows + r] += dot + b[r];
                }
            }
            put(bufs, *out, 0, &o)?;
        }
        Op::Norm {
            kind,
            x,
            out,
            weight: w,
            bias,
            rows,
            dim,
            eps,
        } => {
            ensure("norm", *dim > 0, || "dim 0".into())?;
            let xs = take(bufs, *x, 0, rows * dim)?;
            let w = take(bufs, *w, 0, *dim)?;
            let b = match bias {
                Some(b) => take(bufs, *b, 0, *dim)?,
                None => vec![0.0; *dim],
            };
            let mut o = vec![0.0; rows * dim];
            for (or, xr) in o.chunks_mut(*dim).zip(xs.chunks(*dim)) {
                let d = *dim as f64;
                let mean = match kind {
                    NormKind::Rms => 0.0,
                    NormKind::Layer => xr.iter().sum::<f64>() / d,
                };
                let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
                let inv = 1.0 / (var + f64::from(*eps)).sqrt();
                for j in 0..*dim {
                    or[j] = (xr[j] - mean) * inv * w[j] + b[j];
                }
            }
            put(bufs, *out, 0, &o)?;
        }
        Op::Activation { act, x, out, len } => {
            let v: Vec<f64> = take(bufs, *x, 0, *len)?
                .into_iter()
                .map(|v| act.apply_f64(v))
                .collect();
            put(bufs, *out, 0, &v)?;
        }
        Op::Glu {
            act,
            x,
            out,
            n,
            width,
        } => {
            let xs = take(bufs, *x, 0, n * 2 * width)?;
            let mut o = Vec::with_capacity(n * width);
            for row in xs.chunks(2 * width) {
                let (g, u) = row.split_at(*width);
                o.extend(g.iter().zip(u).map(|(g, u)| act.apply_f64(*g) * u));
            }
            put(bufs, *out, 0, &o)?;
        }
        Op::Rope { x, out, shape } => {
            let (hd, w) = (shape.head_dim, shape.width());
            ensure("rope", hd > 0 && hd % 2 == 0, || format!("head_dim {hd}"))?;
            let mut v = take_cols(bufs, *x, shape.n_tokens, w)?;
            let half = hd / 2;
            let theta = f64::from(shape.theta());
            for (t, row) in v.chunks_mut(w).enumerate() {
                let pos = (shape.pos0 + t) as f64;
                for head in row.chunks_mut(hd) {
                    for i in 0..half {
                        let angle = pos * theta.powf(-2.0 * i as f64 / hd as f64);
                        let (s, c) = angle.sin_cos();
                        let (a, b) = match shape.style {
                            RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                            RopeStyle::Halves => (i, i + half),
                        };
                        let (x0, x1) = (head[a], head[b]);
                        head[a] = x0 * c - x1 * s;
                        head[b] = x0 * s + x1 * c;
                    }
                }
            }
            put_cols(bufs, *out, w, &v)?;
        }
        Op::KvWrite {
            k,
            v,
            kv,
            pos0,
            n_tokens,
        } => {
            let row = kv.layout.row_len();
            ensure("kv_write", pos0 + n_tokens <= kv.layout.rows, || {
                "rows past the cache".into()
            })?;
            let ks = take_cols(bufs, *k, *n_tokens, row)?;
            let vs = take_cols(bufs, *v, *n_tokens, row)?;
            put(bufs, kv.k, pos0 * row, &ks)?;
            put(bufs, kv.v, pos0 * row, &vs)?;
        }
        Op::Attention { q, kv, out, shape } => {
            let (hd, nkv) = (kv.layout.head_dim, kv.layout.n_kv_heads);
            ensure("attention", nkv > 0 && shape.n_heads % nkv == 0, || {
                "heads".into()
            })?;
            ensure("attention", shape.kv_len <= kv.layout.rows, || {
                "kv_len past the view".into()
            })?;
            let row = nkv * hd;
            let group = shape.n_heads / nkv;
            let qs = take(bufs, *q, 0, shape.n_tokens * shape.n_heads * hd)?;
            let ks = take(bufs, kv.k, 0, shape.kv_len * row)?;
            let vs = take(bufs, kv.v, 0, shape.kv_len * row)?;
            let mut o = vec![0.0; qs.len()];
            for i in 0..shape.n_tokens {
                let (start, end) = shape.mask.keys(shape.pos0, i, shape.kv_len);
                for h in 0..shape.n_heads {
                    let qo = (i * shape.n_heads + h) * hd;
                    let qv = &qs[qo..qo + hd];
                    let ko = (h / group) * hd;
                    let scores: Vec<f64> = (start..end)
                        .map(|t| {
                            let kt = &ks[t * row + ko..t * row + ko + hd];
                            qv.iter().zip(kt).map(|(a, b)| a * b).sum::<f64>()
                                * f64::from(shape.scale)
                        })
                        .collect();
                    let p = softmax(&scores);
                    for (t, pt) in (start..end).zip(p) {
                        for j in 0..hd {
                            o[qo + j] += pt * vs[t * row + ko + j];
                        }
                    }
                }
            }
            put(bufs, *out, 0, &o)?;
        }
        Op::Add { dst, src, len } => {
            let s = take(bufs, *src, 0, *len)?;
            let d: Vec<f64> = take(bufs, *dst, 0, *len)?
                .into_iter()
                .zip(s)
                .map(|(a, b)| a + b)
                .collect();
            put(bufs, *dst, 0, &d)?;
        }
        Op::Scale { x, len, factor } => {
            let f = f64::from(*factor);
            let o: Vec<f64> = take(bufs, *x, 0, *len)?.iter().map(|v| v * f).collect();
            put(bufs, *x, 0, &o)?;
        }
        Op::Softmax { x, rows, len } => {
            let xs = take(bufs, *x, 0, rows * len)?;
            let o: Vec<f64> = xs.chunks((*len).max(1)).flat_map(softmax).collect();
            put(bufs, *x, 0, &o)?;
        }
        Op::Argmax {
            x,
            len,
            out,
            out_offset,
        } => {
            let xs = take(bufs, *x, 0, *len)?;
            put(bufs, *out, *out_offset, &[argmax(&xs) as f64])?;
        }
        Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => {
            let s = take(bufs, *src, *src_offset, *len)?;
            put(bufs, *dst, *dst_offset, &s)?;
        }
        Op::Im2col { x, out, shape } => {
            let s = shape;
            let xs = take(bufs, *x, 0, s.channels * s.height * s.width)?;
            let (oh, ow) = s.out_grid();
            let mut o = Vec::with_capacity(oh * ow * s.row_len());
            for oy in 0..oh {
                for ox in 0..ow {
                    for c in 0..s.channels {
                        for dy in 0..s.kernel_h {
                            for dx in 0..s.kernel_w {
                                let y = (oy * s.stride + dy).checked_sub(s.pad_h());
                                let xx = (ox * s.stride + dx).checked_sub(s.pad);
                                let v = match (y, xx) {
                                    (Some(y), Some(xx)) if y < s.height && xx < s.width => {
                                        xs[(c * s.height + y) * s.width + xx]
                                    }
                                    _ => 0.0,
                                };
                                o.push(v);
                            }
                        }
                    }
                }
            }
            put(bufs, *out, 0, &o)?;
        }
    }
    Ok(())
}

/// `exp(x − max) / Σ`, the max subtracted so any range stays finite.
fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v));
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// First index of the largest value; NaN never wins; 0 when nothing does.
pub(super) fn argmax(x: &[f64]) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}
