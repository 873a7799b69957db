//! [`CpuBackend`]: buffers in host memory, operations run eagerly on a private spinning pool
//! ([`crate::pool`]).

use crate::buffers::BufferSlab;
use crate::info;
use crate::kernels::Isa;
use crate::pool::SpinPool;
use lowbit_core::backend::{Backend, BackendInfo, BufferId, DType, WeightId, WeightMatrix};
use lowbit_core::error::{Error, Result};
use lowbit_core::future::{ready, ReadFuture};
use lowbit_core::ops::Op;
use lowbit_core::quant::{QuantizedMatrix, Scheme};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The CPU backend. Weights stay packed as uploaded; quantized matmul runs directly on the
/// codes with SIMD kernels chosen at construction ([`Isa`]).
pub struct CpuBackend {
    pub(crate) isa: Isa,
    /// Quantized matmul on f32 activations (see [`CpuBackend::exact_activations`]).
    pub(crate) exact: bool,
    threads: usize,
    pub(crate) pool: SpinPool,
    pub(crate) buffers: BufferSlab,
    weights: RwLock<Vec<Arc<WeightMatrix>>>,
    weight_bytes: AtomicUsize,
}

/// `a * b * ...` or an error naming the operation, so absurd shapes never overflow.
pub(crate) fn span(op: &str, parts: &[usize]) -> Result<usize> {
    parts
        .iter()
        .try_fold(1usize, |acc, &p| acc.checked_mul(p))
        .ok_or_else(|| Error::invalid_config(format!("{op}: shape {parts:?} overflows usize")))
}

/// Errors unless `have >= need`.
pub(crate) fn ensure(op: &str, what: &str, have: usize, need: usize) -> Result<()> {
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
    if !matches!(s.bits, 2..=6 | 8) || s.group_size == 0 || !s.group_size.is_multiple_of(32) {
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
    if let Some(g) = &m.grid {
        if g.bits() != s.bits {
            return fail(format!("a {}-bit grid on {}-bit codes", g.bits(), s.bits));
        }
    }
    if let Some(rot) = m.rotation {
        rot.check(m.cols)
            .map_err(|e| Error::invalid_config(format!("upload_weight: {}", e.message)))?;
    }
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

    pub(crate) fn weight(&self, id: WeightId) -> Result<Arc<WeightMatrix>> {
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

    fn alloc(&self, dtype: DType, len: usize) -> Result<BufferId> {
        self.buffers.alloc(dtype, len)
    }

    fn free(&self, buf: BufferId) {
        self.buffers.remove(buf);
    }

    fn write(&self, buf: BufferId, offset: usize, data: &[f32]) -> Result<()> {
        self.buffers.write_values(buf, offset, data)
    }

    fn read(&self, buf: BufferId, offset: usize, len: usize) -> ReadFuture {
        ready(self.buffers.read_values(buf, offset, len))
    }

    fn run(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            self.run_op(op)?;
        }
        Ok(())
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes.load(Ordering::Relaxed)
    }
}
