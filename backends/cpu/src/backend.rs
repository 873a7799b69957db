//! [`CpuBackend`]: buffers in host memory, operations run eagerly on a private spinning pool
//! ([`crate::pool`]).

use crate::buffers::BufferSlab;
use crate::kernels::{scalar, Isa};
use crate::pool::SpinPool;
use crate::{info, matmul, ops};
use half::f16;
use lowbit_core::backend::{
    AttentionParams, Backend, BackendInfo, BufferId, QkvParams, RopeStyle, WeightId, WeightMatrix,
};
use lowbit_core::error::{Error, Result};
use lowbit_core::quant::{QuantizedMatrix, Scheme};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The CPU backend. Weights stay packed as uploaded; quantized matmul runs directly on the
/// codes with SIMD kernels chosen at construction ([`Isa`]).
pub struct CpuBackend {
    isa: Isa,
    /// Quantized matmul on f32 activations (see [`CpuBackend::exact_activations`]).
    exact: bool,
    threads: usize,
    pool: SpinPool,
    buffers: BufferSlab,
    weights: RwLock<Vec<Arc<WeightMatrix>>>,
    weight_bytes: AtomicUsize,
}

/// `a * b * ...` or an error naming the operation, so absurd shapes never overflow.
fn span(op: &str, parts: &[usize]) -> Result<usize> {
    parts
        .iter()
        .try_fold(1usize, |acc, &p| acc.checked_mul(p))
        .ok_or_else(|| Error::invalid_config(format!("{op}: shape {parts:?} overflows usize")))
}

/// Errors unless `have >= need`.
fn ensure(op: &str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::invalid_config(format!(
            "{op}: {what} holds {have} values but {need} are needed"
        )));
    }
    Ok(())
}

/// Checks that a weight's arrays match its shape and format.
fn validate_weight(w: &WeightMatrix) -> Result<()> {
    let (rows, cols) = w.shape();
    let fail = |msg: String| Err(Error::invalid_config(format!("upload_weight: {msg}")));
    match w {
        WeightMatrix::F32 { data, .. } => {
            let need = span("upload_weight", &[rows, cols])?;
            if data.len() != need {
                return fail(format!(
                    "{rows}×{cols} f32 matrix has {} values",
                    data.len()
                ));
            }
        }
        WeightMatrix::F16 { data, .. } => {
            let need = span("upload_weight", &[rows, cols])?;
            if data.len() != need {
                return fail(format!(
                    "{rows}×{cols} f16 matrix has {} values",
                    data.len()
                ));
            }
        }
        WeightMatrix::Quantized(m) => validate_quantized(m)?,
    }
    Ok(())
}

fn validate_quantized(m: &QuantizedMatrix) -> Result<()> {
    let fail = |msg: String| Err(Error::invalid_config(format!("upload_weight: {msg}")));
    let s = m.spec;
    if !matches!(s.bits, 2 | 3 | 4 | 8) || s.group_size == 0 || !s.group_size.is_multiple_of(32) {
        return fail(format!(
            "unsupported format: {} bits, group size {}",
            s.bits, s.group_size
        ));
    }
    if m.cols == 0 || !m.cols.is_multiple_of(32) {
        return fail(format!(
            "quantized cols must be a positive multiple of 32, got {}",
            m.cols
        ));
    }
    let words = span("upload_weight", &[m.rows, m.row_words()])?;
    let groups = span("upload_weight", &[m.rows, m.groups_per_row()])?;
    if m.data.len() != words {
        return fail(format!("expected {words} code words, got {}", m.data.len()));
    }
    if m.scales.len() != groups {
        return fail(format!("expected {groups} scales, got {}", m.scales.len()));
    }
    let offsets = if s.scheme == Scheme::Asymmetric {
        groups
    } else {
        0
    };
    if m.offsets.len() != offsets {
        return fail(format!(
            "expected {offsets} offsets, got {}",
            m.offsets.len()
        ));
    }
    Ok(())
}

impl CpuBackend {
    /// A backend with `threads` workers (0 = all cores) and the best available kernels.
    pub fn new(threads: usize) -> Result<Self> {
        Self::with_isa(threads, Isa::detect())
    }

