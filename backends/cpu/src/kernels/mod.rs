//! Kernel dispatch: one entry per operation, routed to the instruction set picked once per
//! backend ([`Isa`]). Per-architecture code lives beside this file (`scalar.rs`, `avx2.rs`,
//! `simd128.rs`), like candle's `quantized/{avx,simd128}.rs`.
//!
//! Quantized matmul works on int8 activations: each activation row is quantized in blocks of 32
//! with one f32 scale per block ([`Q8Activations`]), and a weight group's dot product is
//! `scale * Σ_blocks d_x · Σ q·x_q + bias * Σ x` (see `lowbit_core::quant`).

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
pub(crate) mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) mod simd128;

use half::f16;
use lowbit_core::quant::{QuantSpec, QuantizedMatrix, Scheme};

/// Values per activation block (one int8 scale each); every weight group is a whole number of
/// blocks because group sizes are multiples of 32.
pub(crate) const BLOCK: usize = 32;

/// The instruction set a [`crate::CpuBackend`] runs its kernels with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no explicit SIMD.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// wasm32 `simd128` (compiled in with `-C target-feature=+simd128`).
    Simd128,
}

impl Isa {
    /// The best instruction set this machine supports.
    pub fn detect() -> Isa {
        [Isa::Avx2, Isa::Simd128]
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// Whether this machine (or this build, for `simd128`) can run the kernels of `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::available(),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The instruction set named `name` ([`Isa::name`]).
    pub fn parse(name: &str) -> Option<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Simd128]
            .into_iter()
            .find(|i| i.name() == name)
    }

    /// Short name: `scalar`, `avx2`, `simd128`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Simd128 => "simd128",
        }
    }

    /// CPU features the kernels of `self` use.
    pub fn features(self) -> Vec<String> {
        let f: &[&str] = match self {
            Isa::Scalar => &[],
            Isa::Avx2 => &["avx2", "fma", "f16c"],
            Isa::Simd128 => &["simd128"],
        };
        f.iter().map(|s| s.to_string()).collect()
    }
}

/// `n` activation rows quantized to int8 in blocks of [`BLOCK`], in the value order the kernels
/// of one [`Isa`] unpack codes in (so no shuffle is needed on the weight side).
pub(crate) struct Q8Activations {
    /// Values per row.
    pub cols: usize,
    /// `n * cols` quantized values.
    pub qs: Vec<i8>,
    /// One scale per block; each row's scales start at a multiple of 8 (`d_stride`) and the
    /// padding is zero, so SIMD kernels can load eight at a time.
    pub d: Vec<f32>,
    /// Row stride of `d`: blocks per row rounded up to 8.
    pub d_stride: usize,
    /// Σ x per weight group (asymmetric weights only, for the offset term), `n * groups`.
    pub gsums: Vec<f32>,
    /// Weight groups per row (`gsums` stride).
    pub groups: usize,
    /// AVX2 only, symmetric weights of fewer than 8 bits without a grid: per block, the 16
    /// pairwise sums `zero · (x_q[2i] + x_q[2i+1])` that turn `Σ code·x_q` into
    /// `Σ (code - zero)·x_q`.
    pub corr: Vec<i16>,
}

/// One row of [`Q8Activations`].
#[derive(Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub gsums: &'a [f32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub corr: &'a [i16],
}

impl Q8Activations {
    /// Row `j`.
    pub fn row(&self, j: usize) -> Q8Row<'_> {
        Q8Row {
            qs: &self.qs[j * self.cols..(j + 1) * self.cols],
            d: &self.d[j * self.d_stride..(j + 1) * self.d_stride],
            gsums: self
                .gsums
                .get(j * self.groups..(j + 1) * self.groups)
                .unwrap_or(&[]),
            corr: self
                .corr
                .get(j * self.cols / 2..(j + 1) * self.cols / 2)
                .unwrap_or(&[]),
        }
    }
}

/// Quantizes `n` rows of `cols` (a multiple of 32) for a weight of format `spec`, on a learned
/// grid when `grid` (whose levels are signed: no zero-point correction).
pub(crate) fn quantize_activations(
    isa: Isa,
    x: &[f32],
    n: usize,
    cols: usize,
    spec: QuantSpec,
    grid: bool,
) -> Q8Activations {
    let nb = cols / BLOCK;
    let d_stride = nb.div_ceil(8) * 8;
    let bpg = spec.group_size / BLOCK;
    let groups = nb.div_ceil(bpg);
    let asym = spec.scheme == Scheme::Asymmetric;
    let mut a = Q8Activations {
        cols,
        qs: vec![0; n * cols],
        d: vec![0.0; n * d_stride],
        d_stride,
        gsums: vec![0.0; if asym { n * groups } else { 0 }],
        groups,
        corr: Vec::new(),
    };
    let order = block_order(isa, spec.bits);
    for (b, xb) in x[..n * cols].chunks_exact(BLOCK).enumerate() {
        let (row, rb) = (b / nb, b % nb);
        let q = &mut a.qs[b * BLOCK..(b + 1) * BLOCK];
        a.d[row * d_stride + rb] = quantize_block(isa, xb, order, q);
        if asym {
            a.gsums[row * groups + rb / bpg] += xb.iter().sum::<f32>();
        }
    }
    if isa == Isa::Avx2 && !asym && !grid && spec.bits < 8 {
        let zero = code_zero(spec.scheme, spec.bits) as i16;
        a.corr =
            a.qs.chunks_exact(2)
                .map(|p| zero * (p[0] as i16 + p[1] as i16))
                .collect();
    }
    a
}

