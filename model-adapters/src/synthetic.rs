//! Synthetic models: the published shape of a model with random weights made directly in
//! memory (already packed for integer formats), so speed can be measured on large shapes
//! without large files. Speed does not depend on the values; quality figures never come from
//! these models.

use crate::tensor_source::RandomTensors;
use lowbit_core::adapter::{ProgressFn, QuantPlan, TextModel};
use lowbit_core::formats::gguf::GgufValue;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{Backend, Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A published LLaMA-family shape.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticPreset {
    /// Name used on the command line.
    pub name: &'static str,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Feed-forward size.
    pub ffn_dim: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Output projection shares the embedding table.
    pub tied: bool,
    /// RoPE base.
    pub rope_theta: f32,
}

/// The shapes `lowbit bench --synthetic` knows (the same as
/// `shared/tools/make-synthetic-gguf.py`'s presets, so the peer runs the same shapes).
pub const PRESETS: &[SyntheticPreset] = &[
    SyntheticPreset {
        name: "smollm2-135m",
        n_layers: 30,
        dim: 576,
        n_heads: 9,
        n_kv_heads: 3,
        ffn_dim: 1536,
        vocab: 49152,
        tied: true,
        rope_theta: 100_000.0,
    },
    SyntheticPreset {
        name: "llama-3.2-1b",
        n_layers: 16,
        dim: 2048,
        n_heads: 32,
        n_kv_heads: 8,
        ffn_dim: 8192,
        vocab: 128_256,
        tied: true,
        rope_theta: 500_000.0,
    },
    SyntheticPreset {
        name: "llama-3-8b",
        n_layers: 32,
        dim: 4096,
        n_heads: 32,
        n_kv_heads: 8,
        ffn_dim: 14336,
        vocab: 128_256,
        tied: false,
        rope_theta: 500_000.0,
    },
];

/// Looks a preset up by name.
pub fn preset(name: &str) -> Result<&'static SyntheticPreset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
        Error::invalid_config(format!(
            "unknown synthetic model `{name}`; known: {}",
            names.join(", ")
        ))
    })
}

/// A byte-level tokenizer (256 tokens, no merges): synthetic models are driven with token
/// ids, but the engine still needs a tokenizer to turn ids into bytes.
fn byte_tokenizer() -> Result<Tokenizer> {
    // GPT-2's byte-to-unicode table: printable bytes map to themselves, others to 256 + n.
    let mut n = 0;
    let tokens: Vec<GgufValue> = (0..=255u32)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            GgufValue::String(char::from_u32(c).unwrap_or('?').to_string())
        })
        .collect();
    let mut m = BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".to_string(),
        GgufValue::String("gpt2".into()),
    );
    m.insert(
        "tokenizer.ggml.pre".to_string(),
        GgufValue::String("default".into()),
    );
    m.insert(
        "tokenizer.ggml.tokens".to_string(),
        GgufValue::Array(tokens),
    );
    m.insert(
        "tokenizer.ggml.merges".to_string(),
        GgufValue::Array(Vec::new()),
    );
    Tokenizer::from_metadata(&m)
}

/// Builds the preset's model with random weights on `backend`.
pub fn load_synthetic(
    name: &str,
    plan: &QuantPlan,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<Box<dyn TextModel>> {
    load_synthetic_with(name, plan, RandomTensors::default(), backend, progress)
}

/// [`load_synthetic`], with the integer matrices stored as `methods` says: in a rotated basis
/// of their input dimension (as `quantization.rotation` makes them: blocks of up to
/// [`lowbit_core::quant::MAX_ROTATION_BLOCK`] columns) and/or on a grid of levels (as
/// `quantization.grid = learned` makes them), so decode speed with and without the backend's
/// rotation and table lookup can be compared. The model's name then ends in ` +rot` /
/// ` +grid`.
pub fn load_synthetic_with(
    name: &str,
    plan: &QuantPlan,
    methods: RandomTensors,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<Box<dyn TextModel>> {
    let p = preset(name)?;
    let hp = crate::decoder::Hparams {
        n_layers: p.n_layers,
        dim: p.dim,
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        head_dim: p.dim / p.n_heads,
        ffn_dim: p.ffn_dim,
        vocab: p.vocab,
        context_length: 8192,
        eps: 1e-5,
        rope_theta: p.rope_theta,
    };
    let model = crate::llama::build_random(
        hp,
        p.tied,
        byte_tokenizer()?,
        format!(
            "synthetic {name}{}{}",
            if methods.rotation { " +rot" } else { "" },
            if methods.grid { " +grid" } else { "" }
        ),
        plan,
        methods,
        backend,
        progress,
    )?;
    Ok(Box::new(model))
}
