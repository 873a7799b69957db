//! x86-64 AVX2 + FMA + F16C kernels.
//!
//! A 32-value block of `bits`-bit codes is exactly `bits` words. Each width is unpacked with
//! shifts and masks into 32 bytes in a fixed, width-specific order ([`block_order`]); the
//! activations are quantized in that same order, so the integer dot needs no shuffle:
//! `_mm256_maddubs_epi16(codes_u8, x_i8)` then `_mm256_madd_epi16(·, 1)` gives eight i32 partial
//! sums per block. 8-bit codes go through the sign trick instead (`code - 128` as i8), because
//! u8 × i8 pairs of 255 × 127 would saturate `maddubs`.
//!
//! Matrices on a learned grid (`GRID`) map each unpacked code to its i8 level with one
//! `_mm256_shuffle_epi8` against the (up to 16) levels held in both 128-bit lanes, then multiply
//! signed × signed like 8-bit codes: `maddubs(|level|, sign(x, level))`. That is exact for every
//! level, −128 included: `abs_epi8(−128)` is `0x80`, which `maddubs` reads as the unsigned 128,
//! and `sign_epi8` only ever negates activations, which lie in −127 ..= 127. A pair sums to at
//! most 2 · 128 · 127 = 32512, so `maddubs` never saturates.

use super::{code_zero, Q8Activations, Q8Row, BLOCK};
use half::f16;
use lowbit_core::quant::{QuantizedMatrix, Scheme};
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
        3 | 5 | 6 => &ORDER3,
        4 => &ORDER4,
        _ => &ORDER8,
    }
}

/// 5- and 6-bit unpacking, the 3-bit method with two loads: register `h` (0, 1) gathers the
/// 16-bit lanes of columns `16h .. 16h + 16` (8 per 128-bit lane) from a 16-byte load at byte
/// `base(h)` of the block (0, and the last 16 bytes of the block for `h = 1`, so no load reads
/// past the block); a lane whose second byte lies outside its load holds a code that ends
/// within its first byte, so that byte is shuffled in as zero (`0x80`). The codes then come out
/// in [`ORDER3`].
const fn wide_shuffle(bits: usize) -> [[u8; 32]; 2] {
    let mut t = [[0u8; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let base = if h == 0 { 0 } else { 4 * bits - 16 };
        let mut lane = 0;
        while lane < 16 {
            let v = 16 * h + lane;
            let k = bits * v / 8 - base;
            t[h][2 * lane] = k as u8;
            t[h][2 * lane + 1] = if k + 1 < 16 { (k + 1) as u8 } else { 0x80 };
            lane += 1;
        }
        h += 1;
    }
    t
}

/// Multipliers matching [`wide_shuffle`]: `2^(16 - bits - offset)` puts each code in the top
/// `bits` bits of its lane.
const fn wide_mul(bits: usize) -> [[i16; 16]; 2] {
    let mut t = [[0i16; 16]; 2];
    let mut h = 0;
    while h < 2 {
        let mut lane = 0;
        while lane < 16 {
            let v = 16 * h + lane;
            t[h][lane] = (1u32 << (16 - bits - (bits * v) % 8)) as u16 as i16;
            lane += 1;
        }
        h += 1;
    }
    t
}

const SHUF5: [[u8; 32]; 2] = wide_shuffle(5);
const MUL5: [[i16; 16]; 2] = wide_mul(5);
const SHUF6: [[u8; 32]; 2] = wide_shuffle(6);
const MUL6: [[i16; 16]; 2] = wide_mul(6);

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
        5 | 6 => {
            let (shuf, mul) = if BITS == 5 {
                (&SHUF5, &MUL5)
            } else {
                (&SHUF6, &MUL6)
            };
            let bytes = p as *const u8;
            let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(bytes as *const __m128i));
            let hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                bytes.add(4 * BITS - 16) as *const __m128i
            ));
            let a = _mm256_shuffle_epi8(lo, _mm256_loadu_si256(shuf[0].as_ptr() as *const _));
            let b = _mm256_shuffle_epi8(hi, _mm256_loadu_si256(shuf[1].as_ptr() as *const _));
            let a = _mm256_mullo_epi16(a, _mm256_loadu_si256(mul[0].as_ptr() as *const _));
            let b = _mm256_mullo_epi16(b, _mm256_loadu_si256(mul[1].as_ptr() as *const _));
            // Logical shifts: the code's top bit may be the lane's sign bit.
            let sh = _mm_cvtsi32_si128(16 - BITS as i32);
            _mm256_packus_epi16(_mm256_srl_epi16(a, sh), _mm256_srl_epi16(b, sh))
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

