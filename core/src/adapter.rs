//! The [`ModelAdapter`] trait (recognise a model file, load it onto a backend) and the
//! [`TextModel`] it returns for text decoders.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::future::{LocalBoxFuture, MaybeSend, MaybeSync};
use crate::kv::KvCache;
use crate::quant::{QuantSpec, Scheme};
use crate::tokenizer::Tokenizer;
use std::sync::Arc;

pub use crate::model_source::ModelSource;

/// Storage of one weight tensor on the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightPrecision {
    /// Dense f32.
    F32,
    /// Dense f16.
    F16,
    /// Packed low-bit.
    Quant(QuantSpec),
}

impl WeightPrecision {
    /// Short name: `fp32`, `fp16`, `int4-g128-sym`, ...
    pub fn label(&self) -> String {
        match self {
            WeightPrecision::F32 => "fp32".into(),
            WeightPrecision::F16 => "fp16".into(),
            WeightPrecision::Quant(s) => format!(
                "int{}-g{}-{}",
                s.bits,
                s.group_size,
                match s.scheme {
                    crate::quant::Scheme::Symmetric => "sym",
                    crate::quant::Scheme::Asymmetric => "asym",
                }
            ),
        }
    }

    /// The precision a [`WeightPrecision::label`] names (`fp32`, `fp16`, `int4-g32-asym`).
    ///
    /// Errors: `INVALID_CONFIG` for anything else.
    pub fn parse_label(label: &str) -> Result<Self> {
        let bad = || Error::invalid_config(format!("`{label}` is not a weight precision"));
        match label {
            "fp32" => return Ok(WeightPrecision::F32),
            "fp16" => return Ok(WeightPrecision::F16),
            _ => {}
        }
        let mut it = label.split('-');
        let bits = it
            .next()
            .and_then(|b| b.strip_prefix("int"))
            .ok_or_else(bad)?;
        let group = it
            .next()
            .and_then(|g| g.strip_prefix('g'))
            .ok_or_else(bad)?;
        let scheme = match it.next() {
            Some("sym") => Scheme::Symmetric,
            Some("asym") => Scheme::Asymmetric,
            _ => return Err(bad()),
        };
        if it.next().is_some() {
            return Err(bad());
        }
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        let group: usize = group.parse().map_err(|_| bad())?;
        Self::from_bits(bits, group, scheme)
    }

    /// The precision of `bits` per weight: 32 and 16 are dense floats, 2, 3, 4, 5, 6 and 8 packed
    /// integers in groups of `group_size` (the bit widths of `quantization.layers.*`).
    ///
    /// Errors: `INVALID_CONFIG` for any other width or a group size that is not a positive
    /// multiple of 32.
    pub fn from_bits(bits: u32, group_size: usize, scheme: Scheme) -> Result<Self> {
        Ok(match bits {
            32 => WeightPrecision::F32,
            16 => WeightPrecision::F16,
            b => WeightPrecision::Quant(QuantSpec::new(
                u8::try_from(b).map_err(|_| {
                    Error::invalid_config(format!(
                        "weight bits must be 2, 3, 4, 5, 6, 8, 16 or 32, got {b}"
                    ))
                })?,
                group_size,
                scheme,
            )?),
        })
    }

    /// Bits per stored value (16 or 32 for dense floats).
    pub fn bits(&self) -> u32 {
        match self {
            WeightPrecision::F32 => 32,
            WeightPrecision::F16 => 16,
            WeightPrecision::Quant(s) => s.bits.into(),
        }
    }
}

/// The names of `quantization.method`: a uniform width (`fp32` … `int2`) for the attention and
/// feed-forward matrices, or `mixed` (bits per role from `quantization.layers`). The one table
/// of precision names: the config schema, the CLI and the plan all read it.
pub const METHODS: &[&str] = &[
    "fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2", "mixed",
];

/// The bits of a uniform method name (`int4` → 4, `fp16` → 16); `None` for `mixed` and
/// unknown names.
pub fn method_bits(method: &str) -> Option<u32> {
    if !METHODS.contains(&method) {
        return None;
    }
    method
        .strip_prefix("int")
        .or_else(|| method.strip_prefix("fp"))?
        .parse()
        .ok()
}

/// The precision of every weight role of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantPlan {
    /// Attention matrices (q, k, v and the output projection).
    pub attention: WeightPrecision,
    /// Feed-forward matrices (gate, up, down).
    pub feedforward: WeightPrecision,
    /// The token-embedding table.
    pub embedding: WeightPrecision,
    /// The output projection (the embedding table when tied).
    pub lm_head: WeightPrecision,
}

