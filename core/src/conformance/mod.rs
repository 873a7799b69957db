//! The op conformance suite every backend runs, in the style of llama.cpp's `test-backend-ops`:
//! each [`Case`] is an op list as a model records it, on awkward shapes and every weight
//! format, run on a backend and compared with a scalar f64 reference ([`reference`]) by the
//! normalised mean squared error `NMSE = Σ(out − ref)² / Σ ref²` against a tolerance per op
//! family ([`tolerance`]). Argmax results must match the reference index exactly.
//!
//! The suite is async and never blocks ([`run_all`] awaits [`Backend::read`]), so a browser
//! runs it too. A backend error on a case is a failed row, not a panic.

mod build;
mod cases;
mod patterns;
mod positions;
pub mod reference;
mod remap;
mod sandwich;
#[cfg(test)]
mod tests;
pub mod tolerance;

use crate::backend::{Backend, BufferId, DType, WeightMatrix};
use crate::error::Result;
use crate::ops::Op;
use remap::remap;

/// One buffer of a case, addressed in the case's ops by its index (`BufferId(i)`).
#[derive(Clone, Debug)]
pub struct BufferInit {
    /// Element type (ops take f32; F16 and Q8Block test the conversions of write and read).
    pub dtype: DType,
    /// Values.
    pub len: usize,
    /// Initial values written before the ops run; `None` leaves the buffer as allocated (zero).
    pub data: Option<Vec<f32>>,
    /// Made with [`Backend::alloc_scratch`]: a backend may leave it unwritten, so no check reads it.
    pub scratch: bool,
}

/// What a case compares after its ops ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Values, by NMSE against the case's tolerance.
    Values,
    /// One index written by [`Op::Argmax`]: must equal the reference exactly.
    Index,
}

/// A range of a case buffer compared with the reference.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// Case buffer index.
    pub buf: usize,
    /// First element.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// How it is compared.
    pub kind: CheckKind,
}

/// One conformance case: buffers, weights, an op list over them (buffer and weight ids are
/// indices into the case's own lists) and the ranges compared.
#[derive(Clone, Debug)]
pub struct Case {
    /// Op family (`linear`, `attention`, `llama_layer`, …).
    pub op: String,
    /// Shape description.
    pub shape: String,
    /// Weight or buffer format (`f32`, `q4_sym_g32`, …).
    pub format: String,
    /// Largest NMSE that passes.
    pub tolerance: f64,
    /// Buffers, `BufferId(i)` in `ops`.
    pub buffers: Vec<BufferInit>,
    /// Weights, `WeightId(j)` in `ops`.
    pub weights: Vec<WeightMatrix>,
    /// The op list, run with one [`Backend::run`].
    pub ops: Vec<Op>,
    /// What is compared.
    pub checks: Vec<Check>,
}

impl Case {
    /// Whether the op family, shape or format contains `text` (`lowbit conformance --filter`).
    pub fn matches(&self, text: &str) -> bool {
        [&self.op, &self.shape, &self.format]
            .iter()
            .any(|s| s.contains(text))
    }
}

/// The outcome of one case on one backend (a row of [`table`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    /// Op family.
    pub op: String,
    /// Shape description.
    pub shape: String,
    /// Weight or buffer format.
    pub format: String,
    /// Backend name and kernels (`cpu (avx2)`, `webgpu (…)`).
    pub backend: String,
    /// The largest NMSE of the compared ranges (0, or infinity on a wrong index, for index checks
    /// alone).
    pub nmse: f64,
    /// The case's tolerance.
    pub tolerance: f64,
    /// Whether the NMSE is within tolerance, every index matched and the backend did not fail.
    pub passed: bool,
    /// The backend's error, or what did not match.
    pub error: Option<String>,
}

/// Every case of the suite, built from a fixed seed (the same cases every run).
pub fn cases() -> Vec<Case> {
    let mut all = cases::single_ops();
    all.extend(patterns::fused_patterns());
    all.extend(sandwich::gemma_layers());
    all
}

/// Runs `case` on `backend` and compares it with the reference.
pub async fn run_case(backend: &dyn Backend, case: &Case) -> CaseResult {
    let info = backend.info();
    let mut row = CaseResult {
        op: case.op.clone(),
        shape: case.shape.clone(),
        format: case.format.clone(),
        backend: format!("{} ({})", info.name, info.driver),
        nmse: f64::INFINITY,
        tolerance: case.tolerance,
        passed: false,
        error: None,
    };
    let mut bufs = Vec::with_capacity(case.buffers.len());
    let got = run_on_backend(backend, case, &mut bufs).await;
    for b in bufs {
        backend.free(b);
    }
    let got = match got {
        Ok(v) => v,
        Err(e) => {
            row.error = Some(e.to_string());
            return row;
        }
    };
    let want = match reference::run(case) {
        Ok(v) => v,
        Err(e) => {
            row.error = Some(format!("reference: {e}"));
            return row;
        }
    };
    compare(case, &got, &want, &mut row);
    row
}

