//! The [`Backend`] trait: a device that owns buffers and runs the operations models need.
//!
//! Model code is written once against this trait, so one LLaMA adapter runs on every backend.
//! Buffers are opaque handles; all activations are f32 rows. Operations are *recorded* in order:
//! the CPU backend runs them at once, a GPU backend may batch them into one submission and only
//! runs them when [`Backend::read`] (or [`Backend::flush`]) needs the result.

use crate::error::{Error, Result};
use crate::quant::QuantizedMatrix;
use half::f16;

/// Handle of an f32 buffer owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(pub u32);

/// Handle of an uploaded weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId(pub u32);

/// A weight matrix as handed to a backend: `rows` outputs × `cols` inputs, row-major.
#[derive(Clone, Debug)]
pub enum WeightMatrix {
    /// Dense f32.
    F32 {
        /// Output dimension.
        rows: usize,
        /// Reduction dimension.
        cols: usize,
        /// `rows * cols` values.
        data: Vec<f32>,
    },
    /// Dense f16.
    F16 {
        /// Output dimension.
        rows: usize,
        /// Reduction dimension.
        cols: usize,
        /// `rows * cols` values.
        data: Vec<f16>,
    },
    /// Packed low-bit codes with group scales.
    Quantized(QuantizedMatrix),
}

impl WeightMatrix {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            WeightMatrix::F32 { rows, cols, .. } | WeightMatrix::F16 { rows, cols, .. } => {
                (*rows, *cols)
            }
            WeightMatrix::Quantized(q) => (q.rows, q.cols),
        }
    }

    /// Stacks matrices of one format and column count into one, rows in the order given (e.g.
    /// the q, k and v projections, so one matmul computes all three). Row-wise formats make
    /// this exact: each row keeps its own codes and group scales.
    ///
    /// Errors with `INVALID_CONFIG` when `parts` is empty or the parts differ in column count
    /// or format.
    pub fn concat_rows(parts: Vec<WeightMatrix>) -> Result<WeightMatrix> {
        let mut it = parts.into_iter();
        let Some(mut acc) = it.next() else {
            return Err(Error::invalid_config(
                "concat_rows needs at least one matrix",
            ));
        };
        for part in it {
            let cols = acc.shape().1;
            let mismatch = |what: &str| {
                Err(Error::invalid_config(format!(
                    "concat_rows: matrices differ in {what}"
                )))
            };
            if part.shape().1 != cols {
                return mismatch("column count");
            }
            match (&mut acc, part) {
                (
                    WeightMatrix::F32 { rows, data, .. },
                    WeightMatrix::F32 {
                        rows: r, data: d, ..
                    },
                ) => {
                    *rows += r;
                    data.extend(d);
                }
                (
                    WeightMatrix::F16 { rows, data, .. },
                    WeightMatrix::F16 {
                        rows: r, data: d, ..
                    },
                ) => {
                    *rows += r;
                    data.extend(d);
                }
                (WeightMatrix::Quantized(a), WeightMatrix::Quantized(b)) if a.spec == b.spec => {
                    a.rows += b.rows;
                    a.data.extend(b.data);
                    a.scales.extend(b.scales);
                    a.offsets.extend(b.offsets);
                }
                _ => return mismatch("format"),
            }
        }
        Ok(acc)
    }

    /// Storage in bytes (codes, scales and offsets for quantized matrices).
    pub fn size_bytes(&self) -> usize {
        match self {
            WeightMatrix::F32 { data, .. } => data.len() * 4,
            WeightMatrix::F16 { data, .. } => data.len() * 2,
            WeightMatrix::Quantized(q) => q.size_bytes(),
        }
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF LLaMA (q/k weights permuted by the converter).
    Adjacent,
    /// Halves `(i, i + d/2)`: NeoX / HF layout.
    Halves,
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    /// New query rows (tokens) in this call.
    pub n_tokens: usize,
    /// Position of the first new token; the cache holds `pos0 + n_tokens` rows after the store.
    pub pos0: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
}

/// An RMSNorm: per-column weights, row length and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    /// The `dim` per-column weights.
    pub weight: BufferId,
    /// Values per row.
    pub dim: usize,
    /// Added to the mean square.
    pub eps: f32,
}

/// Shape of one [`Backend::rope_store_qkv`] call: `n_tokens` rows of a fused q|k|v projection.
#[derive(Clone, Copy, Debug)]
pub struct QkvParams {
    /// Token rows in `qkv`; token `i` is at position `pos0 + i`.
    pub n_tokens: usize,
    /// Position of the first token (the cache row it is stored at).
    pub pos0: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of one head (even).
    pub head_dim: usize,
    /// RoPE base.
    pub theta: f32,
    /// RoPE pairing.
    pub style: RopeStyle,
}

