//! x86-64 AVX2 + FMA + F16C kernels.
//!
//! A 32-value block of `bits`-bit codes is exactly `bits` words. Each width is unpacked with
//! shifts and masks into 32 bytes in a fixed, width-specific order ([`block_order`]); the
//! activations are quantized in that same order, so the integer dot needs no shuffle:
//! `_mm256_maddubs_epi16(codes_u8, x_i8)` then `_mm256_madd_epi16(·, 1)` gives eight i32 partial
//! sums per block. 8-bit codes go through the sign trick instead (`code - 128` as i8), because
//! u8 × i8 pairs of 255 × 127 would saturate `maddubs`.

use super::{group_bias, group_sum, offset_at, Q8Activations, Q8Row, BLOCK};
use half::f16;
use lowbit_core::quant::QuantizedMatrix;
use std::arch::x86_64::*;

/// Whether the CPU has everything the kernels here use.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// 4-bit: low nibbles (even columns) then high nibbles (odd columns).
const ORDER4: [u8; 32] = {
    let mut o = [0u8; 32];
    let mut p = 0;
    while p < 32 {
        o[p] = if p < 16 { 2 * p } else { 2 * (p - 16) + 1 } as u8;
        p += 1;
    }
    o
};

/// 2-bit: 64-bit lane `k` holds `(byte j >> 2k) & 3`, i.e. column `4j + k`, at position `8k + j`.
const ORDER2: [u8; 32] = {
    let mut o = [0u8; 32];
    let mut p = 0;
    while p < 32 {
        o[p] = (4 * (p % 8) + p / 8) as u8;
        p += 1;
    }
    o
};

/// 3-bit: `packus` of (columns 0..8 | 8..16) and (16..24 | 24..32) interleaves the 128-bit lanes.
const ORDER3: [u8; 32] = {
    let mut o = [0u8; 32];
    let mut p = 0;
    while p < 32 {
        o[p] = match p / 8 {
            1 => p + 8,
            2 => p - 8,
            _ => p,
        } as u8;
        p += 1;
    }
    o
};

/// 8-bit: natural order.
const ORDER8: [u8; 32] = super::NATURAL;

/// For each byte of an unpacked block, the column within the block it holds.
pub(crate) fn block_order(bits: u8) -> &'static [u8; 32] {
    match bits {
        2 => &ORDER2,
        3 => &ORDER3,
        4 => &ORDER4,
        _ => &ORDER8,
    }
}

/// 3-bit unpacking: for each column `v` the two bytes holding bits `3v .. 3v+3` form a 16-bit
/// lane; multiplying by `2^(13 - 3v % 8)` and shifting right by 13 extracts the code.
/// `SHUF3[0]` covers columns 0..16, `SHUF3[1]` columns 16..32 (8 per 128-bit lane).
const SHUF3: [[u8; 32]; 2] = {
    let mut t = [[0u8; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let mut lane = 0;
        while lane < 16 {
            let v = 16 * h + lane;
            let k = (3 * v / 8) as u8;
            // Bytes 12..16 of the loaded 128 bits are zero, so `k + 1 == 12` reads zero.
            t[h][2 * lane] = k;
            t[h][2 * lane + 1] = k + 1;
            lane += 1;
        }
        h += 1;
    }
    t
};

/// Multipliers matching [`SHUF3`].
const MUL3: [[i16; 16]; 2] = {
    let mut t = [[0i16; 16]; 2];
    let mut h = 0;
    while h < 2 {
        let mut lane = 0;
        while lane < 16 {
            let v = 16 * h + lane;
            t[h][lane] = 1 << (13 - (3 * v) % 8);
            lane += 1;
        }
        h += 1;
    }
    t
};

/// Unpacks the block at `p` (`BITS` words) into 32 bytes in [`block_order`]; 8-bit codes come
/// out as `code - 128` (i8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_block<const BITS: usize>(p: *const u32) -> __m256i {
    match BITS {
        8 => _mm256_xor_si256(
            _mm256_loadu_si256(p as *const __m256i),
            _mm256_set1_epi8(0x80u8 as i8),
        ),
        4 => {
            let v = _mm_loadu_si128(p as *const __m128i);
            let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
        }
        2 => {
            let w = (p as *const i64).read_unaligned();
            let v = _mm256_srlv_epi64(_mm256_set1_epi64x(w), _mm256_set_epi64x(6, 4, 2, 0));
            _mm256_and_si256(v, _mm256_set1_epi8(0x03))
        }
        _ => {
            // Exactly 12 bytes: never reads past the row (or the matrix).
            let lo = _mm_loadl_epi64(p as *const __m128i);
            let v128 = _mm_insert_epi32(lo, p.add(2).read_unaligned() as i32, 2);
            let v = _mm256_broadcastsi128_si256(v128);
            let a = _mm256_shuffle_epi8(v, _mm256_loadu_si256(SHUF3[0].as_ptr() as *const _));
            let b = _mm256_shuffle_epi8(v, _mm256_loadu_si256(SHUF3[1].as_ptr() as *const _));
            let a = _mm256_mullo_epi16(a, _mm256_loadu_si256(MUL3[0].as_ptr() as *const _));
            let b = _mm256_mullo_epi16(b, _mm256_loadu_si256(MUL3[1].as_ptr() as *const _));
            _mm256_packus_epi16(_mm256_srli_epi16(a, 13), _mm256_srli_epi16(b, 13))
        }
    }
}

