//! Attention over the KV cache (or encoder states): split + merge passes at decode
//! (optionally writing 8-bit blocks for the output projection), one tiled pass for prefill,
//! either causal or, compiled with `MASKED`, over any mask and `kv_len`; the fused
//! `Attention + Linear(accumulate)`, and the `Attention` op.

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct, Internal, Scratch};
use crate::ops::linear::{q8_len, Epilogue, Input};
use crate::ops::not_yet;
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::Tuning;
use lowbit_core::kv::KvView;
use lowbit_core::ops::{AttentionShape, Mask};
use lowbit_core::{BufferId, DType, Error, Result, WeightId};

/// Largest head dimension the attention kernels hold in registers.
const MAX_HEAD_DIM: usize = 256;

/// Attention of `n_tokens` query rows at positions `pos0 ..` over the first `kv_len` rows of
/// a KV view, per `mask` (causal over `pos0 + n_tokens` rows: the decoder kernels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionParams {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub kv_len: usize,
    pub mask: Mask,
}

impl AttentionParams {
    /// The parameters of an `Attention` op over an f32 view.
    pub(crate) fn of(kv: &KvView, shape: &AttentionShape) -> Result<Self> {
        if let Mask::Window { window: 0 } = shape.mask {
            return Err(Error::invalid_config("attention: a window of 0 keys"));
        }
        if kv.layout.dtype != DType::F32 {
            return Err(not_yet(&format!(
                "attention over a {} KV cache",
                kv.layout.dtype.name()
            )));
        }
        if shape.kv_len > kv.layout.rows {
            return Err(Error::context_overflow(format!(
                "attention over {} rows of a view of {}",
                shape.kv_len, kv.layout.rows
            )));
        }
        Ok(AttentionParams {
            n_tokens: shape.n_tokens,
            pos0: shape.pos0,
            n_heads: shape.n_heads,
            n_kv_heads: kv.layout.n_kv_heads,
            head_dim: kv.layout.head_dim,
            scale: shape.scale,
            kv_len: shape.kv_len,
            mask: shape.mask,
        })
    }

    /// Causal attention of `n_tokens` rows at `pos0 ..` over `pos0 + n_tokens` rows.
    pub(crate) fn causal(&self) -> bool {
        self.mask == Mask::Causal && self.kv_len == self.pos0 + self.n_tokens
    }

    /// Key rows the last query row sees up to (every query sees fewer or as many).
    fn keys_end(&self) -> usize {
        self.mask
            .keys(self.pos0, self.n_tokens.saturating_sub(1), self.kv_len)
            .1
    }

    /// The `MASKED` kernels' extra parameters: rows any query may see, causal, window.
    fn mask_params(&self) -> [u32; 3] {
        let (limit, causal, window) = match self.mask {
            Mask::Causal => (self.kv_len, true, u32::MAX),
            Mask::None => (self.kv_len, false, u32::MAX),
            Mask::Padding { valid } => (valid.min(self.kv_len), false, u32::MAX),
            Mask::Window { window } => (self.kv_len, true, window.max(1) as u32),
        };
        [limit as u32, u32::from(causal), window]
    }

    /// Splits of the decode kernel.
    fn n_splits(&self, t: &Tuning) -> u32 {
        t.n_splits(self.keys_end())
    }
}

impl WgpuBackend {
    /// The `Attention` op on its own.
    pub(crate) fn attention(
        &self,
        q: BufferId,
        kv: &KvView,
        out: BufferId,
        shape: &AttentionShape,
    ) -> Result<()> {
        let p = AttentionParams::of(kv, shape)?;
        self.attention_into(q, kv.k, kv.v, out, &p, None)
    }

