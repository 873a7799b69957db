//! Uploads a model's tensors to a backend, counting what they take: the one loader every
//! adapter uses (progress reports, bytes and bits per weight, stacked uploads).

use crate::tensor_source::TensorSource;
use lowbit_core::adapter::{ProgressFn, WeightPrecision};
use lowbit_core::{Backend, BufferId, Error, Result, WeightId, WeightMatrix};
use std::sync::Arc;

/// Reads tensors from a [`TensorSource`] and uploads them, keeping count of progress, bytes,
/// bits and weights.
pub(crate) struct Loader<'a, 'p> {
    src: &'a dyn TensorSource,
    backend: &'a Arc<dyn Backend>,
    progress: &'a mut ProgressFn<'p>,
    done: usize,
    total: usize,
    bytes: usize,
    bits: f64,
    n_weights: usize,
}

/// What the loaded weight matrices take, for [`lowbit_core::TextModel::bits_per_weight`] and
/// friends.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WeightTotals {
    /// Bytes of the uploaded matrices.
    pub(crate) bytes: usize,
    /// Bits of the uploaded matrices (codes, scales and offsets).
    pub(crate) bits: f64,
    /// Values of the uploaded matrices.
    pub(crate) n_weights: usize,
}

impl WeightTotals {
    /// Real bits per weight over all matrices.
    pub(crate) fn bits_per_weight(&self) -> f64 {
        self.bits / self.n_weights.max(1) as f64
    }
}

impl<'a, 'p> Loader<'a, 'p> {
    /// A loader of `total` tensors (the denominator of progress reports).
    pub(crate) fn new(
        src: &'a dyn TensorSource,
        backend: &'a Arc<dyn Backend>,
        progress: &'a mut ProgressFn<'p>,
        total: usize,
    ) -> Self {
        Loader {
            src,
            backend,
            progress,
            done: 0,
            total,
            bytes: 0,
            bits: 0.0,
            n_weights: 0,
        }
    }

    /// Reports one more tensor done.
    pub(crate) fn tick(&mut self, what: &str) {
        self.done += 1;
        (self.progress)(self.done, self.total, what);
    }

    /// Uploads the `rows × cols` matrix `name` in precision `p`.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor or one of another shape; the
    /// backend's upload error.
    pub(crate) fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightId> {
        let p = self.src.precision_for(name, p);
        let w = self.make(name, rows, cols, p)?;
        let id = self.backend.upload_weight(w)?;
        self.src.uploaded(id, &[name]);
        self.tick(name);
        Ok(id)
    }

    /// Several matrices of `cols` columns stacked by rows into one upload, in order (q|k|v,
    /// gate|up: one matmul instead of several; exact for row-wise formats).
    ///
    /// Errors: as [`Loader::matrix`].
    pub(crate) fn stacked(
        &mut self,
        parts: &[(String, usize)],
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightId> {
        // One format for the whole stack: the widest any part asks for.
        let p = parts
            .iter()
            .map(|(name, _)| self.src.precision_for(name, p))
            .max_by_key(|q| q.bits())
            .unwrap_or(p);
        let mut mats = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            mats.push(self.make(name, *rows, cols, p)?);
            self.tick(name);
        }
        let id = self
            .backend
            .upload_weight(WeightMatrix::concat_rows(mats)?)?;
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        self.src.uploaded(id, &names);
        Ok(id)
    }

    /// One matrix in precision `p`, read from the source, counted in the totals.
    fn make(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightMatrix> {
        let w = self.src.matrix(name, rows, cols, p, self.done as u64)?;
        self.bytes += w.size_bytes();
        self.bits += w.size_bytes() as f64 * 8.0;
        self.n_weights += rows * cols;
        Ok(w)
    }

    /// Uploads the vector `name` of `len` values (a norm weight, a bias).
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor or one of another length.
    pub(crate) fn vector(&mut self, name: &str, len: usize) -> Result<BufferId> {
        let data = self.src.vector(name, len)?;
        if data.len() != len {
            return Err(Error::model_loading(format!(
                "tensor {name} has {} values, expected {len}",
                data.len()
            )));
        }
        let id = self.backend.upload(&data)?;
        self.tick(name);
        Ok(id)
    }

    /// Bytes, bits and values of the matrices loaded so far.
    pub(crate) fn totals(&self) -> WeightTotals {
        WeightTotals {
            bytes: self.bytes,
            bits: self.bits,
            n_weights: self.n_weights,
        }
    }
}
