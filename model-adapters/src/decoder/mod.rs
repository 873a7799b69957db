//! A loaded decoder-only text model, whatever its family (LLaMA, Gemma 3): an embedding, a
//! stack of [`DecoderLayer`]s on the shared blocks and an LM head. Each call records its whole
//! step as one op list and runs it with one [`Backend::run`]; a family's adapter only reads its
//! file and says which blocks (and which options of them) its layers are.

use crate::blocks::{
    record_lm_head, DecoderAttention, DecoderAttentionBuffers, GatedFfn, GatedFfnBuffers, Heads,
    Norm,
};
use crate::loader::WeightTotals;
use lowbit_core::future::LocalBoxFuture;
use lowbit_core::kv::{KvFormat, KvRing};
use lowbit_core::ops::TokenIds;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{
    Backend, BufferId, DType, Error, KvCache, KvLayout, Logits, Op, QuantPlan, ReadFuture, Result,
    TextModel, TextModelConfig, WeightId,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

mod gguf;

pub(crate) use gguf::{
    gguf_decoder_adapter, is_gguf_of, load_gguf, load_lm_head, DecoderSpec, Hparams,
};

/// One decoder block. Where the plan gives the projections of a layer one format, the q, k and
/// v projections are stored stacked as one matrix (and gate and up likewise), so each norm is
/// followed by one matmul instead of three (two): stacking is exact for row-wise formats.
pub(crate) struct DecoderLayer {
    pub(crate) attn: DecoderAttention,
    pub(crate) ffn: GatedFfn,
}

/// The sizes the model's buffers are made for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecoderDims {
    pub(crate) n_layers: usize,
    pub(crate) dim: usize,
    pub(crate) heads: Heads,
    pub(crate) ffn_dim: usize,
    pub(crate) vocab: usize,
}

impl DecoderDims {
    fn kv_dim(&self) -> usize {
        self.heads.kv_dim()
    }
}

/// Most logit values computed (and held on the device) at once: 128 MiB of f32, WebGPU's
/// default storage-binding limit. A longer input's logits are made in chunks of rows (Gemma's
/// 262,144-token vocabulary makes 1 GiB for 1,024 rows).
const LOGIT_VALUES: usize = 1 << 25;

/// A loaded decoder-only model.
pub struct DecoderModel {
    pub(crate) dims: DecoderDims,
    pub(crate) config: TextModelConfig,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) embedding: WeightId,
    /// Multiplier of the embedded rows (Gemma: √dim), if any.
    pub(crate) embed_scale: Option<f32>,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) output_norm: Norm,
    pub(crate) lm_head: WeightId,
    pub(crate) plan: QuantPlan,
    pub(crate) totals: WeightTotals,
    /// Op lists kept for reuse, so recording a step allocates nothing once warm (one per
    /// caller recording at the same time).
    pub(crate) op_lists: Mutex<Vec<Vec<Op>>>,
}

/// The weights of a [`DecoderModel`], as a family's builder loaded them.
pub(crate) struct DecoderWeights {
    pub(crate) embedding: WeightId,
    /// Multiplier of the embedded rows, if any.
    pub(crate) embed_scale: Option<f32>,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) output_norm: Norm,
    pub(crate) lm_head: WeightId,
}

impl DecoderModel {
    /// The model of `spec` with weights `w` (`n_params` parameters, `totals` as loaded).
    pub(crate) fn new(
        spec: DecoderSpec,
        n_params: usize,
        backend: Arc<dyn Backend>,
        plan: &QuantPlan,
        totals: WeightTotals,
        w: DecoderWeights,
    ) -> Self {
        let hp = &spec.hp;
        let (name, architecture) = spec.names;
        let config = TextModelConfig {
            name,
            architecture,
            vocab_size: hp.vocab,
            context_length: hp.context_length,
            n_layers: hp.n_layers,
            dim: hp.dim,
            n_heads: hp.n_heads,
            n_kv_heads: hp.n_kv_heads,
            ffn_dim: hp.ffn_dim,
            n_params,
        };
        DecoderModel {
            dims: DecoderDims {
                n_layers: hp.n_layers,
                dim: hp.dim,
                heads: hp.heads(),
                ffn_dim: hp.ffn_dim,
                vocab: hp.vocab,
            },
            config,
            tokenizer: spec.tokenizer,
            backend,
            embedding: w.embedding,
            embed_scale: w.embed_scale,
            layers: w.layers,
            output_norm: w.output_norm,
            lm_head: w.lm_head,
            plan: *plan,
            totals,
            op_lists: Mutex::new(Vec::new()),
        }
    }
}

// Indices into `KvCache::scratch`.

