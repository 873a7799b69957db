//! Quantized model files (`lowbit quantize`): a GGUF that is the source GGUF with its weight
//! matrices replaced by lowbit's quantized ones, so a load reads codes instead of quantizing
//! (and calibrating) again.
//!
//! Layout (GGUF v3, memory-mappable like any GGUF):
//! - every metadata key of the source (tokenizer, hyper-parameters), plus
//!   `lowbit.format_version` (1), `lowbit.plan` (JSON: the precision label of each role,
//!   the methods, the per-tensor widths), `lowbit.calibration` (which text calibrated, or
//!   `none`) and `lowbit.source` (the source file's name and size);
//! - every source tensor that was not quantized (norm weights, biases), unchanged;
//! - for each quantized matrix `NAME`, its GGML-order dimensions as `lowbit.dims.NAME` (so
//!   shape checks still find them), and all matrices in one tensor `lowbit.weights` (type I8):
//!   a [`WeightStore`] blob (`LBWS`: per matrix its key, format, rotation, grid, codes, scales and
//!   offsets), whose reader checks every length, and its checksum as
//!   `lowbit.weights_checksum` ([`checksum`]): a damaged file is `MODEL_LOADING_FAILED`.

use super::WeightStore;
use crate::error::{Error, Result};
use crate::formats::{GgmlType, GgufFile, GgufValue, GgufWriter};
use std::collections::HashSet;

/// `lowbit.format_version` of the files this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// The tensor holding the quantized matrices.
pub const WEIGHTS_TENSOR: &str = "lowbit.weights";
/// The metadata key of the `lowbit.weights` blob's checksum ([`checksum`]).
pub const CHECKSUM_KEY: &str = "lowbit.weights_checksum";

/// A 64-bit checksum of `bytes` (multiply–rotate over little-endian words, then the length):
/// every step is a bijection of the state for a given word, so any one changed word or byte
/// changes the result. For catching damage, not tampering.
pub fn checksum(bytes: &[u8]) -> u64 {
    const P: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        h = (h ^ v).wrapping_mul(P).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(tail))
        .wrapping_mul(P)
        .rotate_left(29);
    (h ^ bytes.len() as u64).wrapping_mul(P)
}

/// What a quantized model file records besides its matrices.
#[derive(Clone, Debug)]
pub struct ModelFileInfo {
    /// `lowbit.plan`: JSON of the role precisions, methods and per-tensor widths.
    pub plan_json: String,
    /// `lowbit.calibration`: which text calibrated (`none` without calibration).
    pub calibration: String,
    /// `lowbit.source`: the source file's name and size.
    pub source: String,
}

/// Whether `g` is a quantized model file written by [`write_model_file`].
pub fn is_model_file(g: &GgufFile) -> bool {
    g.get("lowbit.format_version").is_some()
}

/// Writes the quantized model: `source`'s metadata and unquantized tensors, and `store`'s
/// matrices (`store.made()`: key `name|rows x cols|label`), to `path`.
///
/// Errors: `INVALID_CONFIG` when the file cannot be written; `MODEL_LOADING_FAILED` for a
/// source tensor that cannot be read.
pub fn write_model_file(
    path: &std::path::Path,
    source: &GgufFile,
    store: &WeightStore,
    info: &ModelFileInfo,
) -> Result<u64> {
    let mut w = GgufWriter::new();
    for (k, v) in &source.metadata {
        if !k.starts_with("lowbit.") {
            w.set(k, v.clone());
        }
    }
    w.set("lowbit.format_version", GgufValue::U64(FORMAT_VERSION));
    w.set("lowbit.plan", GgufValue::String(info.plan_json.clone()));
    w.set(
        "lowbit.calibration",
        GgufValue::String(info.calibration.clone()),
    );
    w.set("lowbit.source", GgufValue::String(info.source.clone()));
    let quantized: HashSet<&str> = store
        .made()
        .iter()
        .map(|(k, _)| k.split('|').next().unwrap_or(k))
        .collect();
    for t in source.tensors() {
        if quantized.contains(t.name.as_str()) {
            w.set(
                &format!("lowbit.dims.{}", t.name),
                GgufValue::Array(t.dims.iter().map(|&d| GgufValue::U64(d)).collect()),
            );
        } else {
            w.add_tensor(
                &t.name,
                t.dims.clone(),
                t.ggml_type,
                source.tensor_bytes(&t.name)?.to_vec(),
            )?;
        }
    }
    let blob = store.to_bytes();
    w.set(CHECKSUM_KEY, GgufValue::U64(checksum(&blob)));
    let len = blob.len() as u64;
    w.add_tensor(WEIGHTS_TENSOR, vec![len], GgmlType::I8, blob)?;
    w.write(path)?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// The matrices of a quantized model file, as a store matched by name
/// ([`WeightStore::by_name`]), and what the file records.
///
/// Errors: `MODEL_LOADING_FAILED` for another format version, a missing or damaged
/// `lowbit.weights` tensor.
pub fn read_model_file(g: &GgufFile) -> Result<(WeightStore, ModelFileInfo)> {
    match g.get_u64("lowbit.format_version") {
        Some(FORMAT_VERSION) => {}
        v => {
            return Err(Error::model_loading(format!(
                "quantized model file version {v:?}; this build reads version {FORMAT_VERSION}"
            )))
        }
    }
    let blob = g.tensor_bytes(WEIGHTS_TENSOR)?;
    match g.get_u64(CHECKSUM_KEY) {
        Some(sum) if sum == checksum(blob) => {}
        Some(_) => {
            return Err(Error::model_loading(format!(
                "{WEIGHTS_TENSOR} is damaged: its checksum does not match {CHECKSUM_KEY}"
            )))
        }
        None => {
            return Err(Error::model_loading(format!(
                "quantized model file without {CHECKSUM_KEY}"
            )))
        }
    }
    let store = WeightStore::from_bytes_by_name(blob)
        .map_err(|e| Error::model_loading(format!("{WEIGHTS_TENSOR}: {}", e.message)))?;
    let text = |k: &str| g.get_str(k).unwrap_or("").to_string();
    Ok((
        store,
        ModelFileInfo {
            plan_json: text("lowbit.plan"),
            calibration: text("lowbit.calibration"),
            source: text("lowbit.source"),
        },
    ))
}