/// Quantizes one block of 32 values to int8 with scale `max|x| / 127`, rounding to nearest
/// (ties to even), and stores value `order[p]` at position `p` of `q`; returns the scale.
/// Every instruction set rounds the same way, so their activations are bit-identical.
#[inline]
fn quantize_block(isa: Isa, xb: &[f32], order: &[u8; 32], q: &mut [i8]) -> f32 {
    match isa {
        // SAFETY: see `quantized_rows`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::quantize_block(xb, order, q) },
        _ => {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            // 1.5 · 2^23: adding and subtracting it rounds |v| < 2^22 to nearest, ties to even.
            const MAGIC: f32 = 12_582_912.0;
            for (p, &src) in order.iter().enumerate() {
                q[p] = ((xb[src as usize] * id + MAGIC) - MAGIC) as i8;
            }
            d
        }
    }
}

/// Identity order of a block (the scalar and simd128 kernels unpack codes in natural order, and
/// so does the scalar grid kernel simd128 hands grid matrices to).
const NATURAL: [u8; 32] = {
    let mut o = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        o[i] = i as u8;
        i += 1;
    }
    o
};

/// For each position of an unpacked block, the column (within the block) it holds.
fn block_order(isa: Isa, bits: u8) -> &'static [u8; 32] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::block_order(bits),
        _ => {
            let _ = bits;
            &NATURAL
        }
    }
}

/// What the kernels subtract from every code before multiplying: `2^(bits-1)` for symmetric
/// weights (so the signed value `code - zero` times the scale is the weight, and no bias term
/// is needed), 128 for asymmetric 8-bit codes (AVX2 `maddubs` would saturate on u8 × i8
/// products of 255 × 127, so 8-bit codes are always multiplied signed), 0 otherwise. Every
/// instruction set uses the same convention, so they round the same way.
#[inline]
pub(crate) fn code_zero(scheme: Scheme, bits: u8) -> i32 {
    match scheme {
        Scheme::Symmetric => 1 << (bits - 1),
        Scheme::Asymmetric if bits == 8 => 128,
        Scheme::Asymmetric => 0,
    }
}

/// The additive term of one group when weights are `scale * code + dequant_bias`.
#[inline]
pub(crate) fn dequant_bias(scheme: Scheme, bits: u8, scale: f32, offset: f32) -> f32 {
    match scheme {
        Scheme::Symmetric => -scale * (1u32 << (bits - 1)) as f32,
        Scheme::Asymmetric => offset,
    }
}

/// The additive term of one group when the kernel multiplies `code - code_zero` (see
/// [`code_zero`]): `w = scale * (code - zero) + kernel_bias`; zero for symmetric weights.
#[inline]
pub(crate) fn kernel_bias(scheme: Scheme, bits: u8, scale: f32, offset: f32) -> f32 {
    match scheme {
        Scheme::Symmetric => 0.0,
        Scheme::Asymmetric => offset + code_zero(scheme, bits) as f32 * scale,
    }
}

/// Offset of group `(r, g)`, 0 when symmetric.
#[inline]
pub(crate) fn offset_at(m: &QuantizedMatrix, idx: usize) -> f32 {
    m.offsets.get(idx).map_or(0.0, |o| o.to_f32())
}

/// Quantized rows `first_row ..` of `m` times the `n` activation rows: writes
/// `out[i * n + j]` for weight row `first_row + i` (`out.len() / n` rows).
pub(crate) fn quantized_rows(
    isa: Isa,
    m: &QuantizedMatrix,
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    match isa {
        // SAFETY: an `Avx2` backend is only built after `avx2::available()` said yes.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::quantized_rows(m, first_row, act, n, out) },
        // Grid matrices go to the portable table-lookup kernel (natural order, like simd128's).
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 if m.grid.is_none() => simd128::quantized_rows(m, first_row, act, n, out),
        _ => scalar::quantized_rows(m, first_row, act, n, out),
    }
}

/// Dense weight rows, f32 or f16.
#[derive(Clone, Copy)]
pub(crate) enum DenseRows<'a> {
    /// Row-major f32.
    F32(&'a [f32]),
    /// Row-major f16.
    F16(&'a [f16]),
}

/// Dense rows `first_row ..` of `w` (`cols` wide) times `n` rows of `x`; same `out` layout as
/// [`quantized_rows`].
pub(crate) fn dense_rows(
    isa: Isa,
    w: DenseRows<'_>,
    cols: usize,
    first_row: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    for (i, o) in out.chunks_exact_mut(n).enumerate() {
        let r = first_row + i;
        for (j, oj) in o.iter_mut().enumerate() {
            let xj = &x[j * cols..(j + 1) * cols];
            *oj = match w {
                DenseRows::F32(d) => dot(isa, &d[r * cols..(r + 1) * cols], xj),
                DenseRows::F16(d) => dot_f16(isa, &d[r * cols..(r + 1) * cols], xj),
            };
        }
    }
}

/// `Σ a·b` over `a.len()` (== `b.len()`).
#[inline]
pub(crate) fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        // SAFETY: see `quantized_rows`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot_f32(a, b) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 => simd128::dot_f32(a, b),
        _ => scalar::dot_f32(a, b),
    }
}

/// `Σ a·b` with f16 `a`.
#[inline]
pub(crate) fn dot_f16(isa: Isa, a: &[f16], b: &[f32]) -> f32 {
    match isa {
        // SAFETY: see `quantized_rows`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot_f16(a, b) },
        _ => scalar::dot_f16(a, b),
    }
}

/// `y += alpha * x`.
#[inline]
pub(crate) fn axpy(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    match isa {
        // SAFETY: see `quantized_rows`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::axpy(alpha, x, y) },
        _ => scalar::axpy(alpha, x, y),
    }
}
