//! The op set every model family is written in.
//!
//! A model *records* a step as a list of [`Op`]s and hands it to [`crate::Backend::run`]. The
//! ops are primitive (a linear map, a norm, an activation, RoPE, a KV write, attention …); a
//! backend is free to fuse neighbouring ops into one kernel (the WebGPU backend runs
//! `[norm, linear]`, `[linear, rope, rope, kv-write]`, `[linear, glu, linear+acc]` and
//! `[attention, linear+acc]` as single kernels), but results never depend on it: every op list
//! computes what running its ops one by one computes, within the conformance suite's
//! tolerances ([`crate::conformance`]). Model code never names a fused kernel.
//!
//! Buffers are addressed by element offsets. A buffer made with
//! [`crate::Backend::alloc_scratch`] holds temporaries only: a backend may leave it unwritten
//! when no later op of the same list reads what an op wrote there (a fused kernel keeps the
//! value in registers). Every other buffer is written exactly as the ops say.

use crate::backend::{BufferId, WeightId};
use crate::error::{Error, Result};
use crate::kv::KvView;

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF LLaMA (q/k weights permuted by the converter).
    Adjacent,
    /// Halves `(i, i + d/2)`: NeoX / HF layout.
    Halves,
}

/// Which normalisation a [`Op::Norm`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) · weight`.
    Rms,
    /// `(x − mean(x)) / sqrt(var(x) + eps) · weight (+ bias)`.
    Layer,
}

/// An elementwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `x · sigmoid(x)`.
    Silu,
    /// `x · Φ(x)`, the exact (erf) GELU of BERT and Whisper.
    Gelu,
    /// `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`, GPT-2's approximation.
    GeluTanh,
    /// `x · sigmoid(1.702 x)`, CLIP's.
    QuickGelu,
}

impl Activation {
    /// The activation of one value, in f64 (the reference every backend is checked against).
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }

    /// Stable name (`silu`, `gelu`, `gelu_tanh`, `quick_gelu`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::QuickGelu => "quick_gelu",
        }
    }
}

/// The error function, from the Chebyshev fit of erfc in *Numerical Recipes* (fractional
/// error below 1.2e-7 everywhere: well inside any f32 op's tolerance).
pub fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = 1.0
        - t * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

/// Which keys a query row of [`Op::Attention`] sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mask {
    /// Query `i` (at position `pos0 + i`) sees key rows `0 ..= pos0 + i` (decoders).
    Causal,
    /// Every query sees key rows `0 .. kv_len` (encoders, cross-attention).
    None,
    /// Every query sees key rows `0 .. valid` only (a padded batch row); `valid ≤ kv_len`.
    Padding {
        /// Key rows that hold real tokens.
        valid: usize,
    },
    /// Causal, and query `i` sees at most the last `window` key rows `pos0 + i + 1 − window ..`
    /// (sliding-window attention).
    Window {
        /// Keys per query, at least 1.
        window: usize,
    },
}

impl Mask {
    /// The key rows `start .. end` that query `i` (at position `pos0 + i`) attends to over a
    /// view of `kv_len` rows.
    pub fn keys(self, pos0: usize, i: usize, kv_len: usize) -> (usize, usize) {
        let pos = pos0 + i;
        match self {
            Mask::Causal => (0, (pos + 1).min(kv_len)),
            Mask::None => (0, kv_len),
            Mask::Padding { valid } => (0, valid.min(kv_len)),
            Mask::Window { window } => {
                let end = (pos + 1).min(kv_len);
                (end.saturating_sub(window.max(1)), end)
            }
        }
    }
}

/// `rows` rows of `width` values starting at column `col` of rows that are `stride` values
/// apart, from `offset` on: a column slice of a row-major matrix (e.g. the key columns of a
/// fused q|k|v projection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cols {
    /// The buffer.
    pub buf: BufferId,
    /// Element offset of row 0's first column.
    pub offset: usize,
    /// Values between the starts of consecutive rows.
    pub stride: usize,
}

impl Cols {
    /// Rows of `stride` values from the start of `buf`, columns from `col` on.
    pub fn new(buf: BufferId, col: usize, stride: usize) -> Self {
        Cols {
            buf,
            offset: col,
            stride,
        }
    }