impl QuantPlan {
    /// Every role at `p`.
    pub fn uniform(p: WeightPrecision) -> Self {
        QuantPlan {
            attention: p,
            feedforward: p,
            embedding: p,
            lm_head: p,
        }
    }

    /// The plan of a uniform `quantization.method` (`fp32`, `fp16`, `int8`, `int4`, `int3`,
    /// `int2`): attention and feed-forward matrices at that width; the embedding table and the
    /// output projection at 8 bits when the width is below 8 (the output projection is the most
    /// sensitive matrix; llama.cpp likewise keeps it at 6–8 bits).
    ///
    /// Errors: `INVALID_CONFIG` for an unknown name, for `mixed` (whose bits are per role) and
    /// for a bad group size.
    pub fn for_method(method: &str, group_size: usize, scheme: Scheme) -> Result<Self> {
        let bits = method_bits(method).ok_or_else(|| {
            Error::invalid_config(format!(
                "unknown uniform quantization `{method}`; expected one of {}",
                METHODS
                    .iter()
                    .filter(|m| method_bits(m).is_some())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let layers = WeightPrecision::from_bits(bits, group_size, scheme)?;
        if bits >= 8 {
            return Ok(QuantPlan::uniform(layers));
        }
        let edge = WeightPrecision::from_bits(8, group_size, scheme)?;
        Ok(QuantPlan {
            attention: layers,
            feedforward: layers,
            embedding: edge,
            lm_head: edge,
        })
    }

    /// The `quantization.method` name this plan answers to: the uniform name whose
    /// [`QuantPlan::for_method`] plan has the same bits per role, else `mixed`.
    pub fn method(&self) -> &'static str {
        let bits =
            |p: &QuantPlan| [p.attention, p.feedforward, p.embedding, p.lm_head].map(|w| w.bits());
        let (group, scheme) = self.group_scheme().unwrap_or((32, Scheme::Symmetric));
        METHODS
            .iter()
            .find(|name| {
                QuantPlan::for_method(name, group, scheme).is_ok_and(|p| bits(&p) == bits(self))
            })
            .map_or("mixed", |name| name)
    }

    /// Group size and scheme of the attention matrices (those of every quantized role in a
    /// plan made from a configuration); `None` when they are dense floats.
    pub fn group_scheme(&self) -> Option<(usize, Scheme)> {
        match self.attention {
            WeightPrecision::Quant(s) => Some((s.group_size, s.scheme)),
            _ => None,
        }
    }

    /// A short description: the precision label when attention and feed-forward matrices
    /// share it (`int4-g32-asym`), else both (`attn int4-g32-asym, ffn int2-g32-asym`).
    pub fn label(&self) -> String {
        if self.attention == self.feedforward {
            self.attention.label()
        } else {
            format!(
                "attn {}, ffn {}",
                self.attention.label(),
                self.feedforward.label()
            )
        }
    }
}

/// Load progress reported by adapters: `(done, total, what)`.
pub type ProgressFn<'a> = dyn FnMut(usize, usize, &str) + 'a;

/// A loaded model, by what it computes.
pub enum LoadedModel {
    /// A text decoder: tokens in, next-token logits out.
    Text(Box<dyn TextModel>),
    /// An encoder: tokens (or patches, or audio frames) in, hidden states and a pooled
    /// embedding out.
    Encoder(Box<dyn EncoderModel>),
    /// An encoder-decoder (speech recognition, translation): an encoder feeding a text decoder
    /// through cross-attention.
    EncoderDecoder(Box<dyn EncoderDecoderModel>),
}

impl LoadedModel {
    /// What kind of model it is (`text decoder`, `encoder`, `encoder-decoder`).
    pub fn kind(&self) -> &'static str {
        match self {
            LoadedModel::Text(_) => "text decoder",
            LoadedModel::Encoder(_) => "encoder",
            LoadedModel::EncoderDecoder(_) => "encoder-decoder",
        }
    }

    /// The text decoder, or `MODEL_LOADING_FAILED` naming what the model is instead.
    pub fn into_text(self) -> Result<Box<dyn TextModel>> {
        match self {
            LoadedModel::Text(m) => Ok(m),
            other => Err(Error::model_loading(format!(
                "this model is an {}, not a text decoder: it cannot generate text",
                other.kind()
            ))),
        }
    }
}

/// Recognises model files and loads them onto a [`Backend`].
pub trait ModelAdapter: Send + Sync {
    /// Registry name, e.g. `llama`.
    fn name(&self) -> &'static str;
    /// Whether this adapter can load `source`.
    fn supports(&self, source: &ModelSource) -> bool;
    /// Loads the model, quantizing its weights per `plan`.
    fn load(
        &self,
        source: &ModelSource,
        plan: &QuantPlan,
        backend: Arc<dyn Backend>,
        progress: &mut ProgressFn<'_>,
    ) -> Result<LoadedModel>;

    /// As [`ModelAdapter::load`], with `ctx`: each weight matrix is taken from `ctx.store`
    /// when it holds one of that name, shape, precision and method (quantized by an earlier load
    /// of the same file and plan), else made by `ctx.quantizer` and noted in the store; each
    /// upload's tensor names are listed in `ctx.uploads`. Adapters that do not support these
    /// just load.
    fn load_with(
        &self,
        source: &ModelSource,
        plan: &QuantPlan,
        backend: Arc<dyn Backend>,
        progress: &mut ProgressFn<'_>,
        ctx: &mut LoadContext,
    ) -> Result<LoadedModel> {
        let _ = ctx;
        self.load(source, plan, backend, progress)
    }
}

/// What a load may reuse and how it quantizes (see [`ModelAdapter::load_with`]), and what it
/// reports back.
#[derive(Default)]
pub struct LoadContext {
    /// Matrices of an earlier load to reuse, and those this load makes.
    pub store: crate::quant::WeightStore,
    /// How matrices are quantized.
    pub quantizer: crate::quant::Quantizer,
    /// Each weight upload with the tensor names it holds (several when stacked), in order.
    pub uploads: Vec<(crate::backend::WeightId, Vec<String>)>,
}

/// Hyper-parameters of an encoder that callers need.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    /// Model name.
    pub name: String,
    /// Architecture (`bert`, `vit`, …).
    pub architecture: String,
    /// Hidden size (values per output row).
    pub dim: usize,
    /// Size of the pooled embedding.
    pub embedding_dim: usize,
    /// Longest input in rows (tokens, patches or frames).
    pub max_rows: usize,
    /// Transformer blocks.
    pub n_layers: usize,
}

/// A loaded encoder.
pub trait EncoderModel: MaybeSend + MaybeSync {
    /// Hyper-parameters.
    fn config(&self) -> &EncoderConfig;
    /// The model's tokenizer, for text encoders.
    fn tokenizer(&self) -> Option<&Tokenizer>;
    /// Hidden states of the last layer for `tokens`: `tokens.len() × dim` values.
    fn encode<'a>(&'a self, tokens: &'a [u32]) -> LocalBoxFuture<'a, Result<Vec<f32>>>;
    /// The pooled (and, where the model says so, normalised) embedding of `tokens`.
    fn embed<'a>(&'a self, tokens: &'a [u32]) -> LocalBoxFuture<'a, Result<Vec<f32>>>;
    /// Bytes of weights on the backend.
    fn weight_bytes(&self) -> usize;
}

/// A loaded encoder-decoder: the encoder runs once per input, the decoder attends to its
/// states through cross-attention while it generates.
pub trait EncoderDecoderModel: MaybeSend + MaybeSync {
    /// The decoder's hyper-parameters (vocabulary, layers).
    fn config(&self) -> &TextModelConfig;
    /// The decoder's tokenizer.
    fn tokenizer(&self) -> &Tokenizer;
    /// Encodes `input` (log-mel frames, `n_frames × n_mels` values) and returns a decoder cache
    /// for up to `max_seq` tokens whose cross-attention views hold the encoder states.
    fn encode<'a>(
        &'a self,
        input: &'a [f32],
        max_seq: usize,
    ) -> LocalBoxFuture<'a, Result<KvCache>>;
    /// Runs decoder `tokens` at positions `cache.pos..` and returns the last row's logits.
    fn decode<'a>(
        &'a self,
        cache: &'a mut KvCache,
        tokens: &'a [u32],
    ) -> LocalBoxFuture<'a, Result<Vec<f32>>>;
    /// Bytes of weights on the backend.
    fn weight_bytes(&self) -> usize;
}

