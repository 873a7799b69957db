//! LLaMA-family text decoders (LLaMA 2/3, SmolLM2, Mistral-style): grouped-query attention,
//! RoPE, RMSNorm, SwiGLU feed-forward, optionally tied embeddings.

use crate::blocks::{DecoderAttention, GatedFfn, Heads, Norm, Rope};
use crate::loader::Loader;
use crate::tensor_source::{GgufTensors, RandomTensors, StoredTensors, TensorSource};
use lowbit_core::adapter::{LoadContext, ProgressFn};
use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::ops::{Activation, NormKind, RopeStyle};
use lowbit_core::registry::AdapterRegistration;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{
    Backend, Error, LoadedModel, ModelAdapter, ModelSource, QuantPlan, Result, TextModelConfig,
};
use std::sync::{Arc, Mutex};

mod model;

use model::Layer;
pub use model::LlamaModel;

/// Architectures this adapter loads (GGUF `general.architecture`).
const ARCHITECTURES: &[&str] = &["llama", "mistral"];

/// The LLaMA-family adapter.
pub struct LlamaAdapter;

inventory::submit! { AdapterRegistration(&LlamaAdapter) }

/// Hyper-parameters read from the file.
#[derive(Clone, Debug)]
pub(crate) struct Hparams {
    pub(crate) n_layers: usize,
    pub(crate) dim: usize,
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) ffn_dim: usize,
    pub(crate) vocab: usize,
    pub(crate) context_length: usize,
    pub(crate) eps: f32,
    pub(crate) rope_theta: f32,
}

impl Hparams {
    fn from_gguf(g: &GgufFile, arch: &str) -> Result<Self> {
        let req = |k: &str| -> Result<usize> {
            g.get_u64(&format!("{arch}.{k}"))
                .map(|v| v as usize)
                .ok_or_else(|| Error::model_loading(format!("missing metadata `{arch}.{k}`")))
        };
        let dim = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = g
            .get_u64(&format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || dim % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::model_loading(format!(
                "inconsistent attention shape: dim {dim}, heads {n_heads}, kv heads {n_kv_heads}"
            )));
        }
        let vocab = match g.tensor_dims("token_embd.weight") {
            Some(d) if d.len() == 2 && d[0] as usize == dim => d[1] as usize,
            Some(d) => {
                return Err(Error::model_loading(format!(
                    "token_embd.weight has dims {d:?}, expected [{dim}, vocab]"
                )))
            }
            None => return Err(Error::model_loading("missing tensor token_embd.weight")),
        };
        Ok(Hparams {
            n_layers: req("block_count")?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads,
            ffn_dim: req("feed_forward_length")?,
            vocab,
            context_length: req("context_length")?,
            eps: g
                .get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: g
                .get_f32(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10_000.0),
        })
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

impl ModelAdapter for LlamaAdapter {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn supports(&self, source: &ModelSource) -> bool {
        // Only GGUF names (`blk.0.attn_q.weight`) are mapped so far.
        matches!(source, ModelSource::Gguf(_))
            && source
                .architecture()
                .is_some_and(|a| ARCHITECTURES.contains(&a.as_str()))
    }

    fn load(
        &self,
        source: &ModelSource,
        plan: &QuantPlan,
        backend: Arc<dyn Backend>,
        progress: &mut ProgressFn<'_>,
    ) -> Result<LoadedModel> {
        self.load_with(source, plan, backend, progress, &mut LoadContext::default())
    }

