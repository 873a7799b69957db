//! Gemma 3 text decoders (GGUF `gemma3`, e.g. Gemma 3 270M), as llama.cpp's `gemma3` graph:
//! the embedding scaled by √dim; RMSNorm everywhere (the GGUF converter already added Gemma's
//! `1 +` to every norm weight, so they are used as stored); per-head RMSNorm of queries and keys
//! before NeoX-style RoPE; a norm after the attention and after the feed-forward as well as
//! before (sandwich); a GeGLU feed-forward with tanh-GELU; sliding-window attention with its own
//! RoPE base on local layers, full attention on every `pattern`-th; a tied output projection.

use crate::blocks::{DecoderAttention, GatedFfn, Norm, QkvProjection, Rope};
use crate::decoder::{
    gguf_decoder_adapter, load_lm_head, DecoderLayer, DecoderModel, DecoderSpec, DecoderWeights,
};
use crate::loader::Loader;
use crate::tensor_source::TensorSource;
use lowbit_core::adapter::ProgressFn;
use lowbit_core::formats::gguf::{GgufFile, GgufValue};
use lowbit_core::ops::{Activation, Mask, NormKind, RopeStyle};
use lowbit_core::registry::AdapterRegistration;
use lowbit_core::{Backend, Error, QuantPlan, Result};
use std::sync::Arc;

/// Architectures this adapter loads (GGUF `general.architecture`).
const ARCHITECTURES: &[&str] = &["gemma3"];

/// Local (sliding-window) layers per global one when the file does not say (llama.cpp's
/// `load_swa_pattern(ml, 6)`: layers 5, 11, 17, … are global).
const DEFAULT_PATTERN: usize = 6;

