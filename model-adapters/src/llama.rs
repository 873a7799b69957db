//! LLaMA-family text decoders (LLaMA 2/3, SmolLM2, Mistral-style): grouped-query attention,
//! RoPE, RMSNorm, SwiGLU feed-forward, optionally tied embeddings.

use crate::tensor_source::{GgufTensors, RandomTensors, TensorSource};
use lowbit_core::adapter::ProgressFn;
use lowbit_core::backend::{AttentionParams, PendingRead, QkvParams, RmsNorm, RopeStyle};
use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::registry::AdapterRegistration;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{
    Backend, BufferId, Error, KvCache, Logits, ModelAdapter, ModelSource, QuantPlan, Result,
    TextModel, TextModelConfig, WeightId, WeightMatrix, WeightPrecision,
};
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

/// One decoder block. The q, k and v projections are stored stacked as one matrix (and gate
/// and up likewise), so each pair of norms is followed by one matmul instead of three (two):
/// the plan gives every projection of a layer the same format, so stacking is exact.
struct Layer {
    attn_norm: BufferId,
    /// Rows `q (dim) | k (kv_dim) | v (kv_dim)`.
    wqkv: WeightId,
    wo: WeightId,
    ffn_norm: BufferId,
    /// Rows `gate (ffn) | up (ffn)`.
    w_gate_up: WeightId,
    w_down: WeightId,
}

/// A loaded LLaMA-family model.
pub struct LlamaModel {
    hp: Hparams,
    config: TextModelConfig,
    tokenizer: Tokenizer,
    backend: Arc<dyn Backend>,
    embedding: WeightId,
    layers: Vec<Layer>,
    output_norm: BufferId,
    lm_head: WeightId,
    plan: QuantPlan,
    weight_bytes: usize,
    weight_bits: f64,
    n_weights: usize,
    /// One-row buffers of batched decoding (fused q|k|v, query, attention output), made on first
    /// use.
    batch_tmp: Mutex<Option<[BufferId; 3]>>,
}

/// Loads tensors onto the backend, keeping count of size and bits.
struct Loader<'a, 'p> {
    src: &'a dyn TensorSource,
    backend: &'a Arc<dyn Backend>,
    progress: &'a mut ProgressFn<'p>,
    done: usize,
    total: usize,
    bytes: usize,
    bits: f64,
    n_weights: usize,
}

impl Loader<'_, '_> {
    fn tick(&mut self, what: &str) {
        self.done += 1;
        (self.progress)(self.done, self.total, what);
    }

    fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightId> {
        let w = self.make(name, rows, cols, p)?;
        let id = self.backend.upload_weight(w)?;
        self.tick(name);
        Ok(id)
    }

    /// Several matrices of `cols` columns stacked by rows into one upload, in order.
    fn stacked(
        &mut self,
        parts: &[(String, usize)],
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightId> {
        let mut mats = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            let (name, rows) = (name.as_str(), *rows);
            mats.push(self.make(name, rows, cols, p)?);
            self.tick(name);
        }
        self.backend.upload_weight(WeightMatrix::concat_rows(mats)?)
    }

