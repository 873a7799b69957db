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

/// The widths whose sensitivity is measured ([`measure_sensitivities`]); 8 bits is derived.
pub const MEASURED_WIDTHS: [u32; 5] = [2, 3, 4, 5, 6];

/// Measures each weight unit's damage at 2, 3, 4, 5, 6 and 8 bits in groups of `groups[0]`,
/// and at 2 to 6 bits in each further (coarser) group size of `groups`. Widths already in
/// `known` (an earlier table of the same model, calibration and methods) are taken from it,
/// so a table measured before a width existed only gains the new widths.
///
/// The damage of a unit at a width is its **sensitivity**: the mean KL divergence of the
/// model's next-token distribution, over the first `tokens` tokens of the calibration text
/// `text`, when that unit alone is quantized at that width (with `quantizer`'s methods: rotation,
/// importance, error feedback) and everything else stays f32. One f32 model is loaded on the CPU
/// backend ([`SwappingBackend`] swaps one unit for its quantized stand-in per run), so this
/// costs one forward pass per unit and width (2 to 6 bits; 8 bits, too small to measure on
/// a short text, is taken as 6 bits' divergence / 16, a grid's squared error falling about 4×
/// per bit). KL divergences of separate small changes add up
/// to first order, which is what the allocator's sum assumes.
///
/// Errors: `INVALID_CONFIG` without calibration or for a text shorter than 16 tokens; the
/// model's loading errors.
#[allow(clippy::too_many_arguments)]
pub fn measure_sensitivities(
    quantizer: &lowbit_core::quant::Quantizer,
    input: &Path,
    text: &Path,
    tokens: usize,
    threads: usize,
    groups: &[usize],
    scheme: lowbit_core::Scheme,
    known: &[Sensitivity],
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<Sensitivity>> {
    use lowbit_core::adapter::Logits;
    use lowbit_core::calibration::SwappingBackend;
    if quantizer.calibration.is_none() {
        return Err(Error::invalid_config(
            "quantization.target_bits needs calibration (--calibrate FILE) to measure sensitivities",
        ));
    }
    let bytes = std::fs::read(text).map_err(|e| {
        Error::invalid_config(format!(
            "cannot read calibration text {}: {e}",
            text.display()
        ))
    })?;
    let source = ModelSource::open(input)?;
    let adapter = find_adapter(&source)?;
    let cpu: Arc<dyn Backend> = Arc::new(lowbit_cpu::CpuBackend::new(threads)?);
    let swap = Arc::new(SwappingBackend::new(cpu));
    let mut ctx = LoadContext::default();
    let model = adapter
        .load_with(
            &source,
            &QuantPlan::uniform(WeightPrecision::F32),
            swap.clone(),
            progress,
            &mut ctx,
        )?
        .into_text()?;
    let tok = model.tokenizer();
    let mut ids = tok.encode(&String::from_utf8_lossy(&bytes), true)?;
    ids.truncate(tokens.min(crate::calibrate::CALIBRATION_CTX));
    if ids.len() < 16 {
        return Err(Error::invalid_config(format!(
            "the calibration text {} has {} tokens; sensitivities need at least 16",
            text.display(),
            ids.len()
        )));
    }
    if let (true, Some(b)) = (tok.add_bos(), tok.bos_id()) {
        ids[0] = b;
    }
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache(ids.len())?;
    let log_probs = |cache: &mut lowbit_core::kv::KvCache| -> Result<Vec<f32>> {
        cache.clear();
        let mut l = lowbit_core::block_on(model.forward(cache, &ids, Logits::All))?;
        for row in l.chunks_mut(vocab) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
            row.iter_mut().for_each(|v| *v -= lse);
        }
        Ok(l)
    };
    let reference = log_probs(&mut cache)?;
    let kl = |q: &[f32]| -> f64 {
        let rows = reference.len() / vocab;
        reference
            .chunks(vocab)
            .zip(q.chunks(vocab))
            .map(|(p, q)| {
                p.iter()
                    .zip(q)
                    .map(|(&lp, &lq)| f64::from(lp.exp()) * f64::from(lp - lq))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / rows as f64
    };
    let mut table = Vec::new();
    let total = ctx.uploads.len();
    for (k, (id, names)) in ctx.uploads.iter().enumerate() {
        progress(k, total, "measuring sensitivities");
        let Some((rows, cols, data)) = swap.take_weight(*id) else {
            continue;
        };
        if cols % 32 != 0 {
            continue;
        }
        let earlier = known.iter().find(|t| t.names == *names);
        let mut widths: Vec<SensitivityWidth> = Vec::new();
        for (gi, &group) in groups.iter().enumerate() {
            for &bits in MEASURED_WIDTHS
                .iter()
                .chain(if gi == 0 { &[8][..] } else { &[] })
            {
                if bits == 8 {
                    let p = WeightPrecision::from_bits(bits, group, scheme)?;
                    let q = quantizer.quantize(&names[0], data.clone(), rows, cols, p)?;
                    // Too small to measure on a short text: each extra bit divides a grid's
                    // squared error by about 4, so 8 bits leave about 4⁻² of 6 bits'
                    // divergence.
                    let kl6 = widths.last().map_or(0.0, |w| w.kl);
                    widths.push(SensitivityWidth {
                        bits,
                        group,
                        cost: q.size_bytes() as f64 * 8.0,
                        kl: kl6 / 16.0,
                    });
                    continue;
                }
                if let Some(w) = earlier
                    .and_then(|t| t.widths.iter().find(|w| w.bits == bits && w.group == group))
                {
                    widths.push(*w);
                    continue;
                }
                let p = WeightPrecision::from_bits(bits, group, scheme)?;
                let q = quantizer.quantize(&names[0], data.clone(), rows, cols, p)?;
                let cost = q.size_bytes() as f64 * 8.0;
                let stand_in = swap.inner().upload_weight(q)?;
                swap.swap(Some((*id, stand_in)));
                let out = log_probs(&mut cache);
                swap.swap(None);
                widths.push(SensitivityWidth {
                    bits,
                    group,
                    cost,
                    kl: kl(&out?).max(0.0),
                });
            }
        }
        table.push(Sensitivity {
            names: names.clone(),
            params: rows * cols,
            widths,
        });
    }
    progress(total, total, "measuring sensitivities");
    Ok(table)
}

/// Chooses each weight unit's width (2, 3, 4, 5, 6 or 8 bits in `groups[0]`-value groups, or
/// 2 to 6 bits in a further group size of `groups`; `scheme` throughout) so the
/// matrices of the model at `input` average at most `target_bpw` bits per weight (when it is
/// positive) and take at most `budget_bits` together (when given) with the least
/// summed sensitivity ([`measure_sensitivities`], kept on disk between runs under
/// `~/.cache/lowbit/sensitivity` keyed by model, calibration, methods and format; see
/// [`lowbit_core::quant::allocate`]). Returns `(tensor name, precision)` overrides and the
/// table.
///
/// Errors: as [`measure_sensitivities`]; `INVALID_CONFIG` when even 2 bits everywhere exceed
/// the target or the budget.
#[allow(clippy::too_many_arguments)]
pub fn allocate_widths(
    quantizer: &lowbit_core::quant::Quantizer,
    input: &Path,
    text: &Path,
    tokens: usize,
    threads: usize,
    groups: &[usize],
    scheme: lowbit_core::Scheme,
    target_bpw: f64,
    budget_bits: Option<f64>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Widths, Vec<Sensitivity>)> {
    use lowbit_core::quant::allocate::{allocate, Choice, Unit};
    let meta = std::fs::metadata(input)
        .map_err(|e| Error::model_loading(format!("cannot read {}: {e}", input.display())))?;
    if groups.is_empty() {
        return Err(Error::invalid_config("width allocation needs a group size"));
    }
    let key = format!(
        "v2|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}",
        std::fs::canonicalize(input)
            .unwrap_or_else(|_| input.to_path_buf())
            .display(),
        meta.len(),
        quantizer
            .calibration
            .as_ref()
            .map_or(String::new(), |c| c.provenance.clone()),
        tokens,
        quantizer.tag(),
        quantizer.damp,
        groups,
        scheme,
        text.display()
    );
    let file = sensitivity_cache_dir().map(|d| {
        d.join(format!(
            "{:016x}.json",
            crate::calibrate::fnv64(key.as_bytes())
        ))
    });
    let cached: Option<Vec<Sensitivity>> = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<(String, Vec<Sensitivity>)>(&b).ok())
        .filter(|(k, _)| *k == key)
        .map(|(_, t)| t);
    // A table missing a width (measured before it existed) gains just that width.
    let complete = |t: &[Sensitivity]| {
        t.iter().all(|u| {
            groups.iter().all(|&g| {
                MEASURED_WIDTHS
                    .iter()
                    .all(|&b| u.widths.iter().any(|w| w.bits == b && w.group == g))
            })
        })
    };
    let table = match cached {
        Some(t) if complete(&t) => t,
        earlier => {
            let t = measure_sensitivities(
                quantizer,
                input,
                text,
                tokens,
                threads,
                groups,
                scheme,
                earlier.as_deref().unwrap_or(&[]),
                progress,
            )?;
            if let Some(f) = &file {
                // A cache that cannot be written only costs the next run the measurement.
                let _ = f
                    .parent()
                    .map(std::fs::create_dir_all)
                    .transpose()
                    .ok()
                    .and_then(|_| serde_json::to_vec(&(&key, &t)).ok())
                    .map(|b| std::fs::write(f, b));
            }
            t
        }
    };
    let params: usize = table.iter().map(|t| t.params).sum();
    let units: Vec<Unit> = table
        .iter()
        .map(|t| Unit {
            names: t.names.clone(),
            choices: t
                .widths
                .iter()
                .map(|w| Choice {
                    bits: w.bits,
                    cost: w.cost,
                    error: w.kl,
                })
                .collect(),
        })
        .collect();
    let by_target = (target_bpw > 0.0).then_some(target_bpw * params as f64);
    let budget = match (by_target, budget_bits) {
        (Some(t), Some(b)) => t.min(b),
        (Some(t), None) => t,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(Error::invalid_config(
                "width allocation needs quantization.target_bits or an adaptive memory budget",
            ))
        }
    };
    let picked = allocate(&units, budget).ok_or_else(|| {
        Error::invalid_config(format!(
            "{}: even 2 bits everywhere take more ({:.1} MB for {params} weights)",
            if by_target.is_some_and(|t| budget_bits.is_none_or(|b| t <= b)) {
                format!("quantization.target_bits = {target_bpw}")
            } else {
                format!(
                    "quantization.adaptive.memory_budget_mb = {:.0}",
                    budget / 8e6
                )
            },
            units
                .iter()
                .map(|u| u
                    .choices
                    .iter()
                    .map(|c| c.cost)
                    .fold(f64::INFINITY, f64::min))
                .sum::<f64>()
                / 8e6
        ))
    })?;
    let mut widths = Vec::new();
    for (t, i) in table.iter().zip(picked) {
        let w = &t.widths[i];
        let p = WeightPrecision::from_bits(w.bits, w.group, scheme)?;
        widths.extend(t.names.iter().map(|n| (n.clone(), p)));
    }
    Ok((widths, table))
}

/// `(tensor name, precision)` per allocated tensor.
pub type Widths = Vec<(String, WeightPrecision)>;

/// One measured width of a unit (see [`Sensitivity`]).
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct SensitivityWidth {
    /// Bits per stored value.
    pub bits: u32,
    /// Values per scale.
    pub group: usize,
    /// Stored bits of the unit at this width (codes, scales, offsets).
    pub cost: f64,
    /// Mean KL divergence of the next-token distribution, in nats.
    pub kl: f64,
}

/// One weight unit's measured sensitivity (see [`allocate_widths`]).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Sensitivity {
    /// Tensors of the unit (several when stacked into one upload).
    pub names: Vec<String>,
    /// Values.
    pub params: usize,
    /// Each measured width (and group size).
    pub widths: Vec<SensitivityWidth>,
}

/// Where measured sensitivities are kept between runs: `LOWBIT_SENSITIVITY_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/lowbit/sensitivity` or `~/.cache/lowbit/sensitivity`; `None` when no
/// home is known.
fn sensitivity_cache_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("LOWBIT_SENSITIVITY_CACHE_DIR") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("lowbit").join("sensitivity"))
}