/// Hyper-parameters of a text decoder that callers need.
#[derive(Clone, Debug)]
pub struct TextModelConfig {
    /// Model name from the file.
    pub name: String,
    /// Architecture (`llama`).
    pub architecture: String,
    /// Vocabulary size (logits per token).
    pub vocab_size: usize,
    /// Trained context length.
    pub context_length: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Feed-forward hidden size.
    pub ffn_dim: usize,
    /// Parameters in the weight matrices and vectors.
    pub n_params: usize,
}

/// Which rows of logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's row (generation).
    Last,
    /// One row per input token (perplexity).
    All,
}

/// A loaded text decoder. Its calls are futures (they await device reads); native callers
/// wait at their top level with [`crate::future::block_on`].
pub trait TextModel: MaybeSend + MaybeSync {
    /// Hyper-parameters.
    fn config(&self) -> &TextModelConfig;
    /// The model's tokenizer.
    fn tokenizer(&self) -> &Tokenizer;
    /// A fresh cache for up to `max_seq` tokens (f32 keys and values).
    fn new_cache(&self, max_seq: usize) -> Result<KvCache>;
    /// A fresh cache for up to `max_seq` tokens kept as `kv` says (`KvFormat::F32`, or
    /// quantized rows with full-precision sinks and a recent window).
    ///
    /// Errors with `UNSUPPORTED` where the model or its backend cannot keep that format.
    fn new_cache_as(&self, max_seq: usize, kv: crate::kv::KvFormat) -> Result<KvCache> {
        if kv == crate::kv::KvFormat::F32 {
            return self.new_cache(max_seq);
        }
        Err(crate::error::Error::unsupported(format!(
            "{} keeps its KV cache in f32 only; a {} cache was asked",
            self.config().name,
            kv.dtype.name()
        )))
    }
    /// Runs `tokens` at positions `cache.pos..`, appends them to the cache, returns logits
    /// (`vocab_size` per returned row).
    fn forward<'a>(
        &'a self,
        cache: &'a mut KvCache,
        tokens: &'a [u32],
        logits: Logits,
    ) -> LocalBoxFuture<'a, Result<Vec<f32>>>;
    /// One decode step for several sequences at once: `tokens[i]` runs at position
    /// `caches[i].pos` of its own cache. Returns one row of logits per sequence. Adapters
    /// override it to share every weight read across the batch (continuous batching); this
    /// default runs the sequences one after another.
    fn forward_batch<'a>(
        &'a self,
        caches: &'a mut [&mut KvCache],
        tokens: &'a [u32],
    ) -> LocalBoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            if caches.len() != tokens.len() {
                return Err(Error::invalid_config(format!(
                    "forward_batch: {} caches for {} tokens",
                    caches.len(),
                    tokens.len()
                )));
            }
            let mut out = Vec::with_capacity(tokens.len());
            for (c, t) in caches.iter_mut().zip(tokens) {
                out.push(
                    self.forward(c, std::slice::from_ref(t), Logits::Last)
                        .await?,
                );
            }
            Ok(out)
        })
    }
    /// Greedy decoding: feeds `first` at position `cache.pos`, then each step's most likely
    /// token to the next step, and hands every selected token to `on_token` until it returns
    /// `false` or `max_steps` tokens were selected. The cache advances by one position per
    /// token fed (a token `on_token` refused is not fed). Selects exactly the tokens that
    /// [`TextModel::forward`] plus [`crate::generate::argmax`] would; adapters override it to
    /// select on the device and record step `k + 1` while the device runs step `k`. This
    /// default runs the steps one after another.
    fn decode_greedy<'a>(
        &'a self,
        cache: &'a mut KvCache,
        first: u32,
        max_steps: usize,
        on_token: &'a mut dyn FnMut(u32) -> bool,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut tok = first;
            for _ in 0..max_steps {
                let logits = self.forward(cache, &[tok], Logits::Last).await?;
                tok = crate::generate::argmax(&logits);
                if !on_token(tok) {
                    break;
                }
            }
            Ok(())
        })
    }
    /// Bytes of weights on the backend.
    fn weight_bytes(&self) -> usize;
    /// Real bits per weight over all weight matrices, scales included.
    fn bits_per_weight(&self) -> f64;
    /// The precision plan the weights were loaded with.
    fn plan(&self) -> QuantPlan;
}

/// Runs every kernel `model` uses once, so none compiles during a request: a two-token prefill
/// and a one-token decode step on a scratch cache (the tiled and the vector paths, attention
/// in both modes).
pub async fn compile_kernels(model: &dyn TextModel) -> Result<()> {
    let tok = model.tokenizer().bos_id().unwrap_or(0);
    let mut cache = model.new_cache(4)?;
    model.forward(&mut cache, &[tok, tok], Logits::Last).await?;
    model.forward(&mut cache, &[tok], Logits::Last).await?;
    Ok(())
}
