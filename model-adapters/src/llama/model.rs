//! A loaded LLaMA-family model: each call records its whole step as one op list through the
//! shared blocks and runs it with one [`Backend::run`].

use super::Hparams;
use crate::blocks::{
    record_lm_head, DecoderAttention, DecoderAttentionBuffers, GatedFfn, GatedFfnBuffers, Norm,
};
use crate::loader::WeightTotals;
use lowbit_core::future::LocalBoxFuture;
use lowbit_core::ops::TokenIds;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::{
    Backend, BufferId, DType, Error, KvCache, KvLayout, Logits, Op, QuantPlan, ReadFuture, Result,
    TextModel, TextModelConfig, WeightId,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One decoder block: the q, k and v projections are stored stacked as one matrix (and gate
/// and up likewise), so each norm is followed by one matmul instead of three (two): the plan
/// gives every projection of a layer the same format, so stacking is exact.
pub(super) struct Layer {
    pub(super) attn: DecoderAttention,
    pub(super) ffn: GatedFfn,
}

/// A loaded LLaMA-family model.
pub struct LlamaModel {
    pub(super) hp: Hparams,
    pub(super) config: TextModelConfig,
    pub(super) tokenizer: Tokenizer,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) embedding: WeightId,
    pub(super) layers: Vec<Layer>,
    pub(super) output_norm: Norm,
    pub(super) lm_head: WeightId,
    pub(super) plan: QuantPlan,
    pub(super) totals: WeightTotals,
    /// Op lists kept for reuse, so recording a step allocates nothing once warm (one per
    /// caller recording at the same time).
    pub(super) op_lists: Mutex<Vec<Vec<Op>>>,
}

// Indices into `KvCache::scratch`.

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