/// RoPE base of the local layers when the file does not say (`rope.freq_base_swa`).
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Layers of Gemma 3 27B, whose attention scale is `1/√(dim/heads)` (its
/// `query_pre_attn_scalar`); every other size's is `1/√head_dim`. The GGUF does not carry the
/// scalar, so llama.cpp decides by size as well.
const LAYERS_27B: usize = 62;

/// The Gemma 3 adapter.
pub struct Gemma3Adapter;

inventory::submit! { AdapterRegistration(&Gemma3Adapter) }

gguf_decoder_adapter!(Gemma3Adapter, "gemma3", ARCHITECTURES, build_gguf);

/// Which layers attend over a sliding window, and how.
#[derive(Clone, Debug, PartialEq)]
struct LocalAttention {
    /// Keys a local layer's query sees (0: no sliding window, every layer global).
    window: usize,
    /// Per layer: whether it is local.
    is_local: Vec<bool>,
    /// RoPE base of the local layers (global ones use `rope.freq_base`).
    rope_base: f32,
}

impl LocalAttention {
    /// Reads `{arch}.attention.sliding_window`, `.sliding_window_pattern` (a period or one
    /// bool per layer) and `{arch}.rope.freq_base_swa`, with llama.cpp's defaults.
    ///
    /// Errors: `UNSUPPORTED_MODEL` for what this adapter does not compute (RoPE scaling, a final
    /// logit soft-cap); `MODEL_LOADING_FAILED` for a pattern of the wrong length.
    fn from_gguf(g: &GgufFile, spec: &DecoderSpec) -> Result<Self> {
        let arch = &spec.names.1;
        let n_layers = spec.hp.n_layers;
        let key = |k: &str| format!("{arch}.{k}");
        if let Some(f) = g.get_f32(&key("rope.scaling.factor")).filter(|&f| f != 1.0) {
            return Err(Error::unsupported(format!(
                "{arch}: RoPE scaling (factor {f}) is not supported"
            )));
        }
        if let Some(c) = g
            .get_f32(&key("final_logit_softcapping"))
            .filter(|&c| c != 0.0)
        {
            return Err(Error::unsupported(format!(
                "{arch}: a final logit soft-cap ({c}) is not supported"
            )));
        }
        let window = g.get_u64(&key("attention.sliding_window")).unwrap_or(0) as usize;
        let pattern_key = key("attention.sliding_window_pattern");
        let is_local = match g.get_array(&pattern_key) {
            Some(flags) => {
                let flags: Vec<bool> = flags
                    .iter()
                    .map(|v| matches!(v, GgufValue::Bool(true)))
                    .collect();
                if flags.len() != n_layers {
                    return Err(Error::model_loading(format!(
                        "{pattern_key} has {} entries for {n_layers} layers",
                        flags.len()
                    )));
                }
                flags
            }
            None => {
                let period = g
                    .get_u64(&pattern_key)
                    .map_or(DEFAULT_PATTERN, |p| p as usize);
                periodic_local_layers(n_layers, period)
            }
        };
        let is_local = is_local.into_iter().map(|l| l && window > 0).collect();
        Ok(LocalAttention {
            window,
            is_local,
            rope_base: g
                .get_f32(&key("rope.freq_base_swa"))
                .unwrap_or(DEFAULT_LOCAL_ROPE_BASE),
        })
    }
}

/// Which of `n_layers` layers are local when every `period`-th is global (llama.cpp's
/// `set_swa_pattern`: the last of each period; a period of 0 makes every layer local).
fn periodic_local_layers(n_layers: usize, period: usize) -> Vec<bool> {
    (0..n_layers)
        .map(|l| period == 0 || l % period < period - 1)
        .collect()
}

/// Loads every tensor of `g` and assembles the model.
fn build_gguf(
    src: &dyn TensorSource,
    g: &GgufFile,
    spec: DecoderSpec,
    plan: &QuantPlan,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<DecoderModel> {
    let local = LocalAttention::from_gguf(g, &spec)?;
    let (hp, tied) = (&spec.hp, spec.tied);
    let total = 1 + hp.n_layers * 13 + 1 + 1;
    let mut ld = Loader::new(src, &backend, progress, total);
    let (dim, kv_dim, ffn, head_dim) = (hp.dim, hp.kv_dim(), hp.ffn_dim, hp.head_dim);
    let heads = hp.heads();
    let rms = |weight, dim| Norm {
        kind: NormKind::Rms,
        weight,
        bias: None,
        dim,
        eps: hp.eps,
    };
    let scale = if hp.n_layers == LAYERS_27B {
        1.0 / ((dim / hp.n_heads) as f32).sqrt()
    } else {
        heads.scale()
    };
    let embedding = ld.matrix("token_embd.weight", hp.vocab, dim, plan.embedding)?;
    let mut layers = Vec::with_capacity(hp.n_layers);
    for (i, &is_local) in local.is_local.iter().enumerate() {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        let (att, ff) = (plan.attention, plan.feedforward);
        let qkv = QkvProjection::HeadNormed {
            wq: ld.matrix(&n("attn_q"), heads.q_dim(), dim, att)?,
            wk: ld.matrix(&n("attn_k"), kv_dim, dim, att)?,
            wv: ld.matrix(&n("attn_v"), kv_dim, dim, att)?,
            q_norm: rms(ld.vector(&n("attn_q_norm"), head_dim)?, head_dim),
            k_norm: rms(ld.vector(&n("attn_k_norm"), head_dim)?, head_dim),
        };
        let (theta, mask) = if is_local {
            let window = local.window;
            (local.rope_base, Mask::Window { window })
        } else {
            (hp.rope_theta, Mask::Causal)
        };
        let attn = DecoderAttention {
            norm: rms(ld.vector(&n("attn_norm"), dim)?, dim),
            qkv,
            wo: ld.matrix(&n("attn_output"), dim, heads.q_dim(), att)?,
            post_norm: Some(rms(ld.vector(&n("post_attention_norm"), dim)?, dim)),
            heads,
            rope: Rope {
                theta,
                // llama.cpp's LLAMA_ROPE_TYPE_NEOX for gemma3: q/k rows are not permuted.
                style: RopeStyle::Halves,
            },
            mask,
            scale,
        };
        let gate_up = [(n("ffn_gate"), ffn), (n("ffn_up"), ffn)];
        let ffn = GatedFfn {
            norm: rms(ld.vector(&n("ffn_norm"), dim)?, dim),
            post_norm: Some(rms(ld.vector(&n("post_ffw_norm"), dim)?, dim)),
            w_gate_up: ld.stacked(&gate_up, dim, ff)?,
            w_down: ld.matrix(&n("ffn_down"), dim, ffn, ff)?,
            act: Activation::GeluTanh,
            ffn_dim: ffn,
        };
        layers.push(DecoderLayer { attn, ffn });
    }
    let output_norm = rms(ld.vector("output_norm.weight", dim)?, dim);
    let lm_head = load_lm_head(&mut ld, tied, embedding, (hp.vocab, dim), plan)?;
    let totals = ld.totals();
    let per_layer = 2 * heads.q_dim() * dim + 2 * kv_dim * dim + 3 * ffn * dim + 4 * dim;
    let n_params =
        hp.vocab * dim * (1 + usize::from(!tied)) + hp.n_layers * (per_layer + 2 * head_dim) + dim;
    let weights = DecoderWeights {
        embedding,
        embed_scale: Some((dim as f32).sqrt()),
        layers,
        output_norm,
        lm_head,
    };
    Ok(DecoderModel::new(
        spec, n_params, backend, plan, totals, weights,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global() {
        // Gemma 3 270M: 18 layers, global attention on layers 5, 11 and 17.
        let local = periodic_local_layers(18, DEFAULT_PATTERN);
        let global: Vec<usize> = (0..18).filter(|&l| !local[l]).collect();
        assert_eq!(global, [5, 11, 17]);
        assert!(periodic_local_layers(4, 0).iter().all(|&l| l));
        assert_eq!(periodic_local_layers(3, 1), [false; 3]);
    }
}