/// Residual stream (an ordinary buffer: it carries values from one `run` to the next).
const S_X: usize = 0;
/// Normalised rows.
const S_H: usize = 1;
/// Rotated queries.
const S_Q: usize = 2;
/// Fused q|k|v projection (or the keys of separate projections).
const S_QKV: usize = 3;
/// Attention output.
const S_ATT: usize = 4;
/// Fused gate|up projection.
const S_GATE_UP: usize = 5;
/// SwiGLU output.
const S_FF: usize = 6;
/// Logits of up to [`LOGIT_VALUES`] values (an ordinary buffer: read back).
const S_LOGITS: usize = 7;
/// Two token-id slots of device-side greedy decoding (f32 values; an ordinary buffer).
const S_TOK: usize = 8;
/// One query row of batched decoding (attention reads whole buffers).
const S_ROW_Q: usize = 9;
/// One attention-output row of batched decoding.
const S_ROW_ATT: usize = 10;
/// Values of separate q, k, v projections.
const S_V: usize = 11;
/// Scratch buffers per cache.
const N_SCRATCH: usize = 12;

/// The scratch buffers of one call.
type Scratch = [BufferId; N_SCRATCH];

impl DecoderModel {
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
        match tokens.iter().find(|&&t| t as usize >= self.dims.vocab) {
            Some(t) => Err(Error::invalid_config(format!(
                "token id {t} is outside the vocabulary ({})",
                self.dims.vocab
            ))),
            None => Ok(()),
        }
    }

    fn attention_buffers(s: &Scratch) -> DecoderAttentionBuffers {
        DecoderAttentionBuffers {
            x: s[S_X],
            h: s[S_H],
            qkv: s[S_QKV],
            v: s[S_V],
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

    /// Records the embedding of `ids` into `out` (scaled, for a model that scales it).
    fn record_embed(&self, ops: &mut Vec<Op>, ids: TokenIds, out: BufferId) {
        let n = ids.len();
        ops.push(Op::Embed {
            table: self.embedding,
            ids,
            out,
        });
        if let Some(factor) = self.embed_scale {
            ops.push(Op::Scale {
                x: out,
                len: n * self.dims.dim,
                factor,
            });
        }
    }

    /// Rows of logits made at once (see [`LOGIT_VALUES`]).
    fn logit_rows(&self) -> usize {
        (LOGIT_VALUES / self.dims.vocab.max(1)).max(1)
    }

    /// Records the LM head of the `m` final hidden rows `r0 ..` of `src` into `s[S_LOGITS]`
    /// (rows past the first are moved to the start of `s[S_Q]` first: ops read from a
    /// buffer's start).
    fn record_logits(&self, ops: &mut Vec<Op>, s: &Scratch, src: BufferId, r0: usize, m: usize) {
        let dim = self.dims.dim;
        let x = if r0 == 0 {
            src
        } else {
            ops.push(Op::Copy {
                src,
                src_offset: r0 * dim,
                dst: s[S_Q],
                dst_offset: 0,
                len: m * dim,
            });
            s[S_Q]
        };
        record_lm_head(
            ops,
            &self.output_norm,
            self.lm_head,
            x,
            s[S_H],
            s[S_LOGITS],
            m,
        );
    }

    /// The logits of `rows` final hidden rows of `src`, the first chunk of them already
    /// recorded and run by the caller (with [`DecoderModel::record_logits`] from row 0); the
    /// rest are made chunk by chunk.
    async fn read_logits(&self, s: &Scratch, src: BufferId, rows: usize) -> Result<Vec<f32>> {
        let (vocab, chunk) = (self.dims.vocab, self.logit_rows());
        let first = rows.min(chunk);
        let mut out = self.backend.read(s[S_LOGITS], 0, first * vocab).await?;
        out.reserve((rows - first) * vocab);
        let mut r0 = first;
        while r0 < rows {
            let m = (rows - r0).min(chunk);
            self.run(|ops| {
                self.record_logits(ops, s, src, r0, m);
                Ok(())
            })?;
            out.extend(self.backend.read(s[S_LOGITS], 0, m * vocab).await?);
            r0 += m;
        }
        Ok(out)
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
            let ids = TokenIds::Device {
                buf: s[S_TOK],
                offset: src,
                n: 1,
            };
            self.record_embed(ops, ids, s[S_X]);
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
                len: self.dims.vocab,
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
        let d = &self.dims;
        let fits = cache.n_layers() == d.n_layers
            && (d.n_layers == 0 || cache.layer(0)?.layout.row_len() == d.kv_dim());
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
        let d = &self.dims;
        let b = &self.backend;
        let q_dim = d.heads.q_dim();
        // (values, whether the buffer carries values across runs or to the host)
        let sizes: [(usize, bool); N_SCRATCH] = [
            (n * d.dim, true),
            (n * d.dim, false),
            (n * q_dim.max(d.dim), false),
            (n * d.heads.qkv_dim(), false),
            (n * q_dim, false),
            (n * 2 * d.ffn_dim, false),
            (n * d.ffn_dim, false),
            (n.min(self.logit_rows()) * d.vocab, true),
            (2, true),
            (q_dim, false),
            (q_dim, false),
            (n * d.kv_dim(), false),
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

impl TextModel for DecoderModel {
    fn config(&self) -> &TextModelConfig {
        &self.config
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn new_cache(&self, max_seq: usize) -> Result<KvCache> {
        self.new_cache_as(max_seq, KvFormat::F32)
    }

    fn new_cache_as(&self, max_seq: usize, kv: KvFormat) -> Result<KvCache> {
        let dtype = kv.dtype;
        let hd = self.dims.heads.head_dim;
        // Blocks never straddle two heads: a group wider than a head shrinks to the head.
        let dtype = match dtype {
            DType::QBlock { bits, group } if usize::from(group) > hd => DType::q_block(bits, hd)?,
            d => d,
        };
        if let DType::QBlock { group, .. } = dtype {
            if !hd.is_multiple_of(usize::from(group)) {
                return Err(Error::invalid_config(format!(
                    "kv_cache.group_size = {group} does not divide the head dimension {hd}"
                )));
            }
        }
        let quantized = matches!(dtype, DType::QBlock { .. });
        let (sinks, window) = if quantized {
            (kv.sinks.min(max_seq), kv.window.min(max_seq))
        } else {
            (0, 0)
        };
        let key_channels = quantized && kv.key_channels;
        // A sliding window keeps its tokens in a ring: prompts are written in pieces of at most
        // the recent window (quantized stores) or 512 rows, so the ring stays small.
        let ring = (kv.sliding > 0).then(|| {
            let max_write = if window > 0 {
                window
            } else {
                kv.sliding.min(512)
            };
            let align = match dtype {
                DType::QBlock { group, .. } if key_channels => usize::from(group),
                _ => 1,
            };
            KvRing::new(kv.ring_sinks, kv.sliding, max_write, align)
        });
        let layout = KvLayout {
            n_kv_heads: self.dims.heads.n_kv_heads,
            head_dim: hd,
            rows: ring.map_or(max_seq, |r| r.rows()),
            dtype,
            // A quantized cache keeps each head rotated where the transform exists.
            rotated: kv.rotate && quantized && hd.is_power_of_two(),
        };
        KvCache::with_side(
            self.backend.clone(),
            self.dims.n_layers,
            layout,
            sinks,
            window,
            key_channels,
            ring,
        )
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
            if let Some(m) = cache.max_write().filter(|&m| n > m) {
                // A cache with a recent window takes at most `m` rows a write: the prompt in
                // pieces (attention is exact across them).
                let mut out = Vec::new();
                let pieces = n.div_ceil(m);
                for (k, piece) in tokens.chunks(m).enumerate() {
                    let want = if logits == Logits::All || k + 1 == pieces {
                        logits
                    } else {
                        Logits::Last
                    };
                    let l = self.forward(cache, piece, want).await?;
                    if logits == Logits::All || k + 1 == pieces {
                        out.extend(l);
                    }
                }
                return Ok(out);
            }
            let s = self.scratch(cache, n)?;
            let dim = self.dims.dim;
            let rows = match logits {
                Logits::All => n,
                Logits::Last => 1,
            };
            // `Logits::Last` normalises and projects only the last row.
            let src = if rows == n { s[S_X] } else { s[S_Q] };
            self.run(|ops| {
                self.record_embed(ops, TokenIds::Host(tokens.to_vec()), s[S_X]);
                self.record_layers(ops, cache, &s, n, cache.pos)?;
                if rows != n {
                    ops.push(Op::Copy {
                        src: s[S_X],
                        src_offset: (n - 1) * dim,
                        dst: src,
                        dst_offset: 0,
                        len: dim,
                    });
                }
                self.record_logits(ops, &s, src, 0, rows.min(self.logit_rows()));
                Ok(())
            })?;
            let out = self.read_logits(&s, src, rows).await?;
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
            for l in 0..self.dims.n_layers {
                for c in caches.iter() {
                    views.push(c.layer(l)?);
                }
            }
            let positions: Vec<usize> = caches.iter().map(|c| c.pos).collect();
            // The first cache's scratch serves the whole batch: n rows of every activation.
            let s = self.scratch(caches[0], n)?;
            let q_dim = self.dims.heads.q_dim();
            let vocab = self.dims.vocab;
            self.run(|ops| {
                self.record_embed(ops, TokenIds::Host(tokens.to_vec()), s[S_X]);
                let (attn_buffers, ffn_buffers) =
                    (Self::attention_buffers(&s), Self::ffn_buffers(&s));
                for (l, layer) in self.layers.iter().enumerate() {
                    let attn = &layer.attn;
                    // Every matrix is read once for the whole batch (n activation rows).
                    let rows = attn.record_qkv(ops, &attn_buffers, n);
                    // RoPE, the cache write and attention per sequence, at its own position.
                    for (i, &pos) in positions.iter().enumerate() {
                        let kv = views[l * n + i];
                        let (q, att) = (s[S_ROW_Q], s[S_ROW_ATT]);
                        attn.record_attend(ops, rows, i, q, att, kv, 1, pos);
                        ops.push(Op::Copy {
                            src: att,
                            src_offset: 0,
                            dst: s[S_ATT],
                            dst_offset: i * q_dim,
                            len: q_dim,
                        });
                    }
                    attn.record_out(ops, s[S_ATT], s[S_X], s[S_H], n);
                    layer.ffn.record(ops, &ffn_buffers, n);
                }
                self.record_logits(ops, &s, s[S_X], 0, n.min(self.logit_rows()));
                Ok(())
            })?;
            let all = self.read_logits(&s, s[S_X], n).await?;
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
