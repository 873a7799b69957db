//! The [`Backend`] trait: a device that owns typed buffers and runs the op set of
//! [`crate::ops`].
//!
//! Model code is written once against this trait, so every model family runs on every backend.
//! Buffers are opaque handles with an element type ([`DType`]). Ops are *recorded* in order
//! ([`Backend::run`]): the CPU backend runs them at once, a GPU backend fuses what it can,
//! batches them into one submission and only runs them when a [`Backend::read`] (or
//! [`Backend::flush`]) needs the result. Reads are futures: a browser cannot block on the
//! device, so only native code's top level waits ([`crate::future::block_on`]).

use crate::error::{Error, Result};
use crate::future::{MaybeSend, MaybeSync, ReadFuture};
use crate::ops::Op;
use crate::quant::QuantizedMatrix;
use half::f16;

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: every op's activations.
    F32,
    /// 16-bit float (IEEE half).
    F16,
    /// 8-bit blocks of 32 values: 32 signed codes (8 little-endian u32 words, value `j` in
    /// byte `j`), then the block's f32 scale; value = code × scale. 36 bytes per block.
    Q8Block,
    /// Asymmetric `bits`-bit blocks of `group` values (a quantized KV cache): per block,
    /// `group × bits / 32` little-endian u32 words of codes (value `j` at bit `j × bits` of the
    /// block's bit stream), then its f16 scale and f16 minimum in one word; value = code ×
    /// scale + minimum. `bits` is 2, 3, 4 or 8; `group` a positive multiple of 32.
    QBlock {
        /// Bits per code.
        bits: u8,
        /// Values per block.
        group: u16,
    },
}

impl DType {
    /// The quantized-KV block type of `bits` (2, 3, 4, 8) in groups of `group` values (a
    /// positive multiple of 32), or `INVALID_CONFIG`.
    pub fn q_block(bits: u8, group: usize) -> crate::error::Result<DType> {
        if !matches!(bits, 2 | 3 | 4 | 8) || group == 0 || !group.is_multiple_of(32) || group > 4096
        {
            return Err(crate::error::Error::invalid_config(format!(
                "a quantized block needs 2, 3, 4 or 8 bits and a group of a multiple of 32 up to \
                 4096 values; got {bits} bits in groups of {group}"
            )));
        }
        Ok(DType::QBlock {
            bits,
            group: group as u16,
        })
    }

    /// Values per block (1 for plain floats).
    pub fn block(self) -> usize {
        match self {
            DType::F32 | DType::F16 => 1,
            DType::Q8Block => 32,
            DType::QBlock { group, .. } => usize::from(group).max(1),
        }
    }

    /// Bytes `len` values take (`len` rounded up to whole blocks).
    pub fn bytes_for(self, len: usize) -> usize {
        match self {
            DType::F32 => 4 * len,
            DType::F16 => 2 * len,
            DType::Q8Block => len.div_ceil(32) * 36,
            DType::QBlock { bits, group } => {
                let g = usize::from(group).max(1);
                len.div_ceil(g) * (g * usize::from(bits) / 8 + 4)
            }
        }
    }

    /// Stable name (`f32`, `f16`, `q8_block`, `q_block`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8Block => "q8_block",
            DType::QBlock { .. } => "q_block",
        }
    }
}

/// Handle of a buffer owned by a backend.
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
                (WeightMatrix::Quantized(a), WeightMatrix::Quantized(b))
                    if a.spec == b.spec && a.rotation == b.rotation =>
                {
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
/// model can serve many requests. Buffers are typed arrays addressed by element offsets.
pub trait Backend: MaybeSend + MaybeSync {
    /// Name, device and features.
    fn info(&self) -> BackendInfo;

    /// Uploads a weight matrix (already packed; never re-laid out on the device at run time).
    fn upload_weight(&self, weight: WeightMatrix) -> Result<WeightId>;
    /// Creates an f32 buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<BufferId>;
    /// Creates a zeroed buffer of `len` values of `dtype`.
    fn alloc(&self, dtype: DType, len: usize) -> Result<BufferId>;
    /// Creates an f32 buffer of `len` values for temporaries: a backend may leave a value an op
    /// writes there unwritten when no later op of the same [`Backend::run`] list reads it (it
    /// fused the producer into the consumer). Default: an ordinary buffer.
    fn alloc_scratch(&self, len: usize) -> Result<BufferId> {
        self.alloc(DType::F32, len)
    }
    /// Releases a buffer (unknown ids are ignored).
    fn free(&self, buf: BufferId);
    /// Overwrites `data.len()` values of `buf` from `offset`, converting to the buffer's type
    /// (a block type needs `offset` and the length in whole blocks).
    fn write(&self, buf: BufferId, offset: usize, data: &[f32]) -> Result<()>;
    /// Reads `len` values of `buf` from `offset`, as f32, after all recorded work. A device
    /// that queues work submits it now and returns at once: the host may record more work
    /// before it awaits the values.
    fn read(&self, buf: BufferId, offset: usize, len: usize) -> ReadFuture;
    /// Records `ops` in order (see [`crate::ops`]); the CPU backend runs them at once.
    ///
    /// Errors with `INVALID_CONFIG` on an op whose buffers, weights or shapes do not fit
    /// (nothing of a refused op is run; ops before it may have been).
    fn run(&self, ops: &[Op]) -> Result<()>;
    /// Whether operations are queued and run later on a device (a GPU backend): callers may
    /// then record the next step before awaiting this one's read. `false` where they run at
    /// once.
    fn queues_work(&self) -> bool {
        false
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
}