/// The grid levels of `m` (zero-padded to 16) in both 128-bit lanes, for
/// `_mm256_shuffle_epi8(lut, codes)`; zero when `m` has no grid.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn level_lut(m: &QuantizedMatrix) -> __m256i {
    let mut t = [0i8; 16];
    if let Some(g) = &m.grid {
        for (tk, &l) in t.iter_mut().zip(g.levels()) {
            *tk = l;
        }
    }
    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

/// [`decode_block`], then with `GRID` each code replaced by its level from `lut`
/// ([`level_lut`]; codes are below 16, so the lookup stays within each lane's table).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_block<const BITS: usize, const GRID: bool>(p: *const u32, lut: __m256i) -> __m256i {
    let c = decode_block::<BITS>(p);
    if GRID {
        _mm256_shuffle_epi8(lut, c)
    } else {
        c
    }
}

/// Runs `step(k, accumulator)` over the blocks `k` of one chunk of up to eight (`left` blocks
/// remain in the row): in a full chunk even blocks go to accumulator 0 and odd ones to 1 (two
/// FMA chains hide the latency), in a partial one all go to 0. Every kernel walks its blocks
/// this way, which keeps batched and single-row results bit-identical.
#[inline(always)]
fn chunk_steps(left: usize, step: &mut impl FnMut(usize, usize)) {
    if left >= 8 {
        step(0, 0);
        step(1, 1);
        step(2, 0);
        step(3, 1);
        step(4, 0);
        step(5, 1);
        step(6, 0);
        step(7, 1);
    } else {
        for k in 0..left {
            step(k, 0);
        }
    }
}

/// Scale · d of blocks `b0 .. b0 + 8` of one row (`d` is zero-padded to a multiple of 8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_scales(scales: &Scales, f: RowFormat, b0: usize, d: __m256) -> __m256 {
    let s = if f.bpg == 1 {
        scales.load8(b0)
    } else {
        let mut t = [0f32; 8];
        for (k, tk) in t.iter_mut().enumerate().take(f.nb - b0) {
            *tk = f16_to_f32(*scales.ptr.add((b0 + k) / f.bpg));
        }
        _mm256_loadu_ps(t.as_ptr())
    };
    _mm256_mul_ps(s, d)
}

/// Integer dot of one block (codes already unpacked, or their levels with `GRID`) with the
/// activations at `xv`, as eight f32 partial sums; see [`dot_row`] for `CORR`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_product<const BITS: usize, const CORR: bool, const GRID: bool>(
    c: __m256i,
    xv: __m256i,
    corr: *const i16,
) -> __m256 {
    let mut p16 = if BITS == 8 || GRID {
        _mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(xv, c))
    } else {
        _mm256_maddubs_epi16(c, xv)
    };
    if CORR {
        p16 = _mm256_sub_epi16(p16, _mm256_loadu_si256(corr as *const __m256i));
    }
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// [`dot_row`] of two packed rows against the same activations: every activation load and
/// correction is shared, and each row keeps its own accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows2<const BITS: usize, const CORR: bool, const GRID: bool>(
    words: [*const u32; 2],
    scales: [&Scales; 2],
    f: RowFormat,
    x: Q8Row<'_>,
    lut: __m256i,
) -> [f32; 2] {
    let qs = x.qs.as_ptr();
    // Per row two accumulators, filled exactly as [`dot_row`] fills its own (even blocks of a
    // full chunk of eight in the first, odd ones in the second, a partial chunk in the first),
    // so batched and single-row results are bit-identical.
    let mut acc = [[_mm256_setzero_ps(); 2]; 2];
    let mut b0 = 0;
    while b0 < f.nb {
        let d = _mm256_loadu_ps(x.d.as_ptr().add(b0));
        let sd = [
            block_scales(scales[0], f, b0, d),
            block_scales(scales[1], f, b0, d),
        ];
        let mut step = |k: usize, a: usize| {
            let b = b0 + k;
            let xv = _mm256_loadu_si256(qs.add(b * BLOCK) as *const __m256i);
            let corr = x.corr.as_ptr().wrapping_add(b * BLOCK / 2);
            let idx = _mm256_set1_epi32(k as i32);
            for r in 0..2 {
                let c = load_block::<BITS, GRID>(words[r].add(b * BITS), lut);
                let p = block_product::<BITS, CORR, GRID>(c, xv, corr);
                let s = _mm256_permutevar8x32_ps(sd[r], idx);
                acc[r][a] = _mm256_fmadd_ps(p, s, acc[r][a]);
            }
        };
        chunk_steps(f.nb - b0, &mut step);
        b0 += 8;
    }
    [
        hsum(_mm256_add_ps(acc[0][0], acc[0][1])),
        hsum(_mm256_add_ps(acc[1][0], acc[1][1])),
    ]
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
    match (m.spec.bits, m.grid.is_some()) {
        (2, false) => rows::<2, false>(m, first_row, act, n, out),
        (3, false) => rows::<3, false>(m, first_row, act, n, out),
        (4, false) => rows::<4, false>(m, first_row, act, n, out),
        (5, false) => rows::<5, false>(m, first_row, act, n, out),
        (6, false) => rows::<6, false>(m, first_row, act, n, out),
        (_, false) => rows::<8, false>(m, first_row, act, n, out),
        (2, true) => rows::<2, true>(m, first_row, act, n, out),
        (3, true) => rows::<3, true>(m, first_row, act, n, out),
        (4, true) => rows::<4, true>(m, first_row, act, n, out),
        // `Grid` rejects 8-bit tables; the natural order of 8-bit activations is also the
        // portable kernel's.
        (_, true) => super::scalar::quantized_rows(m, first_row, act, n, out),
    }
}