    /// Causal attention; with `q8` (decode, head dimension a multiple of
    /// 32) the output as 8-bit activation blocks in that code order.
    pub(crate) fn attention_into(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        out: BufferId,
        p: &AttentionParams,
        q8: Option<u32>,
    ) -> Result<()> {
        if p.n_tokens == 0 {
            return Ok(());
        }
        if p.n_heads == 0 || p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
            return Err(Error::invalid_config(format!(
                "attention needs query heads ({}) to be a multiple of kv heads ({})",
                p.n_heads, p.n_kv_heads
            )));
        }
        if p.head_dim == 0 || p.head_dim > MAX_HEAD_DIM {
            return Err(Error::unsupported(format!(
                "the WebGPU attention kernels support head dimensions 1..={MAX_HEAD_DIM}, got {}",
                p.head_dim
            )));
        }
        for b in [q, k_cache, v_cache] {
            distinct("attention", b, out)?;
        }
        let t = self.tuning;
        let hd = p.head_dim;
        let q_len = p.n_tokens * p.n_heads * hd;
        let masked = !p.causal();
        let kv_len = p.keys_end() * p.n_kv_heads * hd;
        let decode = p.n_tokens == 1;
        let wg = t.attn_wg_for(&self.dev.limits);
        if q8.is_some() && (!decode || !hd.is_multiple_of(32) || wg < 8) {
            return Err(Error::invalid_config(
                "8-bit attention output needs one decode row, whole 32-value blocks per head and 8+ lanes",
            ));
        }
        let n_splits = p.n_splits(&t);
        let part_len = if decode {
            p.n_tokens * p.n_heads * n_splits as usize * (hd + 2)
        } else {
            4
        };
        let mut st = self.lock();
        check_len("attention query", st.buf(q)?, q_len)?;
        check_len("attention keys", st.buf(k_cache)?, kv_len)?;
        check_len("attention values", st.buf(v_cache)?, kv_len)?;
        check_len(
            "attention output",
            st.buf(out)?,
            q8_len(q_len, q8.is_some()),
        )?;
        let part = self.scratch(&mut st, Scratch::AttentionPartials, part_len as u64 * 4)?;
        let bufs = [q, k_cache, v_cache, out].map(|id| st.buf(id).map(|b| b.buffer.clone()));
        let [qb, kb, vb, ob] = bufs;
        let (qb, kb, vb, ob) = (qb?, kb?, vb?, ob?);
        let mut defines = self.base_defines(wg);
        // Decode scores: lanes per key, a power of two up to an eighth of the head's vectors.
        let key_lanes = (hd / 32).max(1);
        defines.extend([
            ("HEAD_DIM", Define::U32(hd as u32)),
            ("KEY_LANES", Define::U32(1 << key_lanes.ilog2())),
            ("VEC4", Define::Bool(hd.is_multiple_of(4))),
            ("SPLIT_LEN", Define::U32(t.split_len)),
            ("Q8_OUT", Define::Bool(q8.is_some())),
            ("ORDER", Define::U32(q8.unwrap_or(0))),
            ("MASKED", Define::Bool(masked)),
        ]);
        let (q_rows, k_tile) = t.prefill_tiles(hd);
        use Slot::*;
        let slots = [Uniform, Read, Read, Read, ReadWrite, ReadWrite];
        let mut params = vec![
            p.n_tokens as u32,
            p.pos0 as u32,
            p.n_heads as u32,
            p.n_kv_heads as u32,
            p.scale.to_bits(),
            n_splits,
        ];
        if masked {
            params.extend(p.mask_params());
        }
        let bindings = [&qb, &kb, &vb, &ob, &part].map(Bind::Buffer);
        let key = |entry| {
            let mut defines = defines.clone();
            let prefill = entry == "attn_prefill";
            defines.push(("PREFILL", Define::Bool(prefill)));
            if prefill {
                defines.push(("Q_ROWS", Define::U32(q_rows)));
                defines.push(("K_TILE", Define::U32(k_tile)));
            }
            KernelKey {
                file: ShaderFile::Attention,
                entry,
                defines,
            }
        };
        let passes = if decode {
            let split = (
                "attn_split",
                [n_splits, p.n_heads as u32, p.n_tokens as u32],
            );
            let merge = ("attn_merge", [p.n_heads as u32, p.n_tokens as u32, 1]);
            // A single split writes the final output itself.
            if n_splits == 1 {
                vec![split]
            } else {
                vec![split, merge]
            }
        } else {
            let q_groups = p.n_tokens.div_ceil(q_rows as usize) as u32;
            vec![("attn_prefill", [q_groups, p.n_heads as u32, 1])]
        };
        for (entry, groups) in passes {
            let kernel = st.pipelines.get(&self.dev, &key(entry), &slots)?;
            st.rec.dispatch(
                &self.dev,
                &Dispatch {
                    kernel: &kernel,
                    params: &params,
                    bindings: &bindings,
                    groups,
                },
            )?;
        }
        Ok(())
    }

    /// `Attention + Linear(accumulate)` fused: at decode the attention writes 8-bit blocks the
    /// output projection's wide matvec reads as they are.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_matmul_add(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        scratch: BufferId,
        p: &AttentionParams,
        w: WeightId,
        out: BufferId,
    ) -> Result<()> {
        // Decode: the attention writes 8-bit activation blocks that the output projection's
        // matvec reads as they are (no per-workgroup quantization).
        let q8 = if p.n_tokens == 1 && p.head_dim.is_multiple_of(32) {
            let lanes = self.tuning.attn_wg_for(&self.dev.limits);
            self.q8_input(w, 1, p.n_heads * p.head_dim, lanes)?
        } else {
            None
        };
        match q8 {
            Some(order) => {
                // The blocks go to the backend's own buffer: `scratch` stays unwritten.
                let len = q8_len(p.n_heads * p.head_dim, true);
                let blocks = self.internal(Internal::Blocks, len)?;
                self.attention_into(q, k_cache, v_cache, blocks, p, Some(order))?;
                let add = self.residual_epilogue(w, out)?;
                self.matmul_into(w, blocks, out, 1, add, Input::Q8)
            }
            None => {
                self.lock().norm_hint = None;
                self.attention_into(q, k_cache, v_cache, scratch, p, None)?;
                self.matmul_into(w, scratch, out, p.n_tokens, Epilogue::Add, Input::F32)
            }
        }
    }
}