    /// Contiguous rows of `width` values from the start of `buf`.
    pub fn dense(buf: BufferId, width: usize) -> Self {
        Cols::new(buf, 0, width)
    }

    /// Element index of value `j` of row `r`.
    pub fn at(&self, r: usize, j: usize) -> usize {
        self.offset + r * self.stride + j
    }

    /// Values a buffer needs to hold `rows` rows of `width` values of this view.
    pub fn span(&self, rows: usize, width: usize) -> usize {
        if rows == 0 {
            0
        } else {
            self.offset + (rows - 1) * self.stride + width
        }
    }
}

/// Where [`Op::Embed`] takes its token ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenIds {
    /// Ids known on the host.
    Host(Vec<u32>),
    /// `n` ids stored as f32 values at `buf[offset ..]` (as [`Op::Argmax`] writes them), so a
    /// decode step takes the previous step's token without a round trip to the host. Ids
    /// outside the table leave their output rows unwritten.
    Device {
        /// Buffer holding the ids.
        buf: BufferId,
        /// Element offset of the first id.
        offset: usize,
        /// Ids to look up.
        n: usize,
    },
}

impl TokenIds {
    /// Number of ids (rows written).
    pub fn len(&self) -> usize {
        match self {
            TokenIds::Host(v) => v.len(),
            TokenIds::Device { n, .. } => *n,
        }
    }

    /// Whether there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shape of an [`Op::Rope`]: `n_tokens` rows of `n_heads` heads of `head_dim`, token `i` at
/// position `pos0 + i`.
#[derive(Clone, Copy, Debug, PartialEq, Hash, Eq)]
pub struct RopeShape {
    /// Token rows.
    pub n_tokens: usize,
    /// Heads per row.
    pub n_heads: usize,
    /// Dimension of one head (even).
    pub head_dim: usize,
    /// Position of the first row.
    pub pos0: usize,
    /// RoPE base, as f32 bits (so the shape hashes; see [`RopeShape::theta`]).
    pub theta_bits: u32,
    /// Pairing.
    pub style: RopeStyle,
}

impl RopeShape {
    /// The RoPE base.
    pub fn theta(&self) -> f32 {
        f32::from_bits(self.theta_bits)
    }

    /// Values per row (`n_heads × head_dim`).
    pub fn width(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// Shape of an [`Op::Attention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Query rows.
    pub n_tokens: usize,
    /// Position of query row 0 (for [`Mask::Causal`] and [`Mask::Window`]).
    pub pos0: usize,
    /// Key/value rows of the view to attend over.
    pub kv_len: usize,
    /// Query heads (a multiple of the view's key/value heads: grouped-query attention).
    pub n_heads: usize,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// Which keys each query sees.
    pub mask: Mask,
}

/// Parameters of an [`Op::Im2col`]: the columns of a convolution, so it runs as a linear map.
///
/// Input: `channels` planes of `height × width` values (`[C, H, W]`; a 1-D signal has
/// `height = 1`). Output row `(oy, ox)` (row-major over the output grid) holds, at column
/// `c · kh · kw + dy · kw + dx`, the input value at `(c, oy·stride − pad + dy, ox·stride − pad + dx)`
/// (0 outside), the order of a PyTorch `Conv1d`/`Conv2d` weight `[out, C, kh, kw]` read row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Im2col {
    /// Input channels.
    pub channels: usize,
    /// Input rows (1 for a 1-D signal).
    pub height: usize,
    /// Input columns (samples of a 1-D signal).
    pub width: usize,
    /// Kernel rows (1 for 1-D).
    pub kernel_h: usize,
    /// Kernel columns.
    pub kernel_w: usize,
    /// Stride, both directions.
    pub stride: usize,
    /// Zero padding on every side (along height only where `kernel_h > 1`).
    pub pad: usize,
}

impl Im2col {
    /// Output grid `(rows, cols)`.
    pub fn out_grid(&self) -> (usize, usize) {
        let stride = self.stride.max(1);
        let pad_h = if self.kernel_h > 1 { self.pad } else { 0 };
        let oh = (self.height + 2 * pad_h).saturating_sub(self.kernel_h) / stride + 1;
        let ow = (self.width + 2 * self.pad).saturating_sub(self.kernel_w) / stride + 1;
        (oh, ow)
    }

