//! GGML tensor types (ids as in `ggml.h`) and their dequantization to f32, block layouts exactly
//! as in llama.cpp's `ggml-common.h` / `ggml-quants.c`. All multi-byte fields are little-endian.

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::fmt;

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// A GGML tensor element type, with its numeric id from `ggml.h`.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// IEEE half.
    F16 = 1,
    /// 32 x 4-bit, one f16 scale.
    Q4_0 = 2,
    /// 32 x 4-bit, f16 scale and min.
    Q4_1 = 3,
    /// 32 x 5-bit, one f16 scale.
    Q5_0 = 6,
    /// 32 x 5-bit, f16 scale and min.
    Q5_1 = 7,
    /// 32 x 8-bit, one f16 scale.
    Q8_0 = 8,
    /// 32 x 8-bit, f16 scale and sum (activations only).
    Q8_1 = 9,
    /// 256-element super-blocks, 2-bit.
    Q2_K = 10,
    /// 256-element super-blocks, 3-bit.
    Q3_K = 11,
    /// 256-element super-blocks, 4-bit.
    Q4_K = 12,
    /// 256-element super-blocks, 5-bit.
    Q5_K = 13,
    /// 256-element super-blocks, 6-bit.
    Q6_K = 14,
    /// 256-element super-blocks, 8-bit (activations only).
    Q8_K = 15,
    /// i-quant, 2.06 bits.
    IQ2_XXS = 16,
    /// i-quant, 2.31 bits.
    IQ2_XS = 17,
    /// i-quant, 3.06 bits.
    IQ3_XXS = 18,
    /// i-quant, 1.56 bits.
    IQ1_S = 19,
    /// i-quant, 4.5 bits, non-linear.
    IQ4_NL = 20,
    /// i-quant, 3.44 bits.
    IQ3_S = 21,
    /// i-quant, 2.5 bits.
    IQ2_S = 22,
    /// i-quant, 4.25 bits.
    IQ4_XS = 23,
    /// 8-bit integer.
    I8 = 24,
    /// 16-bit integer.
    I16 = 25,
    /// 32-bit integer.
    I32 = 26,
    /// 64-bit integer.
    I64 = 27,
    /// 64-bit float.
    F64 = 28,
    /// i-quant, 1.75 bits.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// Ternary, 1.69 bits.
    TQ1_0 = 34,
    /// Ternary, 2.06 bits.
    TQ2_0 = 35,
    /// Microscaling FP4.
    MXFP4 = 39,
    /// NVIDIA FP4 with E4M3 scales.
    NVFP4 = 40,
    /// 128 x 1-bit, one f16 scale.
    Q1_0 = 41,
    /// 64 x 2-bit, one f16 scale.
    Q2_0 = 42,
}

/// Every known type, for id lookup.
const ALL_TYPES: [GgmlType; 35] = {
    use GgmlType::*;
    [
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS,
        IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16,
        TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0, Q2_0,
    ]
};

impl GgmlType {
    /// The type with ggml id `id`, or `None` for unknown or removed ids.
    pub fn from_id(id: u32) -> Option<Self> {
        ALL_TYPES.iter().copied().find(|t| t.id() == id)
    }

    /// The ggml numeric id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The ggml name, e.g. `q4_K`.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            IQ2_XXS => "iq2_xxs",
            IQ2_XS => "iq2_xs",
            IQ3_XXS => "iq3_xxs",
            IQ1_S => "iq1_s",
            IQ4_NL => "iq4_nl",
            IQ3_S => "iq3_s",
            IQ2_S => "iq2_s",
            IQ4_XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1_M => "iq1_m",
            BF16 => "bf16",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            MXFP4 => "mxfp4",
            NVFP4 => "nvfp4",
            Q1_0 => "q1_0",
            Q2_0 => "q2_0",
        }
    }

    /// Elements per block (1 for plain scalar types).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            Q2_0 | NVFP4 => 64,
            Q1_0 => 128,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 | IQ4_NL => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 40,
            Q2_K => 84,
            Q3_K | IQ3_S => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
            NVFP4 => 36,
            Q1_0 | Q2_0 => 18,
        }
    }

    /// Bytes taken by `n_elements` values, or `None` if `n_elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }

    /// Whether [`dequantize_row`] converts this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantizes whole blocks of `ty` from `src` into `dst`.
