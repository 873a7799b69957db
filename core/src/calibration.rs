//! Calibration: run a model on text and collect, per weight matrix, the second moments of the
//! inputs its linear ops see (`E[x xᵀ]`), the statistics behind importance-weighted scales and
//! error-feedback rounding ([`crate::quant::Quantizer`]).
//!
//! [`CalibratingBackend`] wraps any backend: it runs the ops of each [`Backend::run`] list in
//! order, and before every linear op reads that op's input back and adds it to the weight's
//! accumulator. Any model on any backend calibrates this way, without the model or the backend
//! knowing; it is meant for an unfused, eager backend (the CPU one), where splitting a list
//! costs nothing.

use crate::backend::{Backend, BackendInfo, DType, KernelTiming, WeightMatrix};
use crate::error::Result;
use crate::future::{block_on, ReadFuture};
use crate::ops::Op;
use crate::quant::Hessian;
use crate::{BufferId, WeightId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A backend that records the inputs of every linear op (see the module docs).
pub struct CalibratingBackend {
    inner: Arc<dyn Backend>,
    /// Columns of each uploaded weight, and its accumulator once an op used it.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cols: HashMap<WeightId, usize>,
    hessians: HashMap<WeightId, Hessian>,
}

impl CalibratingBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        CalibratingBackend {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// The accumulated statistics by weight, taken out (the accumulators restart empty).
    pub fn take_hessians(&self) -> HashMap<WeightId, Hessian> {
        std::mem::take(&mut self.lock().hessians)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, w: WeightId, x: BufferId, n: usize) -> Result<()> {
        let Some(cols) = self.lock().cols.get(&w).copied() else {
            return Ok(());
        };
        let values = block_on(self.inner.read(x, 0, n * cols))?;
        let mut st = self.lock();
        st.hessians
            .entry(w)
            .or_insert_with(|| Hessian::new(cols))
            .add_rows(&values);
        Ok(())
    }
}

/// The buffer methods of a wrapping backend: straight to `self.inner`.
macro_rules! forward_buffers {
    () => {
        fn upload(&self, data: &[f32]) -> Result<BufferId> {
            self.inner.upload(data)
        }

        fn alloc(&self, dtype: DType, len: usize) -> Result<BufferId> {
            self.inner.alloc(dtype, len)
        }

        fn free(&self, buf: BufferId) {
            self.inner.free(buf)
        }

        fn write(&self, buf: BufferId, offset: usize, data: &[f32]) -> Result<()> {
            self.inner.write(buf, offset, data)
        }

        fn read(&self, buf: BufferId, offset: usize, len: usize) -> ReadFuture {
            self.inner.read(buf, offset, len)
        }
    };
}

impl Backend for CalibratingBackend {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }

    fn upload_weight(&self, weight: WeightMatrix) -> Result<WeightId> {
        let cols = weight.shape().1;
        let id = self.inner.upload_weight(weight)?;
        self.lock().cols.insert(id, cols);
        Ok(id)
    }

    forward_buffers!();

    fn run(&self, ops: &[Op]) -> Result<()> {
        let mut start = 0;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Linear { w, x, n, .. } = op {
                self.inner.run(&ops[start..i])?;
                start = i;
                self.observe(*w, *x, *n)?;
            }
        }
        self.inner.run(&ops[start..])
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }

    fn kernel_timings(&self) -> Vec<KernelTiming> {
        self.inner.kernel_timings()
    }
}

/// A backend that runs a model with one weight swapped for another: every op reading the
/// weight `from` reads `to` instead while [`SwappingBackend::swap`] is set. The width
/// allocator uses it to measure how much quantizing one matrix alone changes the output
/// (its sensitivity) with one loaded model and no reload per matrix.
pub struct SwappingBackend {
    inner: Arc<dyn Backend>,
    active: Mutex<Option<(WeightId, WeightId)>>,
    /// Dense f32 uploads, kept so stand-ins can be made from exactly what was uploaded.
    kept: Mutex<HashMap<WeightId, DenseWeight>>,
}

/// A dense weight as uploaded: `(rows, cols, values)`.
type DenseWeight = (usize, usize, Vec<f32>);

impl SwappingBackend {
    /// Wraps `inner`, with no swap.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        SwappingBackend {
            inner,
            active: Mutex::new(None),
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// The dense f32 matrix uploaded as `id` (`(rows, cols, values)`), taken out; `None` when
    /// `id` was not a dense f32 upload or was taken already.
    pub fn take_weight(&self, id: WeightId) -> Option<(usize, usize, Vec<f32>)> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    /// Makes ops read `to` where they name `from` (`None`: no swap).
    pub fn swap(&self, pair: Option<(WeightId, WeightId)>) {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = pair;
    }

    /// The wrapped backend (to upload the stand-in weights).
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
}

impl Backend for SwappingBackend {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }

    fn upload_weight(&self, weight: WeightMatrix) -> Result<WeightId> {
        let kept = match &weight {
            WeightMatrix::F32 { rows, cols, data } => Some((*rows, *cols, data.clone())),
            _ => None,
        };
        let id = self.inner.upload_weight(weight)?;
        if let Some(k) = kept {
            self.kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, k);
        }
        Ok(id)
    }

    forward_buffers!();

    fn run(&self, ops: &[Op]) -> Result<()> {
        let active = *self.active.lock().unwrap_or_else(|e| e.into_inner());
        let Some((from, to)) = active else {
            return self.inner.run(ops);
        };
        let swapped: Vec<Op> = ops
            .iter()
            .map(|op| {
                let mut op = op.clone();
                match &mut op {
                    Op::Linear { w, .. } if *w == from => *w = to,
                    Op::Embed { table, .. } if *table == from => *table = to,
                    _ => {}
                }
                op
            })
            .collect();
        self.inner.run(&swapped)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }

    fn kernel_timings(&self) -> Vec<KernelTiming> {
        self.inner.kernel_timings()
    }
}