    /// Output rows (`oh × ow`).
    pub fn out_rows(&self) -> usize {
        let (h, w) = self.out_grid();
        h * w
    }

    /// Values per output row (`C × kh × kw`).
    pub fn row_len(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }

    /// Padding applied along the height.
    pub fn pad_h(&self) -> usize {
        if self.kernel_h > 1 {
            self.pad
        } else {
            0
        }
    }
}

/// One primitive operation. See the module documentation for the contract.
#[derive(Clone, Debug)]
pub enum Op {
    /// `out[i, :] = table[ids[i], :]` (the table dequantized).
    Embed {
        /// Embedding table (`vocab × dim`).
        table: WeightId,
        /// Token ids.
        ids: TokenIds,
        /// `ids.len() × dim` values.
        out: BufferId,
    },
    /// `out[t, :] (+)= x[t, :] · Wᵀ (+ bias)` for `n` rows: `x` holds `n × cols`, `out`
    /// `n × rows` of the weight. With `accumulate` the result is added to `out` (a residual
    /// connection). `x` and `out` are distinct buffers.
    Linear {
        /// The weight (`rows × cols`).
        w: WeightId,
        /// Optional bias of `rows` values.
        bias: Option<BufferId>,
        /// Input rows.
        x: BufferId,
        /// Output rows.
        out: BufferId,
        /// Rows.
        n: usize,
        /// Add to `out` instead of overwriting it.
        accumulate: bool,
    },
    /// Row-wise normalisation of `rows` rows of `dim` values from `x` into `out` (may be the
    /// same buffer).
    Norm {
        /// RMSNorm or LayerNorm.
        kind: NormKind,
        /// Input rows.
        x: BufferId,
        /// Output rows.
        out: BufferId,
        /// `dim` per-column weights.
        weight: BufferId,
        /// Optional `dim` per-column biases (LayerNorm).
        bias: Option<BufferId>,
        /// Rows.
        rows: usize,
        /// Values per row.
        dim: usize,
        /// Added to the variance (mean square).
        eps: f32,
    },
    /// `out[i] = act(x[i])` over `len` values (`x` may be `out`).
    Activation {
        /// The activation.
        act: Activation,
        /// Input.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Values.
        len: usize,
    },
    /// A gated product over a fused gate|up projection: `out[t, j] = act(x[t, j]) ·
    /// x[t, width + j]` for `n` rows of `2 × width` values; `out` holds `n × width`.
    Glu {
        /// Activation of the gate half (SiLU: SwiGLU; GELU: GeGLU).
        act: Activation,
        /// Gate|up rows.
        x: BufferId,
        /// Output rows.
        out: BufferId,
        /// Rows.
        n: usize,
        /// Values per half row.
        width: usize,
    },
    /// RoPE of the heads in `x` written to `out` (which may be the same slice: in place).
    Rope {
        /// Source rows (`shape.width()` values each).
        x: Cols,
        /// Destination rows.
        out: Cols,
        /// Rows, heads, position and pairing.
        shape: RopeShape,
    },
    /// Stores `n_tokens` key rows and value rows at rows `pos0 ..` of a KV view.
    KvWrite {
        /// Key rows (`kv.row_len()` values each).
        k: Cols,
        /// Value rows.
        v: Cols,
        /// The layer's cache.
        kv: KvView,
        /// First cache row written.
        pos0: usize,
        /// Rows.
        n_tokens: usize,
    },
    /// Scaled dot-product attention of `q` (`n_tokens × n_heads × head_dim`) over the rows of
    /// `kv` per the mask; writes `n_tokens × n_heads × head_dim` to `out`.
    Attention {
        /// Queries.
        q: BufferId,
        /// Keys and values (a layer's cache, or encoder states for cross-attention).
        kv: KvView,
        /// Output rows.
        out: BufferId,
        /// Rows, heads, scale and mask.
        shape: AttentionShape,
    },
    /// `dst += src` over `len` values.
    Add {
        /// Accumulator.
        dst: BufferId,
        /// Addend.
        src: BufferId,
        /// Values.
        len: usize,
    },
    /// `x[i] *= factor` over `len` values, in place (Gemma's embedding scale).
    Scale {
        /// The values.
        x: BufferId,
        /// Values.
        len: usize,
        /// The multiplier.
        factor: f32,
    },
    /// Row-wise softmax of `rows` rows of `len` values, in place.
    Softmax {
        /// The rows.
        x: BufferId,
        /// Rows.
        rows: usize,
        /// Values per row.
        len: usize,
    },
    /// Writes the index of the largest of `x[0 .. len]` as an f32 value to `out[out_offset]`:
    /// the first index on ties, NaN never wins, 0 when nothing does (the rule of
    /// [`crate::generate::argmax`]). Greedy token selection on the device.
    Argmax {
        /// Values.
        x: BufferId,
        /// Values considered.
        len: usize,
        /// Receives the index.
        out: BufferId,
        /// Element written.
        out_offset: usize,
    },
    /// Copies `len` values from `src[src_offset ..]` to `dst[dst_offset ..]`.
    Copy {
        /// Source.
        src: BufferId,
        /// First source element.
        src_offset: usize,
        /// Destination.
        dst: BufferId,
        /// First destination element.
        dst_offset: usize,
        /// Values.
        len: usize,
    },
    /// The convolution columns of `x` (see [`Im2col`]) into `out` (`out_rows × row_len`), so a
    /// [`Op::Linear`] by the flattened kernel computes a conv1d, conv2d or patch embedding.
    Im2col {
        /// Input planes.
        x: BufferId,
        /// Output rows.
        out: BufferId,
        /// Geometry.
        shape: Im2col,
    },
}

impl Op {
    /// Short stable name of the op kind (`linear`, `norm`, …), for errors and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embed { .. } => "embed",
            Op::Linear { .. } => "linear",
            Op::Norm { .. } => "norm",
            Op::Activation { .. } => "activation",
            Op::Glu { .. } => "glu",
            Op::Rope { .. } => "rope",
            Op::KvWrite { .. } => "kv_write",
            Op::Attention { .. } => "attention",
            Op::Add { .. } => "add",
            Op::Scale { .. } => "scale",
            Op::Softmax { .. } => "softmax",
            Op::Argmax { .. } => "argmax",
            Op::Copy { .. } => "copy",
            Op::Im2col { .. } => "im2col",
        }
    }

    /// Buffers this op reads (weights excluded; a KV view's buffers included).
    pub fn reads(&self) -> Vec<BufferId> {
        match self {
            Op::Embed { ids, .. } => match ids {
                TokenIds::Device { buf, .. } => vec![*buf],
                TokenIds::Host(_) => Vec::new(),
            },
            Op::Linear {
                bias,
                x,
                out,
                accumulate,
                ..
            } => {
                let mut v = vec![*x];
                v.extend(bias);
                if *accumulate {
                    v.push(*out);
                }
                v
            }
            Op::Norm {
                x, weight, bias, ..
            } => {
                let mut v = vec![*x, *weight];
                v.extend(bias);
                v
            }
            Op::Activation { x, .. }
            | Op::Glu { x, .. }
            | Op::Scale { x, .. }
            | Op::Softmax { x, .. } => vec![*x],
            Op::Rope { x, .. } => vec![x.buf],
            Op::KvWrite { k, v, .. } => vec![k.buf, v.buf],
            Op::Attention { q, kv, .. } => {
                let mut r = vec![*q, kv.k, kv.v];
                r.extend(kv.side.iter().flat_map(|s| [s.k, s.v]));
                r
            }
            Op::Add { dst, src, .. } => vec![*dst, *src],
            Op::Argmax { x, .. } => vec![*x],
            Op::Copy { src, .. } => vec![*src],
            Op::Im2col { x, .. } => vec![*x],
        }
    }

    /// Buffers this op writes.
    pub fn writes(&self) -> Vec<BufferId> {
        match self {
            Op::Embed { out, .. }
            | Op::Linear { out, .. }
            | Op::Norm { out, .. }
            | Op::Activation { out, .. }
            | Op::Glu { out, .. }
            | Op::Attention { out, .. }
            | Op::Argmax { out, .. }
            | Op::Im2col { out, .. } => vec![*out],
            Op::Rope { out, .. } => vec![out.buf],
            Op::KvWrite { kv, .. } => {
                let mut w = vec![kv.k, kv.v];
                w.extend(kv.side.iter().flat_map(|s| [s.k, s.v]));
                w
            }
            Op::Add { dst, .. } => vec![*dst],
            Op::Scale { x, .. } | Op::Softmax { x, .. } => vec![*x],
            Op::Copy { dst, .. } => vec![*dst],
        }
    }
}

