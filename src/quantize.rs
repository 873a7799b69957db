//! `lowbit quantize`: quantize a model once (calibrating first when asked) and write the result
//! as a quantized model file ([`lowbit_core::quant::model_file`]) that later loads read
//! directly, with a per-tensor report of each matrix's width and measured error.

use crate::plan::RunPlan;
use lowbit_core::adapter::{LoadContext, ModelSource, QuantPlan, WeightPrecision};
use lowbit_core::quant::model_file::{write_model_file, ModelFileInfo};
use lowbit_core::quant::WeightStore;
use lowbit_core::registry::find_adapter;
use lowbit_core::{Backend, Error, Result, WeightMatrix};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// One quantized matrix of the report.
#[derive(Clone, Debug, Serialize)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Its precision label (`int2-g32-sym`).
    pub precision: String,
    /// Values.
    pub params: usize,
    /// Stored bits per value (codes, scales, offsets).
    pub bits_per_weight: f64,
    /// `‖W − Ŵ‖ / ‖W‖`.
    pub rel_error: f64,
    /// The same weighted by each input column's mean square activation on the calibration
    /// text (`Σ h_c (W − Ŵ)²_rc / Σ h_c W²_rc`), the error a layer's output sees; `None`
    /// without calibration.
    pub act_weighted_error: Option<f64>,
}

/// What `lowbit quantize` did.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    /// Per matrix.
    pub tensors: Vec<TensorReport>,
    /// Whole-model bits per weight (every matrix, embedding and output projection included).
    pub bits_per_weight: f64,
    /// Bytes of the written file.
    pub file_bytes: u64,
    /// What calibrated (`none`).
    pub calibration: String,
    /// The plan recorded in the file (JSON).
    pub plan: String,
}

/// The plan recorded in a quantized model file: each role's precision label, the methods and
/// the per-tensor widths.
pub fn plan_json(plan: &RunPlan) -> String {
    let w = &plan.weights;
    serde_json::json!({
        "attention": w.attention.label(),
        "feedforward": w.feedforward.label(),
        "embedding": w.embedding.label(),
        "lm_head": w.lm_head.label(),
        "methods": plan.methods.label_suffix(),
        "overrides": plan.methods.overrides,
    })
    .to_string()
}

/// The role precisions of a recorded plan (see [`plan_json`]).
///
/// Errors: `MODEL_LOADING_FAILED` for a plan that does not parse.
pub fn plan_of_json(text: &str) -> Result<QuantPlan> {
    let bad = |what: &str| Error::model_loading(format!("lowbit.plan: {what}"));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let role = |k: &str| {
        let label = v[k].as_str().ok_or_else(|| bad(&format!("no `{k}`")))?;
        WeightPrecision::parse_label(label).map_err(|e| bad(&e.message))
    };
    Ok(QuantPlan {
        attention: role("attention")?,
        feedforward: role("feedforward")?,
        embedding: role("embedding")?,
        lm_head: role("lm_head")?,
    })
}

fn errors(w: &[f32], q: &WeightMatrix, imp: Option<&[f32]>) -> (f64, Option<f64>) {
    let (_, cols) = q.shape();
    let deq = match q {
        WeightMatrix::Quantized(m) => m.dequantize(),
        WeightMatrix::F16 { data, .. } => data.iter().map(|v| v.to_f32()).collect(),
        WeightMatrix::F32 { data, .. } => data.clone(),
    };
    let (mut e, mut n, mut ew, mut nw) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, (a, b)) in w.iter().zip(&deq).enumerate() {
        let (a, d) = (f64::from(*a), f64::from(a - b));
        e += d * d;
        n += a * a;
        if let Some(h) = imp {
            let h = f64::from(h[i % cols]);
            ew += h * d * d;
            nw += h * a * a;
        }
    }
    (
        (e / n.max(1e-30)).sqrt(),
        imp.map(|_| (ew / nw.max(1e-30)).sqrt()),
    )
}