    fn load_with(
        &self,
        source: &ModelSource,
        plan: &QuantPlan,
        backend: Arc<dyn Backend>,
        progress: &mut ProgressFn<'_>,
        ctx: &mut LoadContext,
    ) -> Result<LoadedModel> {
        let ModelSource::Gguf(g) = source else {
            return Err(Error::unsupported(format!(
                "the llama adapter reads GGUF files, not {}",
                source.format_name()
            )));
        };
        let arch = source.architecture().unwrap_or_default();
        let hp = Hparams::from_gguf(g, &arch)?;
        let tokenizer = Tokenizer::from_gguf(g)?;
        let tied = g.tensor_dims("output.weight").is_none();
        let name = g.get_str("general.name").unwrap_or("unnamed").to_owned();
        let stored = StoredTensors {
            inner: &GgufTensors(g),
            ctx: std::cell::RefCell::new(ctx),
        };
        let model = build(
            &stored,
            hp,
            tied,
            tokenizer,
            (name, arch),
            plan,
            backend,
            progress,
        )?;
        Ok(LoadedModel::Text(Box::new(model)))
    }
}

/// Builds a model of shape `hp` with random weights (see [`crate::synthetic`]), its integer
/// matrices in a rotated basis when `rotation` is set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_random(
    hp: Hparams,
    tied: bool,
    tokenizer: Tokenizer,
    name: String,
    plan: &QuantPlan,
    rotation: bool,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<LlamaModel> {
    let names = (name, "llama".to_string());
    build(
        &RandomTensors { rotation },
        hp,
        tied,
        tokenizer,
        names,
        plan,
        backend,
        progress,
    )
}

/// Loads (or makes, for [`RandomTensors`]) every tensor and assembles the model.
#[allow(clippy::too_many_arguments)]
fn build(
    src: &dyn TensorSource,
    hp: Hparams,
    tied: bool,
    tokenizer: Tokenizer,
    (name, arch): (String, String),
    plan: &QuantPlan,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<LlamaModel> {
    let total = 2 + hp.n_layers * 9 + usize::from(!tied) + 1;
    let mut ld = Loader::new(src, &backend, progress, total);
    let (dim, kv_dim, ffn) = (hp.dim, hp.kv_dim(), hp.ffn_dim);
    let heads = Heads {
        n_heads: hp.n_heads,
        n_kv_heads: hp.n_kv_heads,
        head_dim: hp.head_dim,
    };
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
            wqkv: ld.stacked(&qkv, dim, att)?,
            wo: ld.matrix(&n("attn_output"), dim, heads.q_dim(), att)?,
            heads,
            rope: Rope {
                theta: hp.rope_theta,
                // GGUF's converter permutes q/k rows for adjacent pairs.
                style: RopeStyle::Adjacent,
            },
        };
        let ffn = GatedFfn {
            norm: rms(ld.vector(&n("ffn_norm"), dim)?),
            w_gate_up: ld.stacked(&gate_up, dim, ff)?,
            w_down: ld.matrix(&n("ffn_down"), dim, ffn, ff)?,
            act: Activation::Silu,
            ffn_dim: ffn,
        };
        layers.push(Layer { attn, ffn });
    }
    let output_norm = rms(ld.vector("output_norm.weight", dim)?);
    // A tied output projection shares the embedding's values; it is stored once per
    // precision: reuse the embedding upload when the plan gives both the same format.
    let lm_head = if !tied {
        ld.matrix("output.weight", hp.vocab, dim, plan.lm_head)?
    } else if plan.lm_head == plan.embedding {
        ld.tick("output (tied)");
        embedding
    } else {
        // Tied, but stored in its own precision: the embedding values again.
        ld.matrix("token_embd.weight", hp.vocab, dim, plan.lm_head)?
    };
    let totals = ld.totals();
    let n_params = hp.vocab * dim * (1 + usize::from(!tied))
        + hp.n_layers * (2 * dim * dim + 2 * kv_dim * dim + 3 * ffn * dim + 2 * dim)
        + dim;
    let config = TextModelConfig {
        name,
        architecture: arch,
        vocab_size: hp.vocab,
        context_length: hp.context_length,
        n_layers: hp.n_layers,
        dim,
        n_heads: hp.n_heads,
        n_kv_heads: hp.n_kv_heads,
        ffn_dim: ffn,
        n_params,
    };
    Ok(LlamaModel {
        hp,
        config,
        tokenizer,
        backend,
        embedding,
        layers,
        output_norm,
        lm_head,
        plan: *plan,
        totals,
        op_lists: Mutex::new(Vec::new()),
    })
}