/// `GRID`: `m` has a grid (its levels replace the codes, see the module docs).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows<const BITS: usize, const GRID: bool>(
    m: &QuantizedMatrix,
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    let count = out.len() / n;
    let rw = m.row_words();
    let gpr = m.groups_per_row();
    let nb = m.cols / BLOCK;
    assert!((first_row + count) * rw <= m.data.len());
    assert!((first_row + count) * gpr <= m.scales.len());
    assert!(act.qs.len() >= n * m.cols && act.d.len() >= n * act.d_stride);
    let asym = m.spec.scheme == Scheme::Asymmetric;
    assert!(!asym || (m.offsets.len() == m.scales.len() && act.gsums.len() >= n * gpr));
    assert_eq!(GRID, m.grid.is_some());
    // Grid levels are signed already: no zero point to correct for.
    let corr = !GRID && !asym && BITS < 8;
    assert!(!corr || act.corr.len() >= n * m.cols / 2);
    // On a grid `w = scale · level + offset`: the offset term has no zero point (`code_zero`
    // is 0 anyway for the asymmetric widths that take a grid).
    let zero = if GRID {
        0.0
    } else {
        code_zero(m.spec.scheme, m.spec.bits) as f32
    };
    let lut = level_lut(m);
    let row = RowFormat {
        nb,
        bpg: m.spec.group_size / BLOCK,
    };
    // Prefill unpacks each weight row once and reuses it for all `n` activation rows; decode
    // unpacks each block in registers, straight into the dot product.
    let mut codes = vec![0u8; if n > 1 { m.cols } else { 0 }];
    if n == 1 {
        // Decode: two rows at a time share every activation load.
        let x = act.row(0);
        let mut i = 0;
        let end = m.data.as_ptr().add((first_row + count) * rw) as usize;
        while i < count {
            let r = first_row + i;
            let words = m.data.as_ptr().add(r * rw);
            // Weights stream from memory once per token: ask for the rows PREFETCH_ROWS ahead
            // now, so the loads below find them in cache.
            let ahead = words.add(PREFETCH_ROWS * rw) as usize;
            let mut p = ahead;
            while p < (ahead + 2 * rw * 4).min(end) {
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                p += 64;
            }
            let scales = Scales::new(&m.scales, r * gpr);
            let mut v = if i + 1 < count {
                let w2 = [words, words.add(rw)];
                let s2 = [&scales, &Scales::new(&m.scales, (r + 1) * gpr)];
                let v = if corr {
                    dot_rows2::<BITS, true, false>(w2, s2, row, x, lut)
                } else {
                    dot_rows2::<BITS, false, GRID>(w2, s2, row, x, lut)
                };
                out[i + 1] = v[1];
                if asym {
                    out[i + 1] += offset_term(m, (r + 1) * gpr, gpr, zero, x.gsums);
                }
                v[0]
            } else if corr {
                dot_row::<BITS, true, false>(words, &scales, row, x, lut)
            } else {
                dot_row::<BITS, false, GRID>(words, &scales, row, x, lut)
            };
            if asym {
                v += offset_term(m, r * gpr, gpr, zero, x.gsums);
            }
            out[i] = v;
            i += 2;
        }
        return;
    }
    for i in 0..count {
        let r = first_row + i;
        let words = m.data.as_ptr().add(r * rw);
        let scales = Scales::new(&m.scales, r * gpr);
        for b in 0..nb {
            let c = load_block::<BITS, GRID>(words.add(b * BITS), lut);
            _mm256_storeu_si256(codes.as_mut_ptr().add(b * BLOCK) as *mut __m256i, c);
        }
        // Four activation rows per pass share every code load and scale conversion.
        let mut j = 0;
        while j < n {
            let take = (n - j).min(4);
            let mut v = [0f32; 4];
            macro_rules! pass {
                ($k:literal) => {{
                    let xs: [Q8Row<'_>; $k] = std::array::from_fn(|q| act.row(j + q));
                    let r = if corr {
                        dot_rows_multi::<BITS, true, false, $k>(&codes, &scales, row, xs)
                    } else {
                        dot_rows_multi::<BITS, false, GRID, $k>(&codes, &scales, row, xs)
                    };
                    v[..$k].copy_from_slice(&r);
                }};
            }
            match take {
                4 => pass!(4),
                3 => pass!(3),
                2 => pass!(2),
                _ => pass!(1),
            }
            for (q, vq) in v.iter().enumerate().take(take) {
                let mut val = *vq;
                if asym {
                    val += offset_term(m, r * gpr, gpr, zero, act.row(j + q).gsums);
                }
                out[i * n + j + q] = val;
            }
            j += take;
        }
    }
}

