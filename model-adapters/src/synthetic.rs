//! Synthetic models: the published shape of a model with random weights made directly in
//! memory (already packed for integer formats), so speed can be measured on large shapes
//! without large files. Speed does not depend on the values; quality figures never come from
//! these models.

use half::f16;
use lowbit_core::adapter::{ProgressFn, QuantPlan, TextModel, WeightPrecision};
use lowbit_core::formats::gguf::GgufValue;
use lowbit_core::quant::{QuantizedMatrix, Scheme};
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{Backend, Error, Result, WeightMatrix};
use rayon::prelude::*;
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

/// SplitMix64: a fast, good-enough stream of random words.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform values in `[-a, a)` from a seed, in parallel.
fn random_f32(n: usize, a: f32, seed: u64) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let r = splitmix(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

/// A random weight matrix in precision `p`: random packed codes with small scales for integer
/// formats (no quantization search: the values are irrelevant to speed).
pub fn random_weight(
    rows: usize,
    cols: usize,
    p: WeightPrecision,
    seed: u64,
) -> Result<WeightMatrix> {
    // Scales keep activations bounded through many layers of random weights.
    let a = 1.0 / (cols as f32).sqrt();
    Ok(match p {
        WeightPrecision::F32 => WeightMatrix::F32 {
            rows,
            cols,
            data: random_f32(rows * cols, a, seed),
        },
        WeightPrecision::F16 => WeightMatrix::F16 {
            rows,
            cols,
            data: random_f32(rows * cols, a, seed)
                .into_par_iter()
                .map(f16::from_f32)
                .collect(),
        },
        WeightPrecision::Quant(spec) => {
            if !cols.is_multiple_of(32) {
                return Err(Error::invalid_config(format!(
                    "cols {cols} is not a multiple of 32"
                )));
            }
            let words = rows * cols * spec.bits as usize / 32;
            let groups = rows * cols.div_ceil(spec.group_size);
            let data: Vec<u32> = (0..words)
                .into_par_iter()
                .map(|i| splitmix(seed.wrapping_mul(31) ^ i as u64) as u32)
                .collect();
            let step = a / spec.max_code() as f32 * 2.0;
            let scales = vec![f16::from_f32(step); groups];
            let offsets = match spec.scheme {
                Scheme::Symmetric => Vec::new(),
                Scheme::Asymmetric => vec![f16::from_f32(-a); groups],
            };
            WeightMatrix::Quantized(QuantizedMatrix {
                rows,
                cols,
                spec,
                data,
                scales,
                offsets,
            })
        }
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
    let p = preset(name)?;
    let hp = crate::llama::Hparams {
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
    crate::llama::build_random(
        hp,
        p.tied,
        byte_tokenizer()?,
        format!("synthetic {name}"),
        plan,
        backend,
        progress,
    )
}