///
/// `dst.len()` must be a multiple of the block size and `src` exactly the bytes of that many
/// values; `UNSUPPORTED_MODEL` for types without a converter, `MODEL_LOADING_FAILED` on a size
/// mismatch.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let expected = ty.bytes_for(dst.len() as u64);
    if expected != Some(src.len() as u64) {
        return Err(Error::model_loading(format!(
            "{ty}: {} bytes do not hold {} values (block size {}, {} bytes per block)",
            src.len(),
            dst.len(),
            ty.block_size(),
            ty.type_size()
        )));
    }
    let blocks = src
        .chunks_exact(ty.type_size())
        .zip(dst.chunks_exact_mut(ty.block_size()));
    match ty {
        GgmlType::F32 => blocks.for_each(|(s, d)| d[0] = f32::from_le_bytes(le4(s, 0))),
        GgmlType::F16 => blocks.for_each(|(s, d)| d[0] = half_at(s, 0)),
        GgmlType::BF16 => blocks
            .for_each(|(s, d)| d[0] = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(s, d)| q8_0(s, d)),
        GgmlType::Q4_0 => blocks.for_each(|(s, d)| q4_0(s, d)),
        GgmlType::Q4_1 => blocks.for_each(|(s, d)| q4_1(s, d)),
        GgmlType::Q5_0 => blocks.for_each(|(s, d)| q5_0(s, d)),
        GgmlType::Q5_1 => blocks.for_each(|(s, d)| q5_1(s, d)),
        GgmlType::Q2_K => blocks.for_each(|(s, d)| q2_k(s, d)),
        GgmlType::Q3_K => blocks.for_each(|(s, d)| q3_k(s, d)),
        GgmlType::Q4_K => blocks.for_each(|(s, d)| q4_k(s, d)),
        GgmlType::Q5_K => blocks.for_each(|(s, d)| q5_k(s, d)),
        GgmlType::Q6_K => blocks.for_each(|(s, d)| q6_k(s, d)),
        _ => {
            return Err(Error::unsupported(format!(
                "no dequantizer for ggml type {ty} (id {})",
                ty.id()
            )))
        }
    }
    Ok(())
}

fn le4(s: &[u8], at: usize) -> [u8; 4] {
    [s[at], s[at + 1], s[at + 2], s[at + 3]]
}

/// The little-endian f16 at byte `at`, as f32.
fn half_at(s: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([s[at], s[at + 1]])).to_f32()
}

// Block layouts: `block_q8_0 { half d; int8 qs[32]; }` etc. (ggml-common.h).