/// [`dot_row`] of one unpacked weight row (codes, or levels with `GRID`) against `J`
/// activation rows: each block is loaded once for all of them, and every (row, activation)
/// pair accumulates exactly as `dot_row` does (same operations, same order), so results are
/// bit-identical.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_multi<const BITS: usize, const CORR: bool, const GRID: bool, const J: usize>(
    codes: &[u8],
    scales: &Scales,
    f: RowFormat,
    xs: [Q8Row<'_>; J],
) -> [f32; J] {
    let mut acc = [[_mm256_setzero_ps(); 2]; J];
    let mut b0 = 0;
    while b0 < f.nb {
        let s = block_scales(scales, f, b0, _mm256_set1_ps(1.0));
        let sd: [__m256; J] =
            std::array::from_fn(|q| _mm256_mul_ps(s, _mm256_loadu_ps(xs[q].d.as_ptr().add(b0))));
        let mut step = |k: usize, a: usize| {
            let b = b0 + k;
            let c = _mm256_loadu_si256(codes.as_ptr().add(b * BLOCK) as *const __m256i);
            let idx = _mm256_set1_epi32(k as i32);
            for q in 0..J {
                let xv = _mm256_loadu_si256(xs[q].qs.as_ptr().add(b * BLOCK) as *const __m256i);
                let corr = xs[q].corr.as_ptr().wrapping_add(b * BLOCK / 2);
                let p = block_product::<BITS, CORR, GRID>(c, xv, corr);
                let sq = _mm256_permutevar8x32_ps(sd[q], idx);
                acc[q][a] = _mm256_fmadd_ps(p, sq, acc[q][a]);
            }
        };
        chunk_steps(f.nb - b0, &mut step);
        b0 += 8;
    }
    std::array::from_fn(|q| hsum(_mm256_add_ps(acc[q][0], acc[q][1])))
}

/// How many rows ahead decode prefetches weights.
const PREFETCH_ROWS: usize = 6;

/// Blocks per row and per group.
#[derive(Clone, Copy)]
struct RowFormat {
    nb: usize,
    bpg: usize,
}

/// One row's f16 scales, readable eight at a time without running off the matrix's array.
struct Scales {
    ptr: *const f16,
    /// Scales readable from `ptr` (the rest of the matrix's array, not just this row's).
    avail: usize,
}

impl Scales {
    fn new(all: &[f16], start: usize) -> Self {
        Scales {
            ptr: all[start..].as_ptr(),
            avail: all.len() - start,
        }
    }