/// Whether a value an op wrote to `buf` is read again by `rest` (the ops after it) before
/// something overwrites all of it. Backends that fuse use it, together with
/// [`crate::Backend::alloc_scratch`], to decide whether a temporary must reach memory. The
/// answer is conservative: any later read counts, any partial write does not end the value.
pub fn read_later(buf: BufferId, rest: &[Op]) -> bool {
    for op in rest {
        if op.reads().contains(&buf) {
            return true;
        }
        let overwrites = match op {
            Op::Linear {
                out, accumulate, ..
            } => *out == buf && !accumulate,
            Op::Norm { out, x, .. } => *out == buf && *x != buf,
            Op::Glu { out, .. } | Op::Attention { out, .. } | Op::Im2col { out, .. } => *out == buf,
            _ => false,
        };
        if overwrites {
            return false;
        }
    }
    false
}

/// Checks a shape condition of an op, as backends do before running it.
///
/// Errors with `INVALID_CONFIG` naming the op and what is wrong.
pub fn ensure(op: &str, ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(format!("{op}: {}", what())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5), erf(1), erf(2) to 1e-7 (tables).
        for (x, want) in [
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265),
        ] {
            assert!((erf(x) - want).abs() < 1e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-7);
        }
    }

    #[test]
    fn masks_select_the_stated_keys() {
        assert_eq!(Mask::Causal.keys(3, 1, 10), (0, 5));
        assert_eq!(Mask::None.keys(3, 1, 10), (0, 10));
        assert_eq!(Mask::Padding { valid: 7 }.keys(0, 0, 10), (0, 7));
        assert_eq!(Mask::Window { window: 2 }.keys(3, 1, 10), (3, 5));
        assert_eq!(Mask::Window { window: 9 }.keys(0, 0, 10), (0, 1));
    }

    #[test]
    fn im2col_geometry_matches_conv_output_size() {
        // Whisper's second conv: 3-wide, stride 2, pad 1 over 3000 frames → 1500.
        let s = Im2col {
            channels: 384,
            height: 1,
            width: 3000,
            kernel_h: 1,
            kernel_w: 3,
            stride: 2,
            pad: 1,
        };
        assert_eq!(s.out_grid(), (1, 1500));
        assert_eq!(s.row_len(), 384 * 3);
        // ViT-B/16 on 224×224: 14×14 patches of 3·16·16.
        let p = Im2col {
            channels: 3,
            height: 224,
            width: 224,
            kernel_h: 16,
            kernel_w: 16,
            stride: 16,
            pad: 0,
        };
        assert_eq!(p.out_grid(), (14, 14));
        assert_eq!(p.row_len(), 768);
    }

    #[test]
    fn read_later_sees_reads_and_full_overwrites() {
        let (a, b, c) = (BufferId(1), BufferId(2), BufferId(3));
        let lin = |x, out, accumulate| Op::Linear {
            w: WeightId(0),
            bias: None,
            x,
            out,
            n: 1,
            accumulate,
        };
        assert!(read_later(a, &[lin(a, b, false)]));
        assert!(!read_later(a, &[lin(b, a, false), lin(a, c, false)]));
        assert!(read_later(a, &[lin(b, a, true)]));
        assert!(!read_later(a, &[lin(b, c, false)]));
    }
}