/// Eight i32 partial sums of `codes · x` for one block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot<const BITS: usize>(codes: __m256i, x: *const i8) -> __m256i {
    let x = _mm256_loadu_si256(x as *const __m256i);
    let p16 = if BITS == 8 {
        _mm256_maddubs_epi16(_mm256_abs_epi8(codes), _mm256_sign_epi8(x, codes))
    } else {
        _mm256_maddubs_epi16(codes, x)
    };
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// See [`super::quantized_rows`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
pub(crate) unsafe fn quantized_rows(
    m: &QuantizedMatrix,
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    match m.spec.bits {
        2 => rows::<2>(m, first_row, act, n, out),
        3 => rows::<3>(m, first_row, act, n, out),
        4 => rows::<4>(m, first_row, act, n, out),
        _ => rows::<8>(m, first_row, act, n, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows<const BITS: usize>(
    m: &QuantizedMatrix,
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    let count = out.len() / n;
    let rw = m.row_words();
    let gpr = m.groups_per_row();
    let bpg = m.spec.group_size / BLOCK;
    let nb = m.cols / BLOCK;
    assert!((first_row + count) * rw <= m.data.len());
    assert!((first_row + count) * gpr <= m.scales.len());
    assert!(act.qs.len() >= n * m.cols && act.d.len() >= n * nb);
    // Σx per group of every activation row, for the bias term.
    let gsums: Vec<f32> = (0..n * gpr)
        .map(|i| group_sum(act.row(i / gpr).sums, i % gpr, bpg))
        .collect();
    let mut gscale = vec![0f32; gpr];
    let mut gbias = vec![0f32; gpr];
    let mut bscale = vec![0f32; nb];
    // Prefill unpacks each weight row once and reuses it for all `n` activation rows; decode
    // unpacks each block in registers, straight into the dot product.
    let mut codes = vec![0u8; if n > 1 { m.cols } else { 0 }];
    for i in 0..count {
        let r = first_row + i;
        let words = m.data.as_ptr().add(r * rw);
        cvt_f16(&m.scales[r * gpr..(r + 1) * gpr], &mut gscale);
        for (g, (b, s)) in gbias.iter_mut().zip(&gscale).enumerate() {
            *b = group_bias(
                m.spec.scheme,
                m.spec.bits,
                *s,
                offset_at(m, r * gpr + g),
                BITS == 8,
            );
        }
        for (b, bs) in bscale.iter_mut().enumerate() {
            *bs = gscale[b / bpg];
        }
        if n > 1 {
            for b in 0..nb {
                let c = decode_block::<BITS>(words.add(b * BITS));
                _mm256_storeu_si256(codes.as_mut_ptr().add(b * BLOCK) as *mut __m256i, c);
            }
        }
        for j in 0..n {
            let x = act.row(j);
            let main = if n == 1 {
                dot_blocks::<BITS, true>(words, &[], &bscale, x)
            } else {
                dot_blocks::<BITS, false>(words, &codes, &bscale, x)
            };
            let bias: f32 = gbias
                .iter()
                .zip(&gsums[j * gpr..(j + 1) * gpr])
                .map(|(b, s)| b * s)
                .sum();
            out[i * n + j] = main + bias;
        }
    }
}

/// `Σ_blocks scale_b · d_b · Σ code·x_q` over a row, blocks taken from the packed `words`
/// (`FUSED`) or from already unpacked `codes`. Two accumulators hide the FMA latency.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_blocks<const BITS: usize, const FUSED: bool>(
    words: *const u32,
    codes: &[u8],
    bscale: &[f32],
    x: Q8Row<'_>,
) -> f32 {
    let nb = bscale.len();
    let qs = x.qs.as_ptr();
    let block = |b: usize| {
        let c = if FUSED {
            decode_block::<BITS>(words.add(b * BITS))
        } else {
            _mm256_loadu_si256(codes.as_ptr().add(b * BLOCK) as *const __m256i)
        };
        let i = block_dot::<BITS>(c, qs.add(b * BLOCK));
        let sd = _mm256_set1_ps(*bscale.get_unchecked(b) * *x.d.get_unchecked(b));
        (_mm256_cvtepi32_ps(i), sd)
    };
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut b = 0;
    while b + 2 <= nb {
        let (v0, s0) = block(b);
        let (v1, s1) = block(b + 1);
        acc0 = _mm256_fmadd_ps(v0, s0, acc0);
        acc1 = _mm256_fmadd_ps(v1, s1, acc1);
        b += 2;
    }
    if b < nb {
        let (v0, s0) = block(b);
        acc0 = _mm256_fmadd_ps(v0, s0, acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// f16 → f32, eight at a time with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn cvt_f16(src: &[f16], dst: &mut [f32]) {
    let len = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= len {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
        i += 8;
    }
    while i < len {
        dst[i] = f16_to_f32(src[i]);
        i += 1;
    }
}

/// `Σ a·b` over `min(a.len(), b.len())`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= len {
        for (k, a_k) in acc.iter_mut().enumerate() {
            let o = i + 8 * k;
            *a_k = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *a_k);
        }
        i += 32;
    }
    while i + 8 <= len {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    while i < len {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// `Σ a·b` with f16 `a`, over `min(a.len(), b.len())`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= len {
        let a0 = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i) as *const __m128i));
        let a1 = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i + 8) as *const __m128i));
        acc0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(pb.add(i + 8)), acc1);
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(acc0, acc1));
    while i < len {
        s += a[i].to_f32() * b[i];
        i += 1;
    }
    s
}

/// `y += alpha * x` over `min(x.len(), y.len())`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let len = x.len().min(y.len());
    let va = _mm256_set1_ps(alpha);
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= len {
        let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
        _mm256_storeu_ps(py.add(i), v);
        i += 8;
    }
    while i < len {
        y[i] += alpha * x[i];
        i += 1;
    }
}