    /// A backend forced onto the kernels of `isa` (tests compare SIMD against scalar this way).
    pub fn with_isa(threads: usize, isa: Isa) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::invalid_config(format!(
                "CPU kernels `{}` are not supported on this machine",
                isa.name()
            )));
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        // Without thread support (wasm32) no helper starts and ops run on the calling thread.
        let pool = SpinPool::new(threads);
        let threads = pool.threads();
        Ok(CpuBackend {
            isa,
            exact: false,
            threads,
            pool,
            buffers: BufferSlab::default(),
            weights: RwLock::new(Vec::new()),
            weight_bytes: AtomicUsize::new(0),
        })
    }

    /// The kernels in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Reference mode: quantized matmul dequantizes each weight row and multiplies it with the
    /// f32 activations instead of quantizing the activations to int8 blocks (several times
    /// slower). It isolates the weight format's own error, e.g. to check another backend
    /// against this one. Config key `backend.cpu.exact_activations`.
    pub fn exact_activations(mut self, on: bool) -> Self {
        self.exact = on;
        self
    }

    fn weight(&self, id: WeightId) -> Result<Arc<WeightMatrix>> {
        let w = self.weights.read().unwrap_or_else(|e| e.into_inner());
        w.get(id.0 as usize)
            .cloned()
            .ok_or_else(|| Error::invalid_config(format!("unknown CPU weight id {}", id.0)))
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cpu".into(),
            device: format!("{} ({})", info::cpu_model(), self.isa.name()),
            driver: self.isa.name().to_string(),
            features: self.isa.features(),
            threads: self.threads,
        }
    }

    fn upload_weight(&self, weight: WeightMatrix) -> Result<WeightId> {
        validate_weight(&weight)?;
        let bytes = weight.size_bytes();
        let mut w = self.weights.write().unwrap_or_else(|e| e.into_inner());
        let id = u32::try_from(w.len())
            .map_err(|_| Error::out_of_memory("too many CPU weights (2^32)"))?;
        w.push(Arc::new(weight));
        self.weight_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(WeightId(id))
    }

    fn upload(&self, data: &[f32]) -> Result<BufferId> {
        self.buffers.insert(data.to_vec())
    }

    fn alloc(&self, len: usize) -> Result<BufferId> {
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| {
            Error::out_of_memory(format!("cannot allocate a CPU buffer of {len} f32"))
        })?;
        v.resize(len, 0.0);
        self.buffers.insert(v)
    }

    fn free(&self, buf: BufferId) {
        self.buffers.remove(buf);
    }

    fn write(&self, buf: BufferId, offset: usize, data: &[f32]) -> Result<()> {
        self.buffers.write(buf, |b| {
            let end = offset.saturating_add(data.len());
            ensure("write", "buffer", b.len(), end)?;
            b[offset..end].copy_from_slice(data);
            Ok(())
        })
    }

    fn read(&self, buf: BufferId, offset: usize, len: usize) -> Result<Vec<f32>> {
        self.buffers.read(buf, |b| {
            let end = offset.saturating_add(len);
            ensure("read", "buffer", b.len(), end)?;
            Ok(b[offset..end].to_vec())
        })?
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes.load(Ordering::Relaxed)
    }

    fn embed(&self, table: WeightId, tokens: &[u32], out: BufferId) -> Result<()> {
        let w = self.weight(table)?;
        let (rows, cols) = w.shape();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= rows) {
            return Err(Error::invalid_config(format!(
                "embed: token {t} is outside the table of {rows} rows"
            )));
        }
        let need = span("embed", &[tokens.len(), cols])?;
        self.buffers.write(out, |o| {
            ensure("embed", "output buffer", o.len(), need)?;
            // Only the looked-up rows are dequantized.
            for (&t, dst) in tokens.iter().zip(o.chunks_exact_mut(cols)) {
                let r = t as usize;
                match &*w {
                    WeightMatrix::F32 { data, .. } => {
                        dst.copy_from_slice(&data[r * cols..(r + 1) * cols])
                    }
                    WeightMatrix::F16 { data, .. } => {
                        for (d, s) in dst.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                            *d = f16::to_f32(*s);
                        }
                    }
                    WeightMatrix::Quantized(m) => scalar::dequantize_row(m, r, dst),
                }
            }
            Ok(())
        })
    }

    fn rms_norm(
        &self,
        x: BufferId,
        weight: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let need = span("rms_norm", &[rows, dim])?;
        if dim == 0 {
            return Err(Error::invalid_config("rms_norm: dim must be positive"));
        }
        self.buffers.with(&[x, weight], out, |ins, o| {
            ensure("rms_norm", "x", ins[0].len(), need)?;
            ensure("rms_norm", "weight", ins[1].len(), dim)?;
            ensure("rms_norm", "output buffer", o.len(), need)?;
            let (x, o) = (&ins[0][..need], &mut o[..need]);
            ops::norm::rms_norm(&self.pool, self.isa, x, ins[1], o, dim, eps);
            Ok(())
        })
    }

    fn matmul(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()> {
        let wm = self.weight(w)?;
        let (rows, cols) = wm.shape();
        let need_x = span("matmul", &[n, cols])?;
        let need_out = span("matmul", &[n, rows])?;
        if n == 0 || rows == 0 {
            return Ok(());
        }
        self.buffers.with(&[x], out, |ins, o| {
            ensure("matmul", "x", ins[0].len(), need_x)?;
            ensure("matmul", "output buffer", o.len(), need_out)?;
            let (x, o) = (&ins[0][..need_x], &mut o[..need_out]);
            matmul::matmul(&self.pool, self.isa, self.exact, &wm, x, n, o);
            Ok(())
        })
    }

    fn matmul_add(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()> {
        if x == out {
            return Err(Error::invalid_config(
                "matmul_add: x and out must be distinct buffers",
            ));
        }
        let wm = self.weight(w)?;
        let (rows, cols) = wm.shape();
        let need_x = span("matmul_add", &[n, cols])?;
        let need_out = span("matmul_add", &[n, rows])?;
        if n == 0 || rows == 0 {
            return Ok(());
        }
        self.buffers.with(&[x], out, |ins, o| {
            ensure("matmul_add", "x", ins[0].len(), need_x)?;
            ensure("matmul_add", "output buffer", o.len(), need_out)?;
            // The product, then one add per value: the same rounding as a matmul and an add.
            let mut prod = vec![0.0f32; need_out];
            matmul::matmul(
                &self.pool,
                self.isa,
                self.exact,
                &wm,
                &ins[0][..need_x],
                n,
                &mut prod,
            );
            ops::elementwise::add(&mut o[..need_out], &prod);
            Ok(())
        })
    }

    fn rope_store_qkv(
        &self,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        const OP: &str = "rope_store_qkv";
        p.check_head_dim()?;
        let all = [qkv, q_out, k_cache, v_cache];
        if (1..4).any(|i| all[..i].contains(&all[i])) {
            return Err(Error::invalid_config(format!(
                "{OP}: buffers must be distinct"
            )));
        }
        let (q_dim, kv_dim, row) = (p.q_dim(), p.kv_dim(), p.row_len());
        let need_src = span(OP, &[p.n_tokens, row])?;
        let need_q = span(OP, &[p.n_tokens, q_dim])?;
        let start = span(OP, &[p.pos0, kv_dim])?;
        let end = span(OP, &[p.pos0.saturating_add(p.n_tokens), kv_dim])?;
        if p.n_tokens == 0 {
            return Ok(());
        }
        // Destination, source column range within a fused row, and heads to rotate (none for
        // v) of q, k and v.
        let parts = [
            (q_out, 0, q_dim, Some(p.n_heads)),
            (k_cache, q_dim, kv_dim, Some(p.n_kv_heads)),
            (v_cache, q_dim + kv_dim, kv_dim, None),
        ];
        for (dst, off, len, rope_heads) in parts {
            self.buffers.with(&[qkv], dst, |ins, d| {
                ensure(OP, "qkv", ins[0].len(), need_src)?;
                let d = if dst == q_out {
                    ensure(OP, "q output", d.len(), need_q)?;
                    &mut d[..need_q]
                } else {
                    p.check_cache(d.len())?;
                    &mut d[start..end]
                };
                for (dr, sr) in d.chunks_exact_mut(len).zip(ins[0].chunks_exact(row)) {
                    dr.copy_from_slice(&sr[off..off + len]);
                }
                if let Some(heads) = rope_heads {
                    ops::rope::rope(d, heads, p.head_dim, p.pos0, p.theta, p.style);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn swiglu(&self, gate_up: BufferId, out: BufferId, n: usize, width: usize) -> Result<()> {
        if gate_up == out {
            return Err(Error::invalid_config(
                "swiglu: gate_up and out must be distinct buffers",
            ));
        }
        let need_in = span("swiglu", &[n, 2, width])?;
        let need_out = span("swiglu", &[n, width])?;
        if need_out == 0 {
            return Ok(());
        }
        self.buffers.with(&[gate_up], out, |ins, o| {
            ensure("swiglu", "gate_up", ins[0].len(), need_in)?;
            ensure("swiglu", "output buffer", o.len(), need_out)?;
            for (or, gu) in o[..need_out]
                .chunks_exact_mut(width)
                .zip(ins[0].chunks_exact(2 * width))
            {
                let (g, u) = gu.split_at(width);
                ops::elementwise::silu_mul(g, u, or);
            }
            Ok(())
        })
    }

    fn rope(
        &self,
        x: BufferId,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
        style: RopeStyle,
    ) -> Result<()> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid_config(format!(
                "rope: head_dim must be even and positive, got {head_dim}"
            )));
        }
        let need = span("rope", &[n_tokens, n_heads, head_dim])?;
        self.buffers.write(x, |b| {
            ensure("rope", "x", b.len(), need)?;
            ops::rope::rope(&mut b[..need], n_heads, head_dim, pos0, theta, style);
            Ok(())
        })
    }

    fn kv_store(
        &self,
        src: BufferId,
        cache: BufferId,
        pos0: usize,
        n_tokens: usize,
        row_len: usize,
    ) -> Result<()> {
        let len = span("kv_store", &[n_tokens, row_len])?;
        let start = span("kv_store", &[pos0, row_len])?;
        let end = start.saturating_add(len);
        self.buffers.with(&[src], cache, |ins, c| {
            ensure("kv_store", "source", ins[0].len(), len)?;
            ensure("kv_store", "cache", c.len(), end)?;
            c[start..end].copy_from_slice(&ins[0][..len]);
            Ok(())
        })
    }

    fn attention(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        out: BufferId,
        p: &AttentionParams,
    ) -> Result<()> {
        if p.n_kv_heads == 0 || p.head_dim == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
            return Err(Error::invalid_config(format!(
                "attention: n_heads ({}) must be a positive multiple of n_kv_heads ({}), head_dim {}",
                p.n_heads, p.n_kv_heads, p.head_dim
            )));
        }
        let need_q = span("attention", &[p.n_tokens, p.n_heads, p.head_dim])?;
        let ctx = p.pos0.saturating_add(p.n_tokens);
        let need_kv = span("attention", &[ctx, p.n_kv_heads, p.head_dim])?;
        self.buffers.with(&[q, k_cache, v_cache], out, |ins, o| {
            ensure("attention", "q", ins[0].len(), need_q)?;
            ensure("attention", "k cache", ins[1].len(), need_kv)?;
            ensure("attention", "v cache", ins[2].len(), need_kv)?;
            ensure("attention", "output buffer", o.len(), need_q)?;
            let pool = &self.pool;
            ops::attention::attention(pool, self.isa, ins[0], ins[1], ins[2], o, p);
            Ok(())
        })
    }

    fn silu_mul(&self, gate: BufferId, up: BufferId, out: BufferId, len: usize) -> Result<()> {
        self.buffers.with(&[gate, up], out, |ins, o| {
            ensure("silu_mul", "gate", ins[0].len(), len)?;
            ensure("silu_mul", "up", ins[1].len(), len)?;
            ensure("silu_mul", "output buffer", o.len(), len)?;
            ops::elementwise::silu_mul(&ins[0][..len], &ins[1][..len], &mut o[..len]);
            Ok(())
        })
    }

    fn add(&self, dst: BufferId, src: BufferId, len: usize) -> Result<()> {
        self.buffers.with(&[src], dst, |ins, d| {
            ensure("add", "source", ins[0].len(), len)?;
            ensure("add", "destination", d.len(), len)?;
            ops::elementwise::add(&mut d[..len], &ins[0][..len]);
            Ok(())
        })
    }

    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let src_end = src_offset.saturating_add(len);
        let dst_end = dst_offset.saturating_add(len);
        self.buffers.with(&[src], dst, |ins, d| {
            ensure("copy", "source", ins[0].len(), src_end)?;
            ensure("copy", "destination", d.len(), dst_end)?;
            d[dst_offset..dst_end].copy_from_slice(&ins[0][src_offset..src_end]);
            Ok(())
        })
    }
}