    /// Eight scales from index `g` as f32 (lanes past the array are zero).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(&self, g: usize) -> __m256 {
        if g + 8 <= self.avail {
            _mm256_cvtph_ps(_mm_loadu_si128(self.ptr.add(g) as *const __m128i))
        } else {
            let mut t = [f16::ZERO; 8];
            for (k, tk) in t.iter_mut().enumerate().take(self.avail.saturating_sub(g)) {
                *tk = *self.ptr.add(g + k);
            }
            _mm256_cvtph_ps(_mm_loadu_si128(t.as_ptr() as *const __m128i))
        }
    }
}

/// `Σ_g (offset_g + zero · scale_g) · Σx_g` over a row's groups: the additive term of
/// asymmetric weights (see `kernel_bias`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_term(
    m: &QuantizedMatrix,
    start: usize,
    gpr: usize,
    zero: f32,
    gsums: &[f32],
) -> f32 {
    let scales = Scales::new(&m.scales, start);
    let offsets = Scales::new(&m.offsets, start);
    let z = _mm256_set1_ps(zero);
    let mut acc = _mm256_setzero_ps();
    let mut g = 0;
    while g + 8 <= gpr {
        let bias = _mm256_fmadd_ps(z, scales.load8(g), offsets.load8(g));
        acc = _mm256_fmadd_ps(bias, _mm256_loadu_ps(gsums.as_ptr().add(g)), acc);
        g += 8;
    }
    let mut s = hsum(acc);
    while g < gpr {
        let bias = (*offsets.ptr.add(g)).to_f32() + zero * (*scales.ptr.add(g)).to_f32();
        s += bias * gsums[g];
        g += 1;
    }
    s
}

/// `Σ_blocks scale_b · d_b · Σ (code - zero)·x_q` over a row, each block unpacked from the
/// packed `words` in registers (decode; batches use [`dot_rows_multi`]). The products `scale_b · d_b` are formed
/// eight blocks at a time and broadcast per block with a lane permute; two accumulators hide
/// the FMA latency. `CORR` subtracts the precomputed `zero · x_q` pair sums (symmetric weights
/// under 8 bits; 8-bit codes are already signed). `GRID` multiplies the levels `lut` maps the
/// codes to instead of the codes (never with `CORR`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row<const BITS: usize, const CORR: bool, const GRID: bool>(
    words: *const u32,
    scales: &Scales,
    f: RowFormat,
    x: Q8Row<'_>,
    lut: __m256i,
) -> f32 {
    let qs = x.qs.as_ptr();
    let block = |b: usize| {
        let c = load_block::<BITS, GRID>(words.add(b * BITS), lut);
        let xv = _mm256_loadu_si256(qs.add(b * BLOCK) as *const __m256i);
        block_product::<BITS, CORR, GRID>(c, xv, x.corr.as_ptr().wrapping_add(b * BLOCK / 2))
    };
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut b0 = 0;
    while b0 < f.nb {
        let sd = block_scales(scales, f, b0, _mm256_loadu_ps(x.d.as_ptr().add(b0)));
        let mut step = |k: usize, a: usize| {
            let lane = _mm256_permutevar8x32_ps(sd, _mm256_set1_epi32(k as i32));
            acc[a] = _mm256_fmadd_ps(block(b0 + k), lane, acc[a]);
        };
        chunk_steps(f.nb - b0, &mut step);
        b0 += 8;
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// See `super::quantize_block`: the same scale and rounding (`cvtps_epi32` rounds to nearest
/// even under the default MXCSR), eight lanes at a time.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]); `xb` and `q` hold 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_block(xb: &[f32], order: &[u8; 32], q: &mut [i8]) -> f32 {
    assert!(xb.len() >= BLOCK && q.len() >= BLOCK);
    let p = xb.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    let amax = _mm_cvtss_f32(m);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let i = |k: usize| _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
    // packs interleaves 128-bit lanes: (0-3, 8-11, 4-7, 12-15) then (0-3,8-11,16-19,24-27,...).
    let w = _mm256_packs_epi16(
        _mm256_packs_epi32(i(0), i(1)),
        _mm256_packs_epi32(i(2), i(3)),
    );
    let natural = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if order == &ORDER8 {
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, natural);
    } else {
        let mut t = [0i8; 32];
        _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, natural);
        for (qp, &src) in q.iter_mut().zip(order) {
            *qp = t[src as usize];
        }
    }
    d
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