    /// One matrix in precision `p`, read from the file (or made up), counted in the totals.
    fn make(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightMatrix> {
        let w = self.src.matrix(name, rows, cols, p, self.done as u64)?;
        self.bytes += w.size_bytes();
        self.bits += w.size_bytes() as f64 * 8.0;
        self.n_weights += rows * cols;
        Ok(w)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<BufferId> {
        let data = self.src.vector(name, len)?;
        if data.len() != len {
            return Err(Error::model_loading(format!(
                "tensor {name} has {} values, expected {len}",
                data.len()
            )));
        }
        let id = self.backend.upload(&data)?;
        self.tick(name);
        Ok(id)
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

    fn load_text(
        &self,
        source: &ModelSource,
        plan: &QuantPlan,
        backend: Arc<dyn Backend>,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Box<dyn TextModel>> {
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
        build(
            &GgufTensors(g),
            hp,
            tied,
            tokenizer,
            (name, arch),
            plan,
            backend,
            progress,
        )
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
) -> Result<Box<dyn TextModel>> {
    let names = (name, "llama".to_string());
    build(
        &RandomTensors,
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
) -> Result<Box<dyn TextModel>> {
    {
        let total = 2 + hp.n_layers * 9 + usize::from(!tied) + 1;
        let mut ld = Loader {
            src,
            backend: &backend,
            progress,
            done: 0,
            total,
            bytes: 0,
            bits: 0.0,
            n_weights: 0,
        };
        let (dim, kv_dim, ffn) = (hp.dim, hp.kv_dim(), hp.ffn_dim);
        let embedding = ld.matrix("token_embd.weight", hp.vocab, dim, plan.embedding)?;
        let mut layers = Vec::with_capacity(hp.n_layers);
        for i in 0..hp.n_layers {
            let n = |t: &str| format!("blk.{i}.{t}.weight");
            let (att, ff) = (plan.attention, plan.feedforward);
            let qkv = [
                (n("attn_q"), dim),
                (n("attn_k"), kv_dim),
                (n("attn_v"), kv_dim),
            ];
            let gate_up = [(n("ffn_gate"), ffn), (n("ffn_up"), ffn)];
            layers.push(Layer {
                attn_norm: ld.vector(&n("attn_norm"), dim)?,
                wqkv: ld.stacked(&qkv, dim, att)?,
                wo: ld.matrix(&n("attn_output"), dim, dim, att)?,
                ffn_norm: ld.vector(&n("ffn_norm"), dim)?,
                w_gate_up: ld.stacked(&gate_up, dim, ff)?,
                w_down: ld.matrix(&n("ffn_down"), dim, ffn, ff)?,
            });
        }
        let output_norm = ld.vector("output_norm.weight", dim)?;
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
        let (weight_bytes, weight_bits, n_weights) = (ld.bytes, ld.bits, ld.n_weights);
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
        Ok(Box::new(LlamaModel {
            hp,
            config,
            tokenizer,
            backend,
            embedding,
            layers,
            output_norm,
            lm_head,
            plan: *plan,
            weight_bytes,
            weight_bits,
            n_weights,
            batch_tmp: Mutex::new(None),
        }))
    }
}

/// Indices into `KvCache::scratch`.
const S_X: usize = 0;
const S_H: usize = 1;
/// Rotated queries.
const S_Q: usize = 2;
/// Fused q|k|v projection.
const S_QKV: usize = 3;
const S_ATT: usize = 4;
/// Fused gate|up projection.
const S_GATE_UP: usize = 5;
/// SwiGLU output.
const S_FF: usize = 6;
const S_LOGITS: usize = 7;
/// Two token-id slots of device-side greedy decoding (f32 values).
const S_TOK: usize = 8;
/// Scratch buffers per cache.
const N_SCRATCH: usize = 9;

impl LlamaModel {
    /// Attention over the cache for `n` query rows starting at position `pos0`.
    fn attention_params(&self, n: usize, pos0: usize) -> AttentionParams {
        let hp = &self.hp;
        AttentionParams {
            n_tokens: n,
            pos0,
            n_heads: hp.n_heads,
            n_kv_heads: hp.n_kv_heads,
            head_dim: hp.head_dim,
            scale: 1.0 / (hp.head_dim as f32).sqrt(),
        }
    }

    /// The feed-forward half of a layer over `n` rows (after the attention output projection
    /// and residual): RMSNorm, SwiGLU feed-forward and residual.
    fn ffn(&self, layer: &Layer, s: &[BufferId; N_SCRATCH], n: usize) -> Result<()> {
        let (b, hp) = (&self.backend, &self.hp);
        let norm = self.norm(layer.ffn_norm);
        b.ffn_swiglu(
            s[S_X],
            &norm,
            s[S_H],
            layer.w_gate_up,
            s[S_GATE_UP],
            s[S_FF],
            layer.w_down,
            n,
            hp.ffn_dim,
        )
    }

    /// Every decoder block over the `n` embedded rows in `s[S_X]`, at positions `pos0 ..` of
    /// `cache` (the caller advances `cache.pos`).
    fn layers_at(
        &self,
        cache: &KvCache,
        s: &[BufferId; N_SCRATCH],
        n: usize,
        pos0: usize,
    ) -> Result<()> {
        let b = &self.backend;
        let att = self.attention_params(n, pos0);
        let qkv = self.qkv_params(n, pos0);
        for (l, layer) in self.layers.iter().enumerate() {
            let (kc, vc) = (cache.buffers[2 * l], cache.buffers[2 * l + 1]);
            let norm = self.norm(layer.attn_norm);
            b.rms_norm_qkv_rope(
                s[S_X], &norm, s[S_H], layer.wqkv, s[S_QKV], s[S_Q], kc, vc, &qkv,
            )?;
            // Each residual add may prepare the norm after it (`Backend::expect_norm`).
            b.expect_norm(s[S_X], &self.norm(layer.ffn_norm), layer.w_gate_up)?;
            b.attention_matmul_add(s[S_Q], kc, vc, s[S_ATT], &att, layer.wo, s[S_X])?;
            let (next_norm, next_w) = match self.layers.get(l + 1) {
                Some(next) => (next.attn_norm, next.wqkv),
                None => (self.output_norm, self.lm_head),
            };
            b.expect_norm(s[S_X], &self.norm(next_norm), next_w)?;
            self.ffn(layer, s, n)?;
        }
        Ok(())
    }

    /// Records greedy decode step `k` of [`TextModel::decode_greedy`] at position `pos`: the
    /// token id comes from slot `k % 2` of `s[S_TOK]`, the selected one goes to the other slot,
    /// and its read-back starts (one submission per step).
    fn greedy_step(
        &self,
        cache: &KvCache,
        s: &[BufferId; N_SCRATCH],
        k: usize,
        pos: usize,
    ) -> Result<PendingRead> {
        let (b, hp) = (&self.backend, &self.hp);
        let (src, dst) = (k % 2, (k + 1) % 2);
        b.embed_indirect(self.embedding, s[S_TOK], src, 1, s[S_X])?;
        self.layers_at(cache, s, 1, pos)?;
        let norm = self.norm(self.output_norm);
        b.rms_norm_matmul(s[S_X], &norm, s[S_H], self.lm_head, s[S_LOGITS], 1)?;
        b.argmax(s[S_LOGITS], hp.vocab, s[S_TOK], dst)?;
        b.read_start(s[S_TOK], dst, 1)
    }

    /// The scratch buffers of `cache`, allocated for at least `n` rows.
    fn scratch(&self, cache: &mut KvCache, n: usize) -> Result<[BufferId; N_SCRATCH]> {
        if cache.scratch_rows < n {
            self.ensure_scratch(cache, n)?;
        }
        cache.scratch[..]
            .try_into()
            .map_err(|_| Error::invalid_config("KV cache scratch buffers of another model"))
    }

    /// The model's RMSNorm with per-column weights `weight`.
    fn norm(&self, weight: BufferId) -> RmsNorm {
        RmsNorm {
            weight,
            dim: self.hp.dim,
            eps: self.hp.eps,
        }
    }

    /// RoPE and cache layout of `n` fused q|k|v rows at positions `pos0 ..`.
    fn qkv_params(&self, n: usize, pos0: usize) -> QkvParams {
        let hp = &self.hp;
        QkvParams {
            n_tokens: n,
            pos0,
            n_heads: hp.n_heads,
            n_kv_heads: hp.n_kv_heads,
            head_dim: hp.head_dim,
            theta: hp.rope_theta,
            style: RopeStyle::Adjacent,
        }
    }

    /// (Re)allocates the scratch buffers for `n` token rows (logits included).
    fn ensure_scratch(&self, cache: &mut KvCache, n: usize) -> Result<()> {
        let hp = &self.hp;
        let b = &self.backend;
        let sizes: [usize; N_SCRATCH] = [
            n * hp.dim,
            n * hp.dim,
            n * hp.dim,
            n * (hp.dim + 2 * hp.kv_dim()),
            n * hp.dim,
            n * 2 * hp.ffn_dim,
            n * hp.ffn_dim,
            n * hp.vocab,
            2,
        ];
        let mut bufs = Vec::with_capacity(sizes.len());
        for s in sizes {
            bufs.push(b.alloc(s)?);
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
        let hp = &self.hp;
        let mut bufs = Vec::with_capacity(hp.n_layers * 2);
        for _ in 0..hp.n_layers * 2 {
            bufs.push(self.backend.alloc(max_seq * hp.kv_dim())?);
        }
        let bytes = hp.n_layers * 2 * max_seq * hp.kv_dim() * 4;
        Ok(KvCache::new(self.backend.clone(), bufs, max_seq, bytes))
    }

    fn forward(&self, cache: &mut KvCache, tokens: &[u32], logits: Logits) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        cache.ensure_room(n)?;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.hp.vocab) {
            return Err(Error::invalid_config(format!(
                "token id {t} is outside the vocabulary ({})",
                self.hp.vocab
            )));
        }
        let s = self.scratch(cache, n)?;
        let hp = &self.hp;
        let b = &self.backend;
        let dim = hp.dim;
        b.embed(self.embedding, tokens, s[S_X])?;
        self.layers_at(cache, &s, n, cache.pos)?;
        let out = match logits {
            Logits::All => {
                b.rms_norm(s[S_X], self.output_norm, s[S_H], n, dim, hp.eps)?;
                b.matmul(self.lm_head, s[S_H], s[S_LOGITS], n)?;
                b.read(s[S_LOGITS], 0, n * hp.vocab)?
            }
            Logits::Last => {
                // Only the last row is normalised and projected.
                let last = if n == 1 {
                    s[S_X]
                } else {
                    b.copy(s[S_X], (n - 1) * dim, s[S_Q], 0, dim)?;
                    s[S_Q]
                };
                let norm = self.norm(self.output_norm);
                b.rms_norm_matmul(last, &norm, s[S_H], self.lm_head, s[S_LOGITS], 1)?;
                b.read(s[S_LOGITS], 0, hp.vocab)?
            }
        };
        cache.pos += n;
        Ok(out)
    }

    fn forward_batch(&self, caches: &mut [&mut KvCache], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let n = tokens.len();
        if caches.len() != n {
            return Err(Error::invalid_config(format!(
                "forward_batch: {} caches for {n} tokens",
                caches.len()
            )));
        }
        if n <= 1 {
            return caches
                .iter_mut()
                .zip(tokens)
                .map(|(c, t)| self.forward(c, &[*t], Logits::Last))
                .collect();
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.hp.vocab) {
            return Err(Error::invalid_config(format!(
                "token id {t} is outside the vocabulary ({})",
                self.hp.vocab
            )));
        }
        for c in caches.iter_mut() {
            c.ensure_room(1)?;
        }
        let hp = &self.hp;
        let b = &self.backend;
        // The first cache's scratch serves the whole batch: n rows of every activation.
        let s = self.scratch(caches[0], n)?;
        let mut tmp_slot = self.batch_tmp.lock().unwrap_or_else(|e| e.into_inner());
        let row = hp.dim + 2 * hp.kv_dim();
        let [t_qkv, t_q, t_att] = match *tmp_slot {
            Some(t) => t,
            None => {
                let t = [
                    b.alloc(row)?,
                    b.alloc(hp.n_heads * hp.head_dim)?,
                    b.alloc(hp.n_heads * hp.head_dim)?,
                ];
                *tmp_slot = Some(t);
                t
            }
        };
        let dim = hp.dim;
        let q_dim = hp.n_heads * hp.head_dim;
        b.embed(self.embedding, tokens, s[S_X])?;
        for (l, layer) in self.layers.iter().enumerate() {
            // Every matrix is read once for the whole batch (n activation rows).
            b.rms_norm(s[S_X], layer.attn_norm, s[S_H], n, dim, hp.eps)?;
            b.matmul(layer.wqkv, s[S_H], s[S_QKV], n)?;
            // RoPE, the cache write and attention per sequence, at its own position.
            for (i, c) in caches.iter().enumerate() {
                let pos = c.pos;
                let (kc, vc) = (c.buffers[2 * l], c.buffers[2 * l + 1]);
                b.copy(s[S_QKV], i * row, t_qkv, 0, row)?;
                b.rope_store_qkv(t_qkv, t_q, kc, vc, &self.qkv_params(1, pos))?;
                let att = self.attention_params(1, pos);
                b.attention(t_q, kc, vc, t_att, &att)?;
                b.copy(t_att, 0, s[S_ATT], i * q_dim, q_dim)?;
            }
            b.matmul_add(layer.wo, s[S_ATT], s[S_X], n)?;
            self.ffn(layer, &s, n)?;
        }
        b.rms_norm(s[S_X], self.output_norm, s[S_H], n, dim, hp.eps)?;
        b.matmul(self.lm_head, s[S_H], s[S_LOGITS], n)?;
        let all = b.read(s[S_LOGITS], 0, n * hp.vocab)?;
        for c in caches.iter_mut() {
            c.pos += 1;
        }
        Ok(all.chunks_exact(hp.vocab).map(|r| r.to_vec()).collect())
    }

    fn decode_greedy(
        &self,
        cache: &mut KvCache,
        first: u32,
        max_steps: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<()> {
        if max_steps == 0 {
            return Ok(());
        }
        if first as usize >= self.hp.vocab {
            return Err(Error::invalid_config(format!(
                "token id {first} is outside the vocabulary ({})",
                self.hp.vocab
            )));
        }
        cache.ensure_room(1)?;
        let s = self.scratch(cache, 1)?;
        let b = &self.backend;
        b.write(s[S_TOK], 0, &[first as f32])?;
        // On a device that queues work, step k + 1 is recorded and submitted before step k's
        // token is read, so the device always has the next step while the host waits and
        // records. A step recorded past the end only wrote cache rows beyond `cache.pos`,
        // which later steps overwrite. Where operations run at once there is nothing to gain.
        let ahead = b.queues_work();
        let mut pending = std::collections::VecDeque::new();
        let result = (|| -> Result<()> {
            pending.push_back(self.greedy_step(cache, &s, 0, cache.pos)?);
            for k in 0..max_steps {
                let next_pos = cache.pos + 1;
                if ahead && k + 1 < max_steps && next_pos < cache.max_seq {
                    pending.push_back(self.greedy_step(cache, &s, k + 1, next_pos)?);
                }
                let read = pending
                    .pop_front()
                    .ok_or_else(|| Error::context_overflow("no room left for the next step"))?;
                let tok = b.read_finish(read)?.first().copied().unwrap_or_default() as u32;
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
        })();
        // Redeem reads still in flight (a refused token, an error) so none is left behind.
        for read in pending {
            let _ = b.read_finish(read);
        }
        result
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn bits_per_weight(&self) -> f64 {
        self.weight_bits / self.n_weights.max(1) as f64
    }

    fn plan(&self) -> QuantPlan {
        self.plan
    }
}
