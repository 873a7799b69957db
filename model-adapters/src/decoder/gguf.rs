//! What every GGUF decoder family shares: the hyper-parameters under `{arch}.*`, the tokenizer,
//! the name, whether the output projection is tied, and the output projection itself.

use super::DecoderModel;
use crate::blocks::Heads;
use crate::loader::Loader;
use crate::tensor_source::{GgufTensors, StoredTensors, TensorSource};
use lowbit_core::adapter::LoadContext;
use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{Error, LoadedModel, ModelSource, QuantPlan, Result, WeightId};

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
    /// Reads `{arch}.*`: the head dimension is `attention.key_length` where the file has it
    /// (Gemma's 256 is not `dim / n_heads`), else `dim / n_heads`.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing key or an inconsistent shape.
    pub(crate) fn from_gguf(g: &GgufFile, arch: &str) -> Result<Self> {
        let opt = |k: &str| g.get_u64(&format!("{arch}.{k}")).map(|v| v as usize);
        let req = |k: &str| -> Result<usize> {
            opt(k).ok_or_else(|| Error::model_loading(format!("missing metadata `{arch}.{k}`")))
        };
        let dim = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = opt("attention.head_count_kv").unwrap_or(n_heads);
        let key_length = opt("attention.key_length");
        let head_dim = key_length.unwrap_or(dim / n_heads.max(1));
        let consistent = n_heads > 0
            && n_kv_heads > 0
            && n_heads % n_kv_heads == 0
            && (key_length.is_some() || dim % n_heads == 0)
            && head_dim > 0
            && head_dim % 2 == 0
            && opt("attention.value_length").is_none_or(|v| v == head_dim);
        if !consistent {
            return Err(Error::model_loading(format!(
                "inconsistent attention shape: dim {dim}, heads {n_heads}, kv heads {n_kv_heads}, \
                 key length {key_length:?}"
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
            head_dim,
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

    /// Values of a key (or value) row.
    pub(crate) fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The head layout.
    pub(crate) fn heads(&self) -> Heads {
        Heads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// What a decoder is besides its tensors.
pub(crate) struct DecoderSpec {
    /// Hyper-parameters.
    pub(crate) hp: Hparams,
    /// Whether the output projection is the embedding (no `output.weight`).
    pub(crate) tied: bool,
    /// The tokenizer.
    pub(crate) tokenizer: Tokenizer,
    /// Name (`general.name`) and architecture.
    pub(crate) names: (String, String),
}

/// Whether `source` is a GGUF file of one of `architectures` (only GGUF tensor names,
/// `blk.0.attn_q.weight`, are mapped so far).
pub(crate) fn is_gguf_of(source: &ModelSource, architectures: &[&str]) -> bool {
    matches!(source, ModelSource::Gguf(_))
        && source
            .architecture()
            .is_some_and(|a| architectures.contains(&a.as_str()))
}

/// Loads a GGUF decoder: reads what every family shares, then `build` assembles the family's
/// model from the file's tensors.
///
/// Errors: `UNSUPPORTED_MODEL` for a source that is not GGUF; whatever reading or `build` says.
pub(crate) fn load_gguf(
    adapter: &str,
    source: &ModelSource,
    ctx: &mut LoadContext,
    build: impl FnOnce(&dyn TensorSource, &GgufFile, DecoderSpec) -> Result<DecoderModel>,
) -> Result<LoadedModel> {
    let ModelSource::Gguf(g) = source else {
        return Err(Error::unsupported(format!(
            "the {adapter} adapter reads GGUF files, not {}",
            source.format_name()
        )));
    };
    let arch = source.architecture().unwrap_or_default();
    let spec = DecoderSpec {
        hp: Hparams::from_gguf(g, &arch)?,
        tied: g.tensor_dims("output.weight").is_none(),
        tokenizer: Tokenizer::from_gguf(g)?,
        names: (
            g.get_str("general.name").unwrap_or("unnamed").to_owned(),
            arch,
        ),
    };
    let stored = StoredTensors {
        inner: &GgufTensors(g),
        ctx: std::cell::RefCell::new(ctx),
    };
    Ok(LoadedModel::Text(Box::new(build(&stored, g, spec)?)))
}

/// Implements [`lowbit_core::ModelAdapter`] for a GGUF decoder family's adapter type: its
/// registry name, the `general.architecture`s it loads, and its builder
/// `fn(&dyn TensorSource, &GgufFile, DecoderSpec, &QuantPlan, Arc<dyn Backend>, &mut ProgressFn)
/// -> Result<DecoderModel>`.
macro_rules! gguf_decoder_adapter {
    ($adapter:ty, $name:literal, $architectures:expr, $build:path) => {
        impl lowbit_core::ModelAdapter for $adapter {
            fn name(&self) -> &'static str {
                $name
            }

            fn supports(&self, source: &lowbit_core::ModelSource) -> bool {
                $crate::decoder::is_gguf_of(source, $architectures)
            }

            fn load(
                &self,
                source: &lowbit_core::ModelSource,
                plan: &lowbit_core::QuantPlan,
                backend: std::sync::Arc<dyn lowbit_core::Backend>,
                progress: &mut lowbit_core::adapter::ProgressFn<'_>,
            ) -> lowbit_core::Result<lowbit_core::LoadedModel> {
                let mut ctx = lowbit_core::adapter::LoadContext::default();
                self.load_with(source, plan, backend, progress, &mut ctx)
            }

            fn load_with(
                &self,
                source: &lowbit_core::ModelSource,
                plan: &lowbit_core::QuantPlan,
                backend: std::sync::Arc<dyn lowbit_core::Backend>,
                progress: &mut lowbit_core::adapter::ProgressFn<'_>,
                ctx: &mut lowbit_core::adapter::LoadContext,
            ) -> lowbit_core::Result<lowbit_core::LoadedModel> {
                $crate::decoder::load_gguf($name, source, ctx, |src, file, spec| {
                    $build(src, file, spec, plan, backend, progress)
                })
            }
        }
    };
}
pub(crate) use gguf_decoder_adapter;

/// Loads the output projection: `output.weight`, or, tied, the embedding's values again (the
/// embedding upload itself when the plan gives both one format: stored once).
pub(crate) fn load_lm_head(
    ld: &mut Loader<'_, '_>,
    tied: bool,
    embedding: WeightId,
    (vocab, dim): (usize, usize),
    plan: &QuantPlan,
) -> Result<WeightId> {
    if !tied {
        ld.matrix("output.weight", vocab, dim, plan.lm_head)
    } else if plan.lm_head == plan.embedding {
        ld.tick("output (tied)");
        Ok(embedding)
    } else {
        ld.matrix("token_embd.weight", vocab, dim, plan.lm_head)
    }
}
