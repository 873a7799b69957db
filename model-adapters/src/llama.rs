//! LLaMA-family text decoders (LLaMA 2/3, SmolLM2, Mistral-style): grouped-query attention,
//! RoPE, RMSNorm, SwiGLU feed-forward, optionally tied embeddings.

use crate::blocks::{DecoderAttention, GatedFfn, Norm, QkvProjection, Rope};
use crate::decoder::{
    gguf_decoder_adapter, load_lm_head, DecoderLayer, DecoderModel, DecoderSpec, DecoderWeights,
    Hparams,
};
use crate::loader::Loader;
use crate::tensor_source::{RandomTensors, TensorSource};
use lowbit_core::adapter::ProgressFn;
use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::ops::{Activation, Mask, NormKind, RopeStyle};
use lowbit_core::registry::AdapterRegistration;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{Backend, QuantPlan, Result};
use std::sync::Arc;

/// Architectures this adapter loads (GGUF `general.architecture`).
const ARCHITECTURES: &[&str] = &["llama", "mistral"];

/// The LLaMA-family adapter.
pub struct LlamaAdapter;

inventory::submit! { AdapterRegistration(&LlamaAdapter) }

gguf_decoder_adapter!(LlamaAdapter, "llama", ARCHITECTURES, build_gguf);

/// Builds a model of shape `hp` with random weights (see [`crate::synthetic`]), its integer
/// matrices stored as `methods` says (rotated basis, learned grid).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_random(
    hp: Hparams,
    tied: bool,
    tokenizer: Tokenizer,
    name: String,
    plan: &QuantPlan,
    methods: RandomTensors,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<DecoderModel> {
    let spec = DecoderSpec {
        hp,
        tied,
        tokenizer,
        names: (name, "llama".to_string()),
    };
    build(&methods, spec, plan, backend, progress)
}

/// Loads a GGUF file's tensors and assembles the model.
fn build_gguf(
    src: &dyn TensorSource,
    _: &GgufFile,
    spec: DecoderSpec,
    plan: &QuantPlan,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<DecoderModel> {
    build(src, spec, plan, backend, progress)
}

/// Loads (or makes, for [`RandomTensors`]) every tensor and assembles the model.
fn build(
    src: &dyn TensorSource,
    spec: DecoderSpec,
    plan: &QuantPlan,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<DecoderModel> {
    let (hp, tied) = (&spec.hp, spec.tied);
    let total = 2 + hp.n_layers * 9 + usize::from(!tied) + 1;
    let mut ld = Loader::new(src, &backend, progress, total);
    let (dim, kv_dim, ffn) = (hp.dim, hp.kv_dim(), hp.ffn_dim);
    let heads = hp.heads();
    let rms = |weight| Norm {
        kind: NormKind::Rms,
        weight,
        bias: None,
        dim,
        eps: hp.eps,
    };
    let embedding = ld.matrix("token_embd.weight", hp.vocab, dim, plan.embedding)?;
    let mut layers = Vec::with_capacity(hp.n_layers);
    for i in 0..hp.n_layers {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        let (att, ff) = (plan.attention, plan.feedforward);
        let qkv = [
            (n("attn_q"), heads.q_dim()),
            (n("attn_k"), kv_dim),
            (n("attn_v"), kv_dim),
        ];
        let gate_up = [(n("ffn_gate"), ffn), (n("ffn_up"), ffn)];
        let attn = DecoderAttention {
            norm: rms(ld.vector(&n("attn_norm"), dim)?),
            qkv: QkvProjection::Stacked(ld.stacked(&qkv, dim, att)?),
            wo: ld.matrix(&n("attn_output"), dim, heads.q_dim(), att)?,
            post_norm: None,
            heads,
            rope: Rope {
                theta: hp.rope_theta,
                // GGUF's converter permutes q/k rows for adjacent pairs.
                style: RopeStyle::Adjacent,
            },
            mask: Mask::Causal,
            scale: heads.scale(),
        };
        let ffn = GatedFfn {
            norm: rms(ld.vector(&n("ffn_norm"), dim)?),
            post_norm: None,
            w_gate_up: ld.stacked(&gate_up, dim, ff)?,
            w_down: ld.matrix(&n("ffn_down"), dim, ffn, ff)?,
            act: Activation::Silu,
            ffn_dim: ffn,
        };
        layers.push(DecoderLayer { attn, ffn });
    }
    let output_norm = rms(ld.vector("output_norm.weight", dim)?);
    let lm_head = load_lm_head(&mut ld, tied, embedding, (hp.vocab, dim), plan)?;
    let totals = ld.totals();
    let n_params = hp.vocab * dim * (1 + usize::from(!tied))
        + hp.n_layers * (2 * heads.q_dim() * dim + 2 * kv_dim * dim + 3 * ffn * dim + 2 * dim)
        + dim;
    let weights = DecoderWeights {
        embedding,
        embed_scale: None,
        layers,
        output_norm,
        lm_head,
    };
    Ok(DecoderModel::new(
        spec, n_params, backend, plan, totals, weights,
    ))
}