fn q8_0(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    for (y, &q) in y.iter_mut().zip(&s[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

fn q4_0(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let q = s[2 + j];
        lo[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
        hi[j] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

fn q4_1(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    let m = half_at(s, 2);
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let q = s[4 + j];
        lo[j] = f32::from(q & 0x0F) * d + m;
        hi[j] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit values of a q5 block: low nibbles in `qs`, fifth bits in the u32 `qh`.
fn q5_values(qh: u32, qs: &[u8], j: usize) -> (u8, u8) {
    let h0 = (((qh >> j) << 4) & 0x10) as u8;
    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
    ((qs[j] & 0x0F) | h0, (qs[j] >> 4) | h1)
}

fn q5_0(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    let qh = u32::from_le_bytes(le4(s, 2));
    let qs = &s[6..22];
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let (x0, x1) = q5_values(qh, qs, j);
        lo[j] = (i32::from(x0) - 16) as f32 * d;
        hi[j] = (i32::from(x1) - 16) as f32 * d;
    }
}

fn q5_1(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    let m = half_at(s, 2);
    let qh = u32::from_le_bytes(le4(s, 4));
    let qs = &s[8..24];
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let (x0, x1) = q5_values(qh, qs, j);
        lo[j] = f32::from(x0) * d + m;
        hi[j] = f32::from(x1) * d + m;
    }
}

/// `block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin; }`
fn q2_k(s: &[u8], y: &mut [f32]) {
    let scales = &s[0..16];
    let d = half_at(s, 80);
    let min = half_at(s, 82);
    let mut out = y.chunks_exact_mut(16);
    let mut is = 0;
    for half_block in 0..2 {
        let q = &s[16 + 32 * half_block..16 + 32 * (half_block + 1)];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = min * f32::from(sc >> 4);
                if let Some(o) = out.next() {
                    for (l, o) in o.iter_mut().enumerate() {
                        *o = dl * f32::from((q[l + 16 * part] >> shift) & 3) - ml;
                    }
                }
            }
        }
    }
}

/// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; }`
fn q3_k(s: &[u8], y: &mut [f32]) {
    let hm = &s[0..32];
    let d_all = half_at(s, 108);
    // Unpack the sixteen 6-bit scales exactly as ggml's kmask shuffle does.
    let mut aux = [
        u32::from_le_bytes(le4(s, 96)),
        u32::from_le_bytes(le4(s, 100)),
        u32::from_le_bytes(le4(s, 104)),
        0,
    ];
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
    aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
    aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
    aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
    let mut scales = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (k, b) in w.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = *b as i8;
        }
    }
    let mut out = y.chunks_exact_mut(16);
    let mut is = 0;
    let mut m = 1u8;
    for half_block in 0..2 {
        let q = &s[32 + 32 * half_block..32 + 32 * (half_block + 1)];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * f32::from(i16::from(scales[is]) - 32);
                is += 1;
                if let Some(o) = out.next() {
                    for (l, o) in o.iter_mut().enumerate() {
                        let i = l + 16 * part;
                        let low = i16::from((q[i] >> shift) & 3);
                        let high = if hm[i] & m != 0 { 0 } else { 4 };
                        *o = dl * f32::from(low - high);
                    }
                }
            }
            m <<= 1;
        }
    }
}

/// Scale and min `j` (0..8) of the 12-byte packed 6-bit table of q4_K/q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }`
fn q4_k(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    let min = half_at(s, 2);
    let scales = &s[4..16];
    for (chunk, (q, y)) in s[16..144]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * f32::from(q[l] & 0xF) - m1;
            hi[l] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// `block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`
fn q5_k(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 0);
    let min = half_at(s, 2);
    let scales = &s[4..16];
    let qh = &s[16..48];
    for (chunk, (ql, y)) in s[48..176]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let u1 = 1u8 << (2 * chunk);
        let u2 = 2u8 << (2 * chunk);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
            hi[l] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }`
fn q6_k(s: &[u8], y: &mut [f32]) {
    let d = half_at(s, 208);
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &s[64 * n..64 * (n + 1)];
        let qh = &s[128 + 32 * n..128 + 32 * (n + 1)];
        let sc = &s[192 + 8 * n..192 + 8 * (n + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i16::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i16::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i16::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i16::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        // Removed ids (q4_2, q4_3, the repacked q4_0 variants) are unknown.
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5 (f16 0x3800); byte j holds (j % 16) low and (15 - j % 16) high.
        let mut b = vec![0x00, 0x38];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize_row(GgmlType::Q4_0, &b, &mut y).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[16 + j], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn size_mismatch_and_unsupported_are_errors() {
        let mut y = [0f32; 32];
        let e = dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut y).unwrap_err();
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
        let e = dequantize_row(GgmlType::IQ4_NL, &[0u8; 18], &mut y).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedModel);
    }
}