/// Runs every case of [`cases`] on `backend`, in order.
pub async fn run_all(backend: &dyn Backend) -> Vec<CaseResult> {
    let mut out = Vec::new();
    for case in cases() {
        out.push(run_case(backend, &case).await);
    }
    out
}

/// The results as a fixed-width text table: op, shape, format, backend, error (NMSE),
/// tolerance, pass.
pub fn table(results: &[CaseResult]) -> String {
    let head = [
        "op",
        "shape",
        "format",
        "backend",
        "error (NMSE)",
        "tolerance",
        "pass",
    ];
    let rows: Vec<[String; 7]> = results
        .iter()
        .map(|r| {
            let pass = match (&r.error, r.passed) {
                (_, true) => "ok".to_string(),
                (Some(e), false) => format!("FAIL: {e}"),
                (None, false) => "FAIL".to_string(),
            };
            [
                r.op.clone(),
                r.shape.clone(),
                r.format.clone(),
                r.backend.clone(),
                format!("{:.3e}", r.nmse),
                format!("{:.0e}", r.tolerance),
                pass,
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(String::from));
    out.push_str(&line(&width.map(|w| "-".repeat(w))));
    for r in &rows {
        out.push_str(&line(r));
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    out.push_str(&format!(
        "{} cases, {} passed, {failed} failed\n",
        results.len(),
        results.len() - failed
    ));
    out
}

/// Allocates, uploads, runs and reads back; `bufs` collects what to free.
async fn run_on_backend(
    backend: &dyn Backend,
    case: &Case,
    bufs: &mut Vec<BufferId>,
) -> Result<Vec<Vec<f32>>> {
    for b in &case.buffers {
        let id = if b.scratch {
            backend.alloc_scratch(b.len)?
        } else {
            backend.alloc(b.dtype, b.len)?
        };
        bufs.push(id);
        if let Some(data) = &b.data {
            backend.write(id, 0, data)?;
        }
    }
    let mut weights = Vec::with_capacity(case.weights.len());
    for w in &case.weights {
        weights.push(backend.upload_weight(w.clone())?);
    }
    let ops: Vec<Op> = case
        .ops
        .iter()
        .map(|op| remap(op, bufs, &weights))
        .collect();
    backend.run(&ops)?;
    let mut out = Vec::with_capacity(case.checks.len());
    for c in &case.checks {
        let id = bufs.get(c.buf).copied().unwrap_or(BufferId(u32::MAX));
        out.push(backend.read(id, c.offset, c.len).await?);
    }
    Ok(out)
}

/// Sets `row.nmse` (the largest NMSE of the value checks, each range a tensor of its own as in
/// llama.cpp, so an untouched range cannot dilute a wrong one) and `row.passed`.
fn compare(case: &Case, got: &[Vec<f32>], want: &[Vec<f64>], row: &mut CaseResult) {
    let mut worst: Option<f64> = None;
    let mut mismatch = None;
    for ((c, g), w) in case.checks.iter().zip(got).zip(want) {
        if g.len() != w.len() {
            mismatch = Some(format!("read {} values, expected {}", g.len(), w.len()));
            continue;
        }
        match c.kind {
            CheckKind::Values => {
                let (mut err, mut norm) = (0.0f64, 0.0f64);
                for (&a, &b) in g.iter().zip(w) {
                    err += (f64::from(a) - b).powi(2);
                    norm += b * b;
                }
                let nmse = if norm > 0.0 { err / norm } else { err };
                // NaN (a NaN output) must win the comparison, so it is kept explicitly.
                worst = Some(match worst {
                    Some(m) if m.is_nan() || m >= nmse => m,
                    _ => nmse,
                });
            }
            CheckKind::Index => {
                for (&a, &b) in g.iter().zip(w) {
                    if f64::from(a) != b {
                        mismatch = Some(format!("index {a}, reference {b}"));
                    }
                }
            }
        }
    }
    row.nmse = match worst {
        Some(v) => v,
        None if mismatch.is_some() => f64::INFINITY,
        None => 0.0,
    };
    row.passed = mismatch.is_none() && row.nmse <= row.tolerance;
    row.error = mismatch;
}