impl QkvParams {
    /// Values of one query row (`n_heads × head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Values of one key (or value) row (`n_kv_heads × head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values of one fused row: `q_dim + 2 × kv_dim`.
    pub fn row_len(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Errors with `INVALID_CONFIG` unless the head dimension is even and positive (RoPE
    /// rotates pairs).
    pub fn check_head_dim(&self) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid_config(format!(
                "rope_store_qkv needs an even, positive head dimension, got {}",
                self.head_dim
            )));
        }
        Ok(())
    }

    /// Errors with `CONTEXT_OVERFLOW` unless a cache of `cache_len` values holds rows
    /// `pos0 .. pos0 + n_tokens`.
    pub fn check_cache(&self, cache_len: usize) -> Result<()> {
        let kv_dim = self.kv_dim();
        let rows = self.pos0.saturating_add(self.n_tokens);
        if cache_len < rows.saturating_mul(kv_dim) {
            return Err(Error::context_overflow(format!(
                "the KV cache holds {} rows of {kv_dim}; rows up to {rows} were asked",
                cache_len / kv_dim.max(1)
            )));
        }
        Ok(())
    }
}

/// A read begun with [`Backend::read_start`]: its values, or the backend's ticket for them.
#[derive(Debug)]
pub enum PendingRead {
    /// Already read (backends that run eagerly).
    Ready(Vec<f32>),
    /// In flight on the device; redeem with [`Backend::read_finish`] on the same backend.
    Ticket(u64),
}

/// Device time of one kernel, summed over its dispatches.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelTiming {
    /// Kernel label, e.g. `matvec[BITS=4,GROUP=32,...]`.
    pub kernel: String,
    /// Summed device time, nanoseconds.
    pub total_ns: u64,
    /// Dispatches timed.
    pub count: u64,
}

/// What a backend is and can do.
#[derive(Clone, Debug, Default)]
pub struct BackendInfo {
    /// Registry name: `cpu`, `webgpu`.
    pub name: String,
    /// Human description of the device (CPU model and SIMD level, GPU adapter).
    pub device: String,
    /// The driver as the platform reports it (a GPU adapter's driver name and version), or
    /// the SIMD instruction set the CPU backend runs.
    pub driver: String,
    /// Features in use (e.g. `avx2`, `fma`, `shader-f16`, `subgroups`).
    pub features: Vec<String>,
    /// Worker threads (CPU) or 0.
    pub threads: usize,
}

/// A compute device. All methods take `&self`: backends synchronise internally, so one loaded
/// model can serve many requests. Buffers are f32 arrays addressed by element offsets.
pub trait Backend: Send + Sync {
    /// Name, device and features.
    fn info(&self) -> BackendInfo;

    /// Uploads a weight matrix (already packed; never re-laid out on the device at run time).
    fn upload_weight(&self, weight: WeightMatrix) -> Result<WeightId>;
    /// Creates a buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<BufferId>;
    /// Creates a zeroed buffer of `len` f32.
    fn alloc(&self, len: usize) -> Result<BufferId>;
    /// Releases a buffer (unknown ids are ignored).
    fn free(&self, buf: BufferId);
    /// Overwrites `data.len()` values of `buf` starting at `offset`.
    fn write(&self, buf: BufferId, offset: usize, data: &[f32]) -> Result<()>;
    /// Reads `len` values of `buf` starting at `offset`, after all recorded work.
    fn read(&self, buf: BufferId, offset: usize, len: usize) -> Result<Vec<f32>>;
    /// Whether operations are queued and run later on a device (a GPU backend): callers may
    /// then record the next step before waiting for this one. `false` where they run at once.
    fn queues_work(&self) -> bool {
        false
    }
    /// Starts reading `len` values of `buf` from `offset`, after all recorded work, without
    /// waiting: a GPU backend submits the work and returns at once, so the host can record the
    /// next step while the device runs this one. Redeem with [`Backend::read_finish`].
    fn read_start(&self, buf: BufferId, offset: usize, len: usize) -> Result<PendingRead> {
        self.read(buf, offset, len).map(PendingRead::Ready)
    }
    /// Waits for a read begun with [`Backend::read_start`] and returns its values.
    fn read_finish(&self, read: PendingRead) -> Result<Vec<f32>> {
        match read {
            PendingRead::Ready(v) => Ok(v),
            PendingRead::Ticket(t) => Err(Error::invalid_config(format!(
                "read ticket {t} does not belong to this backend"
            ))),
        }
    }
    /// Runs everything recorded so far (no-op where operations run eagerly).
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// Bytes held by uploaded weights.
    fn weight_bytes(&self) -> usize;
    /// Per-kernel device timings gathered since the last reset, where the backend was built
    /// with profiling on and the device can time (GPU timestamp queries); empty otherwise.
    fn kernel_timings(&self) -> Vec<KernelTiming> {
        Vec::new()
    }
    /// Clears the totals of [`Backend::kernel_timings`] and [`Backend::host_timings`].
    fn reset_kernel_timings(&self) {}
    /// Host-side time around the device since the last reset (recording, submitting,
    /// waiting), as rows named `host: …`; empty where operations run eagerly on the host.
    fn host_timings(&self) -> Vec<KernelTiming> {
        Vec::new()
    }
    /// Persists what the backend compiled so far (a GPU pipeline cache) so the next start can
    /// skip it; called after the load-time warm-up. Returns whether the compiled kernels came
    /// from such a cache at start (`Some(true)`: warm), `None` where there is no cache.
    fn save_compiled(&self) -> Result<Option<bool>> {
        Ok(None)
    }

