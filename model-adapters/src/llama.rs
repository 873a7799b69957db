//! LLaMA-family text decoders (LLaMA 2/3, SmolLM2, Mistral-style): grouped-query attention,
//! RoPE, RMSNorm, SwiGLU feed-forward, optionally tied embeddings.

use crate::blocks::{
    record_lm_head, DecoderAttention, DecoderAttentionBuffers, GatedFfn, GatedFfnBuffers, Heads,
    Norm, Rope,
};
use crate::loader::{Loader, WeightTotals};
use crate::tensor_source::TensorSource;
use lowbit_core::adapter::ProgressFn;
use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::future::LocalBoxFuture;
use lowbit_core::ops::{Activation, NormKind, RopeStyle, TokenIds};
use lowbit_core::registry::AdapterRegistration;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{
    Backend, BufferId, DType, Error, KvCache, KvLayout, LoadedModel, Logits, ModelAdapter,
    ModelSource, Op, QuantPlan, ReadFuture, Result, TextModel, TextModelConfig, WeightId,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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

/// One decoder block: the q, k and v projections are stored stacked as one matrix (and gate
/// and up likewise), so each norm is followed by one matmul instead of three (two): the plan
/// gives every projection of a layer the same format, so stacking is exact.
struct Layer {
    attn: DecoderAttention,
    ffn: GatedFfn,
}

/// A loaded LLaMA-family model.
pub struct LlamaModel {
    hp: Hparams,
    config: TextModelConfig,
    tokenizer: Tokenizer,
    backend: Arc<dyn Backend>,
    embedding: WeightId,
    layers: Vec<Layer>,
    output_norm: Norm,
    lm_head: WeightId,
    plan: QuantPlan,
    totals: WeightTotals,
    /// Op lists kept for reuse, so recording a step allocates nothing once warm (one per
    /// caller recording at the same time).
    op_lists: Mutex<Vec<Vec<Op>>>,
}

impl ModelAdapter for LlamaAdapter {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn supports(&self, source: &ModelSource) -> bool {
        source
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
        let ModelSource::Gguf(g) = source;
        let arch = source.architecture().unwrap_or_default();
        let hp = Hparams::from_gguf(g, &arch)?;
        let tokenizer = Tokenizer::from_gguf(g)?;
        let tied = g.tensor_dims("output.weight").is_none();
        let name = g.get_str("general.name").unwrap_or("unnamed").to_owned();
        let model = build(
            TensorSource::Gguf(g),
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

/// Builds a model of shape `hp` with random weights (see [`crate::synthetic`]).
pub(crate) fn build_random(
    hp: Hparams,
    tied: bool,
    tokenizer: Tokenizer,
    name: String,
    plan: &QuantPlan,
    backend: Arc<dyn Backend>,
    progress: &mut ProgressFn<'_>,
) -> Result<LlamaModel> {
    let names = (name, "llama".to_string());
    build(
        TensorSource::Random,
        hp,
        tied,
        tokenizer,
        names,
        plan,
        backend,
        progress,
    )
}

/// Loads (or makes, for [`TensorSource::Random`]) every tensor and assembles the model.
#[allow(clippy::too_many_arguments)]
fn build(
    src: TensorSource<'_>,
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

/// Indices into `KvCache::scratch`.
/// Residual stream (an ordinary buffer: it carries values from one `run` to the next).
const S_X: usize = 0;
/// Normalised rows.
const S_H: usize = 1;
/// Rotated queries.
const S_Q: usize = 2;
/// Fused q|k|v projection.
const S_QKV: usize = 3;
/// Attention output.
const S_ATT: usize = 4;
/// Fused gate|up projection.
const S_GATE_UP: usize = 5;
/// SwiGLU output.
const S_FF: usize = 6;
/// Logits (an ordinary buffer: read back).
const S_LOGITS: usize = 7;
/// Two token-id slots of device-side greedy decoding (f32 values; an ordinary buffer).
const S_TOK: usize = 8;
/// One query row of batched decoding (attention reads whole buffers).
const S_ROW_Q: usize = 9;
/// One attention-output row of batched decoding.
const S_ROW_ATT: usize = 10;
/// Scratch buffers per cache.
const N_SCRATCH: usize = 11;

/// The scratch buffers of one call.
type Scratch = [BufferId; N_SCRATCH];

impl LlamaModel {
    /// Records with `record` into a reused op list and runs it as one [`Backend::run`] call.
    fn run(&self, record: impl FnOnce(&mut Vec<Op>) -> Result<()>) -> Result<()> {
        let mut ops = self
            .op_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        ops.clear();
        let result = record(&mut ops).and_then(|()| self.backend.run(&ops));
        ops.clear();
        self.op_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ops);
        result
    }

    /// Errors with `INVALID_CONFIG` naming the first id of `tokens` outside the vocabulary.
    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.hp.vocab) {
            Some(t) => Err(Error::invalid_config(format!(
                "token id {t} is outside the vocabulary ({})",
                self.hp.vocab
            ))),
            None => Ok(()),
        }
    }

    fn attention_buffers(s: &Scratch) -> DecoderAttentionBuffers {
        DecoderAttentionBuffers {
            x: s[S_X],
            h: s[S_H],
            qkv: s[S_QKV],
            q: s[S_Q],
            att: s[S_ATT],
        }
    }

    fn ffn_buffers(s: &Scratch) -> GatedFfnBuffers {
        GatedFfnBuffers {
            x: s[S_X],
            h: s[S_H],
            gate_up: s[S_GATE_UP],
            ff: s[S_FF],
        }
    }

    /// Records every decoder block over the `n` embedded rows in `s[S_X]`, at positions
    /// `pos0 ..` of `cache` (the caller advances `cache.pos`).
    fn record_layers(
        &self,
        ops: &mut Vec<Op>,
        cache: &KvCache,
        s: &Scratch,
        n: usize,
        pos0: usize,
    ) -> Result<()> {
        let (att, ffn) = (Self::attention_buffers(s), Self::ffn_buffers(s));
        for (l, layer) in self.layers.iter().enumerate() {
            layer.attn.record(ops, &att, cache.layer(l)?, n, pos0);
            layer.ffn.record(ops, &ffn, n);
        }
        Ok(())
    }

    /// Records and runs greedy decode step `k` of [`TextModel::decode_greedy`] at position
    /// `pos` as one op list: the token id comes from slot `k % 2` of `s[S_TOK]`, the selected
    /// one goes to the other slot, whose read is returned (started, not awaited). Every step
    /// records the same ops over the same buffers; only the position and the slots change.
    fn greedy_step(
        &self,
        cache: &KvCache,
        s: &Scratch,
        k: usize,
        pos: usize,
    ) -> Result<ReadFuture> {
        let (src, dst) = (k % 2, (k + 1) % 2);
        self.run(|ops| {
            ops.push(Op::Embed {
                table: self.embedding,
                ids: TokenIds::Device {
                    buf: s[S_TOK],
                    offset: src,
                    n: 1,
                },
                out: s[S_X],
            });
            self.record_layers(ops, cache, s, 1, pos)?;
            record_lm_head(
                ops,
                &self.output_norm,
                self.lm_head,
                s[S_X],
                s[S_H],
                s[S_LOGITS],
                1,
            );
            ops.push(Op::Argmax {
                x: s[S_LOGITS],
                len: self.hp.vocab,
                out: s[S_TOK],
                out_offset: dst,
            });
            Ok(())
        })?;
        Ok(self.backend.read(s[S_TOK], dst, 1))
    }

    /// The scratch buffers of `cache`, allocated for at least `n` rows.
    ///
    /// Errors with `INVALID_CONFIG` for a cache made by another model.
    fn scratch(&self, cache: &mut KvCache, n: usize) -> Result<Scratch> {
        let fits = cache.n_layers() == self.hp.n_layers
            && (self.hp.n_layers == 0 || cache.layer(0)?.layout.row_len() == self.hp.kv_dim());
        if !fits {
            return Err(Error::invalid_config(
                "the KV cache was made for another model",
            ));
        }
        if cache.scratch_rows < n {
            self.alloc_scratch(cache, n)?;
        }
        cache.scratch[..]
            .try_into()
            .map_err(|_| Error::invalid_config("KV cache scratch buffers of another model"))
    }

    /// (Re)allocates the scratch buffers of `cache` for `n` token rows (logits included).
    fn alloc_scratch(&self, cache: &mut KvCache, n: usize) -> Result<()> {
        let hp = &self.hp;
        let b = &self.backend;
        let q_dim = hp.n_heads * hp.head_dim;
        // (values, whether the buffer carries values across runs or to the host)
        let sizes: [(usize, bool); N_SCRATCH] = [
            (n * hp.dim, true),
            (n * hp.dim, false),
            (n * q_dim.max(hp.dim), false),
            (n * (q_dim + 2 * hp.kv_dim()), false),
            (n * q_dim, false),
            (n * 2 * hp.ffn_dim, false),
            (n * hp.ffn_dim, false),
            (n * hp.vocab, true),
            (2, true),
            (q_dim, false),
            (q_dim, false),
        ];
        let mut bufs = Vec::with_capacity(sizes.len());
        for (len, kept) in sizes {
            let made = if kept {
                b.alloc(DType::F32, len)
            } else {
                b.alloc_scratch(len)
            };
            match made {
                Ok(id) => bufs.push(id),
                Err(e) => {
                    for id in bufs {
                        b.free(id);
                    }
                    return Err(e);
                }
            }
        }
        cache.set_scratch(bufs, n);
        Ok(())
    }
}

impl TextModel for LlamaModel {
    fn config(&self) -> &TextModelConfig {
        &self.config
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn new_cache(&self, max_seq: usize) -> Result<KvCache> {
        let layout = KvLayout {
            n_kv_heads: self.hp.n_kv_heads,
            head_dim: self.hp.head_dim,
            rows: max_seq,
            dtype: DType::F32,
        };
        KvCache::new(self.backend.clone(), self.hp.n_layers, layout)
    }

    fn forward<'a>(
        &'a self,
        cache: &'a mut KvCache,
        tokens: &'a [u32],
        logits: Logits,
    ) -> LocalBoxFuture<'a, Result<Vec<f32>>> {
        Box::pin(async move {
            let n = tokens.len();
            if n == 0 {
                return Ok(Vec::new());
            }
            cache.ensure_room(n)?;
            self.check_tokens(tokens)?;
            let s = self.scratch(cache, n)?;
            let (dim, vocab) = (self.hp.dim, self.hp.vocab);
            let rows = match logits {
                Logits::All => n,
                Logits::Last => 1,
            };
            self.run(|ops| {
                ops.push(Op::Embed {
                    table: self.embedding,
                    ids: TokenIds::Host(tokens.to_vec()),
                    out: s[S_X],
                });
                self.record_layers(ops, cache, &s, n, cache.pos)?;
                // `Logits::Last` normalises and projects only the last row.
                let last = if rows == n {
                    s[S_X]
                } else {
                    ops.push(Op::Copy {
                        src: s[S_X],
                        src_offset: (n - 1) * dim,
                        dst: s[S_Q],
                        dst_offset: 0,
                        len: dim,
                    });
                    s[S_Q]
                };
                let (w, h, out) = (self.lm_head, s[S_H], s[S_LOGITS]);
                record_lm_head(ops, &self.output_norm, w, last, h, out, rows);
                Ok(())
            })?;
            let out = self.backend.read(s[S_LOGITS], 0, rows * vocab).await?;
            cache.pos += n;
            Ok(out)
        })
    }

    fn forward_batch<'a>(
        &'a self,
        caches: &'a mut [&mut KvCache],
        tokens: &'a [u32],
    ) -> LocalBoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            let n = tokens.len();
            if caches.len() != n {
                return Err(Error::invalid_config(format!(
                    "forward_batch: {} caches for {n} tokens",
                    caches.len()
                )));
            }
            if n <= 1 {
                let mut out = Vec::with_capacity(n);
                for (c, t) in caches.iter_mut().zip(tokens) {
                    out.push(
                        self.forward(c, std::slice::from_ref(t), Logits::Last)
                            .await?,
                    );
                }
                return Ok(out);
            }
            self.check_tokens(tokens)?;
            let mut views = Vec::with_capacity(n);
            for c in caches.iter_mut() {
                c.ensure_room(1)?;
                // Checks each cache fits the model (its own scratch stays unused).
                self.scratch(c, 1)?;
            }
            for l in 0..self.hp.n_layers {
                for c in caches.iter() {
                    views.push(c.layer(l)?);
                }
            }
            let positions: Vec<usize> = caches.iter().map(|c| c.pos).collect();
            // The first cache's scratch serves the whole batch: n rows of every activation.
            let s = self.scratch(caches[0], n)?;
            let q_dim = self.hp.n_heads * self.hp.head_dim;
            let vocab = self.hp.vocab;
            self.run(|ops| {
                ops.push(Op::Embed {
                    table: self.embedding,
                    ids: TokenIds::Host(tokens.to_vec()),
                    out: s[S_X],
                });
                let ffn_buffers = Self::ffn_buffers(&s);
                for (l, layer) in self.layers.iter().enumerate() {
                    let attn = &layer.attn;
                    // Every matrix is read once for the whole batch (n activation rows).
                    attn.record_qkv(ops, s[S_X], s[S_H], s[S_QKV], n);
                    // RoPE, the cache write and attention per sequence, at its own position.
                    for (i, &pos) in positions.iter().enumerate() {
                        let kv = views[l * n + i];
                        let (q, att) = (s[S_ROW_Q], s[S_ROW_ATT]);
                        attn.record_attend(ops, s[S_QKV], i, q, att, kv, 1, pos);
                        ops.push(Op::Copy {
                            src: att,
                            src_offset: 0,
                            dst: s[S_ATT],
                            dst_offset: i * q_dim,
                            len: q_dim,
                        });
                    }
                    attn.record_out(ops, s[S_ATT], s[S_X], n);
                    layer.ffn.record(ops, &ffn_buffers, n);
                }
                let (w, h, out) = (self.lm_head, s[S_H], s[S_LOGITS]);
                record_lm_head(ops, &self.output_norm, w, s[S_X], h, out, n);
                Ok(())
            })?;
            let all = self.backend.read(s[S_LOGITS], 0, n * vocab).await?;
            for c in caches.iter_mut() {
                c.pos += 1;
            }
            Ok(all.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
        })
    }

    fn decode_greedy<'a>(
        &'a self,
        cache: &'a mut KvCache,
        first: u32,
        max_steps: usize,
        on_token: &'a mut dyn FnMut(u32) -> bool,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if max_steps == 0 {
                return Ok(());
            }
            self.check_tokens(&[first])?;
            cache.ensure_room(1)?;
            let s = self.scratch(cache, 1)?;
            self.backend.write(s[S_TOK], 0, &[first as f32])?;
            // On a device that queues work, step k + 1 is recorded and submitted before step
            // k's token is awaited, so the device always has the next step while the host
            // waits and records. A step recorded past the end only wrote cache rows beyond
            // `cache.pos`, which later calls overwrite, and its read is dropped unawaited.
            // Where operations run at once there is nothing to gain.
            let ahead = self.backend.queues_work();
            let mut pending: VecDeque<ReadFuture> = VecDeque::with_capacity(2);
            pending.push_back(self.greedy_step(cache, &s, 0, cache.pos)?);
            for k in 0..max_steps {
                let next_pos = cache.pos + 1;
                if ahead && k + 1 < max_steps && next_pos < cache.max_seq {
                    pending.push_back(self.greedy_step(cache, &s, k + 1, next_pos)?);
                }
                let read = pending
                    .pop_front()
                    .ok_or_else(|| Error::context_overflow("no room left for the next step"))?;
                let tok = read.await?.first().copied().unwrap_or_default() as u32;
                cache.pos += 1;
                if !on_token(tok) || k + 1 == max_steps {
                    return Ok(());
                }
                cache.ensure_room(1)?;
                if !ahead {
                    pending.push_back(self.greedy_step(cache, &s, k + 1, cache.pos)?);
                }
            }
            Ok(())
        })
    }

    fn weight_bytes(&self) -> usize {
        self.totals.bytes
    }

    fn bits_per_weight(&self) -> f64 {
        self.totals.bits_per_weight()
    }

    fn plan(&self) -> QuantPlan {
        self.plan
    }
}
