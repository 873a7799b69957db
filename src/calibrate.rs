//! `--calibrate FILE`: runs the model itself, unquantized on the CPU backend, over chunks of a
//! calibration text and collects every linear layer's input statistics
//! ([`lowbit_core::quant::Calibration`]), for importance-weighted scales and error-feedback
//! rounding. Results are kept per process, so a multi-precision run calibrates once.

use lowbit_core::adapter::{LoadContext, Logits, ModelSource, QuantPlan, WeightPrecision};
use lowbit_core::calibration::CalibratingBackend;
use lowbit_core::quant::Calibration;
use lowbit_core::registry::find_adapter;
use lowbit_core::{block_on, Backend, Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Tokens per calibration chunk (the evaluation's context).
pub const CALIBRATION_CTX: usize = 512;

type Key = (PathBuf, PathBuf, usize);

fn cache() -> &'static Mutex<HashMap<Key, Arc<Calibration>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Calibration>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// FNV-1a 64 of `bytes` (provenance: which text calibrated).
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Calibrates the model at `model` on the first `chunks` chunks of [`CALIBRATION_CTX`] tokens
/// of `text_file` with `threads` CPU threads. `progress(done, total, what)` reports loading and
/// then each chunk.
///
/// Errors: `INVALID_CONFIG` for an unreadable or too short text; the model's loading errors.
pub fn calibrate(
    model: &Path,
    text_file: &Path,
    chunks: usize,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Arc<Calibration>> {
    let key = (model.to_path_buf(), text_file.to_path_buf(), chunks);
    if let Some(c) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let bytes = std::fs::read(text_file).map_err(|e| {
        Error::invalid_config(format!(
            "cannot read calibration text {}: {e}",
            text_file.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let source = ModelSource::open(model)?;
    let adapter = find_adapter(&source)?;
    let cpu: Arc<dyn Backend> = Arc::new(lowbit_cpu::CpuBackend::new(threads)?);
    let recorder = Arc::new(CalibratingBackend::new(cpu));
    let mut ctx = LoadContext::default();
    let loaded = adapter
        .load_with(
            &source,
            &QuantPlan::uniform(WeightPrecision::F32),
            recorder.clone(),
            progress,
            &mut ctx,
        )?
        .into_text()?;
    let tok = loaded.tokenizer();
    let tokens = tok.encode(&text, true)?;
    let n = (tokens.len() / CALIBRATION_CTX).min(chunks);
    if n == 0 {
        return Err(Error::invalid_config(format!(
            "the calibration text {} tokenizes to {} tokens; at least {CALIBRATION_CTX} are needed",
            text_file.display(),
            tokens.len()
        )));
    }
    let mut cache_kv = loaded.new_cache(CALIBRATION_CTX)?;
    for i in 0..n {
        let mut chunk = tokens[i * CALIBRATION_CTX..(i + 1) * CALIBRATION_CTX].to_vec();
        if let (true, Some(b)) = (tok.add_bos(), tok.bos_id()) {
            chunk[0] = b;
        }
        cache_kv.clear();
        // All logits: the output projection's inputs are calibrated too.
        block_on(loaded.forward(&mut cache_kv, &chunk, Logits::All))?;
        progress(i + 1, n, "calibrating");
    }
    drop(cache_kv);
    drop(loaded);
    let by_id = recorder.take_hessians();
    let mut hessians = HashMap::new();
    let units = ctx.uploads.iter().map(|(_, n)| n.clone()).collect();
    for (id, names) in ctx.uploads {
        if let Some(h) = by_id.get(&id) {
            let h = Arc::new(h.clone());
            for name in names {
                hessians.insert(name, h.clone());
            }
        }
    }
    let cal = Arc::new(Calibration {
        hessians,
        units,
        provenance: format!(
            "{} (fnv64 {:016x}, {} bytes): {n} chunks of {CALIBRATION_CTX} tokens",
            text_file.file_name().map_or_else(
                || text_file.display().to_string(),
                |f| f.to_string_lossy().into_owned()
            ),
            fnv64(&bytes),
            bytes.len()
        ),
    });
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, cal.clone());
    Ok(cal)
}