/// Quantizes the model at `input` per `plan` (its precisions and methods, calibrating first
/// when it names a calibration text) and writes the quantized model file `out`.
/// `progress(done, total, what)` reports calibration and quantization.
///
/// Errors: `UNSUPPORTED_MODEL` for a source that is not a GGUF; loading and writing errors.
pub fn quantize_model(
    plan: &RunPlan,
    input: &Path,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<QuantizeReport> {
    let quantizer = plan.quantizer(input, progress)?;
    let calibration = quantizer
        .calibration
        .as_ref()
        .map_or_else(|| "none".to_string(), |c| c.provenance.clone());
    let cal = quantizer.calibration.clone();
    let source = ModelSource::open(input)?;
    let ModelSource::Gguf(g) = &source else {
        return Err(Error::unsupported(format!(
            "lowbit quantize reads GGUF models, not {}",
            source.format_name()
        )));
    };
    let adapter = find_adapter(&source)?;
    let backend: Arc<dyn Backend> = Arc::new(lowbit_cpu::CpuBackend::new(plan.backend.threads)?);
    let mut ctx = LoadContext {
        store: WeightStore::recording(),
        quantizer,
        ..Default::default()
    };
    let model = adapter
        .load_with(&source, &plan.weights, backend, progress, &mut ctx)?
        .into_text()?;
    let bits_per_weight = model.bits_per_weight();
    drop(model);
    let mut tensors = Vec::new();
    for (key, w) in ctx.store.made() {
        let mut parts = key.split('|');
        let name = parts.next().unwrap_or_default().to_string();
        let precision = parts.nth(1).unwrap_or_default().to_string();
        let (rows, cols) = w.shape();
        let original = g.dequantize(&name)?;
        let imp = cal
            .as_ref()
            .and_then(|c| c.hessians.get(&name))
            .filter(|h| h.dim == cols)
            .map(|h| h.diag());
        let (rel_error, act_weighted_error) = errors(&original, w, imp.as_deref());
        tensors.push(TensorReport {
            name,
            precision,
            params: rows * cols,
            bits_per_weight: w.size_bytes() as f64 * 8.0 / (rows * cols) as f64,
            rel_error,
            act_weighted_error,
        });
    }
    let info = ModelFileInfo {
        plan_json: plan_json(plan),
        calibration: calibration.clone(),
        source: format!(
            "{} ({} bytes)",
            input
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            std::fs::metadata(input).map(|m| m.len()).unwrap_or(0)
        ),
    };
    let file_bytes = write_model_file(out, g, &ctx.store, &info)?;
    Ok(QuantizeReport {
        tensors,
        bits_per_weight,
        file_bytes,
        calibration,
        plan: info.plan_json,
    })
}

/// Chooses each weight unit's width (2, 3, 4 or 8 bits in `group`/`scheme` groups) so the
/// matrices of the model at `input` average at most `target_bpw` bits per weight with the
/// least calibration-weighted error (see [`lowbit_core::quant::allocate`]). The error of each
/// unit at each width is measured by quantizing it with `quantizer`'s rotation and the
/// calibration's importance weights. Returns `(tensor name, bits)` overrides.
///
/// Errors: `INVALID_CONFIG` without calibration or when even 2 bits everywhere exceed the
/// target; `MODEL_LOADING_FAILED` for tensors that cannot be read.
pub fn allocate_widths(
    quantizer: &lowbit_core::quant::Quantizer,
    input: &Path,
    group: usize,
    scheme: lowbit_core::Scheme,
    target_bpw: f64,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<(String, u32)>> {
    use lowbit_core::quant::allocate::{allocate, Choice, Unit};
    let cal = quantizer.calibration.clone().ok_or_else(|| {
        Error::invalid_config(
            "quantization.target_bits needs calibration (--calibrate FILE) to measure errors",
        )
    })?;
    let source = ModelSource::open(input)?;
    let ModelSource::Gguf(g) = &source else {
        return Err(Error::unsupported("width allocation reads GGUF models"));
    };
    // Errors measured with importance weights only (fast); the final quantization may add
    // error feedback.
    let measure = lowbit_core::quant::Quantizer {
        error_feedback: false,
        overrides: Vec::new(),
        ..quantizer.clone()
    };
    const WIDTHS: [u32; 4] = [2, 3, 4, 8];
    let mut units = Vec::new();
    let mut params = 0usize;
    for (k, names) in cal.units.iter().enumerate() {
        progress(k, cal.units.len(), "measuring widths");
        let mut choices: Vec<Choice> = WIDTHS
            .iter()
            .map(|&bits| Choice {
                bits,
                cost: 0.0,
                error: 0.0,
            })
            .collect();
        for name in names {
            let dims = g
                .tensor_dims(name)
                .ok_or_else(|| Error::model_loading(format!("missing tensor {name}")))?;
            let (cols, rows) = (dims[0] as usize, dims[1..].iter().product::<u64>() as usize);
            if cols % 32 != 0 {
                continue;
            }
            params += rows * cols;
            let data = g.dequantize(name)?;
            let diag = cal
                .hessians
                .get(name)
                .filter(|h| h.dim == cols)
                .map(|h| h.diag());
            for c in choices.iter_mut() {
                let p = WeightPrecision::from_bits(c.bits, group, scheme)?;
                let q = measure.quantize(name, data.clone(), rows, cols, p)?;
                let deq = match &q {
                    WeightMatrix::Quantized(m) => m.dequantize(),
                    _ => data.clone(),
                };
                c.cost += q.size_bytes() as f64 * 8.0;
                c.error += data
                    .iter()
                    .zip(&deq)
                    .enumerate()
                    .map(|(i, (a, b))| {
                        let h = diag.as_ref().map_or(1.0, |d| f64::from(d[i % cols]));
                        h * f64::from(a - b).powi(2)
                    })
                    .sum::<f64>();
            }
        }
        units.push(Unit {
            names: names.clone(),
            choices,
        });
    }
    progress(cal.units.len(), cal.units.len(), "measuring widths");
    let budget = target_bpw * params as f64;
    let picked = allocate(&units, budget).ok_or_else(|| {
        Error::invalid_config(format!(
            "quantization.target_bits = {target_bpw}: even 2 bits everywhere take more"
        ))
    })?;
    Ok(units
        .iter()
        .zip(picked)
        .flat_map(|(u, i)| {
            let bits = u.choices[i].bits;
            u.names.iter().map(move |n| (n.clone(), bits))
        })
        .collect())
}