    /// `out[i, :] = dequant(table)[tokens[i], :]`.
    fn embed(&self, table: WeightId, tokens: &[u32], out: BufferId) -> Result<()>;
    /// Like [`Backend::embed`] for `n` tokens whose ids are read on the device from
    /// `ids[offset ..]` (f32 values, as [`Backend::argmax`] writes them), so a decode step can
    /// take the previous step's token without a round trip to the host. Ids outside the table
    /// leave their output rows unwritten.
    fn embed_indirect(
        &self,
        table: WeightId,
        ids: BufferId,
        offset: usize,
        n: usize,
        out: BufferId,
    ) -> Result<()> {
        let ids = self.read(ids, offset, n)?;
        let tokens: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
        self.embed(table, &tokens, out)
    }
    /// Writes the index of the largest of `x[0 .. len]` as an f32 value to `out[out_offset]`:
    /// the first index on ties, NaN never wins, 0 when nothing does (the rule of
    /// [`crate::generate::argmax`]). Greedy token selection on the device.
    fn argmax(&self, x: BufferId, len: usize, out: BufferId, out_offset: usize) -> Result<()> {
        let v = self.read(x, 0, len)?;
        self.write(out, out_offset, &[crate::generate::argmax(&v) as f32])
    }
    /// Row-wise RMSNorm of `rows` rows of `dim`: `out = x / rms(x) * weight`.
    fn rms_norm(
        &self,
        x: BufferId,
        weight: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// `out[n, rows] = x[n, cols] · Wᵀ` for `n` rows of activations.
    fn matmul(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()>;
    /// `out[n, rows] = rms_norm(x) · Wᵀ` for `n` rows of `norm.dim` values: the RMSNorm that
    /// precedes a projection, fused into it where the backend can (the decode matvec then
    /// normalises the activation vector it loads anyway). `scratch` (`n × dim` values) may
    /// receive the normalised rows; backends that fuse leave it untouched.
    fn rms_norm_matmul(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
    ) -> Result<()> {
        self.rms_norm(x, norm.weight, scratch, n, norm.dim, norm.eps)?;
        self.matmul(w, scratch, out, n)
    }
    /// A hint: the next RMSNorm of `x` will be `norm`, feeding the matmul of `w` (the next
    /// layer's q|k|v or gate|up projection, or the head), and the next op to write `x` is a
    /// residual add ([`Backend::attention_matmul_add`] or [`Backend::ffn_swiglu`]). A backend
    /// may then prepare that norm's input in the residual add's epilogue instead of running the
    /// norm on its own. Results do not depend on it: a backend that cannot use the hint, or
    /// finds anything else recorded between the two, runs the norm as usual. Default: ignored.
    fn expect_norm(&self, x: BufferId, norm: &RmsNorm, w: WeightId) -> Result<()> {
        let _ = (x, norm, w);
        Ok(())
    }
    /// `out[n, rows] += x[n, cols] · Wᵀ`: a matmul whose result is added to `out` (a residual
    /// connection), so the sum needs no separate pass. `x` and `out` are distinct buffers.
    fn matmul_add(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()>;
    /// The attention inputs of `p.n_tokens` rows of a fused projection `qkv` (each row `q | k | v`,
    /// [`QkvParams::row_len`] values): writes RoPE(q) to `q_out` (`n_tokens × q_dim`), and
    /// RoPE(k) and v to rows `pos0 ..` of `k_cache` and `v_cache`. One pass replaces two
    /// [`Backend::rope`] and two [`Backend::kv_store`] calls and computes the same values.
    fn rope_store_qkv(
        &self,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()>;
    /// A layer's attention inputs from its residual stream: [`Backend::rms_norm_matmul`] of `x`
    /// through the fused projection `w` into `qkv` (`p.n_tokens × p.row_len()` values), then
    /// [`Backend::rope_store_qkv`] into `q_out` and the caches. A backend may write `q_out` and
    /// the caches straight from the projection (the WebGPU decode matvec rotates each RoPE pair
    /// as it stores it), leaving `qkv` unused; `scratch` is the norm's scratch as in
    /// `rms_norm_matmul`.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_qkv_rope(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        self.rms_norm_matmul(x, norm, scratch, w, qkv, p.n_tokens)?;
        self.rope_store_qkv(qkv, q_out, k_cache, v_cache, p)
    }
    /// SwiGLU over a fused gate|up projection: `out[t, j] = silu(gate_up[t, j]) ·
    /// gate_up[t, width + j]` for `n` rows of `2 × width` values; `out` holds `n × width`.
    fn swiglu(&self, gate_up: BufferId, out: BufferId, n: usize, width: usize) -> Result<()>;
    /// `out[n, rows] += swiglu(gate_up) · Wᵀ`: the SwiGLU of `n` rows of `2 × width` values
    /// (see [`Backend::swiglu`]) fed to a residual-adding matmul. `scratch` (`n × width`
    /// values) takes the SwiGLU output in whatever form the backend's matmul reads best (the
    /// WebGPU decode matvec: 8-bit activation blocks).
    fn swiglu_matmul_add(
        &self,
        gate_up: BufferId,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
        width: usize,
    ) -> Result<()> {
        self.swiglu(gate_up, scratch, n, width)?;
        self.matmul_add(w, scratch, out, n)
    }
    /// A SwiGLU feed-forward block with its residual, over `n` rows of `x`:
    /// [`Backend::rms_norm_matmul`] of `x` (through `normed`) by the fused `w_gate_up` into
    /// `gate_up` (`n × 2·width`), then [`Backend::swiglu_matmul_add`] through `hidden`
    /// (`n × width`) by `w_down`, added to `x`. A backend may apply the SwiGLU as the gate|up
    /// projection writes its sums (the WebGPU decode matvec does, leaving `gate_up` unused).
    #[allow(clippy::too_many_arguments)]
    fn ffn_swiglu(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        normed: BufferId,
        w_gate_up: WeightId,
        gate_up: BufferId,
        hidden: BufferId,
        w_down: WeightId,
        n: usize,
        width: usize,
    ) -> Result<()> {
        self.rms_norm_matmul(x, norm, normed, w_gate_up, gate_up, n)?;
        self.swiglu_matmul_add(gate_up, hidden, w_down, x, n, width)
    }
    /// Rotates `n_tokens` rows of `n_heads` heads in place; token `i` is at `pos0 + i`.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: BufferId,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
        style: RopeStyle,
    ) -> Result<()>;
    /// Copies `n_tokens` rows of `row_len` from `src` into `cache` rows `pos0..pos0+n_tokens`.
    fn kv_store(
        &self,
        src: BufferId,
        cache: BufferId,
        pos0: usize,
        n_tokens: usize,
        row_len: usize,
    ) -> Result<()>;
    /// Causal attention of `q` (`n_tokens × n_heads × head_dim`) over cache rows
    /// `0 ..= pos0 + i` for query `i`; writes `n_tokens × n_heads × head_dim` to `out`.
    fn attention(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        out: BufferId,
        p: &AttentionParams,
    ) -> Result<()>;
    /// `out[n, rows] += attention(q, caches) · Wᵀ`: [`Backend::attention`] fed to a
    /// residual-adding matmul (the attention output projection). `scratch`
    /// (`n_tokens × n_heads × head_dim` values) takes the attention output in whatever form the
    /// backend's matmul reads best (the WebGPU decode matvec: 8-bit activation blocks).
    #[allow(clippy::too_many_arguments)]
    fn attention_matmul_add(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        scratch: BufferId,
        p: &AttentionParams,
        w: WeightId,
        out: BufferId,
    ) -> Result<()> {
        self.attention(q, k_cache, v_cache, scratch, p)?;
        self.matmul_add(w, scratch, out, p.n_tokens)
    }
    /// `out = silu(gate) * up`, elementwise over `len`.
    fn silu_mul(&self, gate: BufferId, up: BufferId, out: BufferId, len: usize) -> Result<()>;
    /// `dst += src`, elementwise over `len`.
    fn add(&self, dst: BufferId, src: BufferId, len: usize) -> Result<()>;
    /// Copies `len` values from `src[src_offset..]` to `dst[dst_offset..]`.
    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        len: usize,
    ) -> Result<()>;
}
