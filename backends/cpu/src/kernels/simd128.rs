//! wasm32 `simd128` kernels (built only with `-C target-feature=+simd128`).
//!
//! Codes are unpacked into a 32-byte block in natural column order (8-, 4- and 2-bit with SIMD
//! masks, shifts and shuffles, 3-bit with the scalar bit-stream reader), then dotted with the int8
//! activations through `i32x4_dot_i16x8`.

use super::scalar::code_at;
use super::{code_zero, kernel_bias, offset_at, Q8Activations, Q8Row, BLOCK};
use core::arch::wasm32::*;
use lowbit_core::quant::QuantizedMatrix;

/// See [`super::quantized_rows`].
pub(crate) fn quantized_rows(
    m: &QuantizedMatrix,
    first_row: usize,
    act: &Q8Activations,
    n: usize,
    out: &mut [f32],
) {
    let rw = m.row_words();
    let gpr = m.groups_per_row();
    let bpg = m.spec.group_size / BLOCK;
    let nb = m.cols / BLOCK;
    let zero = code_zero(m.spec.scheme, m.spec.bits) as i16;
    let mut codes = vec![0u8; m.cols];
    for (i, o) in out.chunks_exact_mut(n).enumerate() {
        let r = first_row + i;
        let words = &m.data[r * rw..(r + 1) * rw];
        for (b, block) in codes.chunks_exact_mut(BLOCK).enumerate() {
            unpack_block(words, m.spec.bits as usize, b, block);
        }
        for (j, oj) in o.iter_mut().enumerate() {
            let x: Q8Row<'_> = act.row(j);
            let mut total = 0.0f32;
            for g in 0..gpr {
                let scale = m.scales[r * gpr + g].to_f32();
                let mut acc = 0.0f32;
                for b in g * bpg..((g + 1) * bpg).min(nb) {
                    let c = &codes[b * BLOCK..(b + 1) * BLOCK];
                    let q = &x.qs[b * BLOCK..(b + 1) * BLOCK];
                    acc += x.d[b] * block_dot(c, q, zero) as f32;
                }
                total += scale * acc;
                if !x.gsums.is_empty() {
                    let off = offset_at(m, r * gpr + g);
                    total += kernel_bias(m.spec.scheme, m.spec.bits, scale, off) * x.gsums[g];
                }
            }
            *oj = total;
        }
    }
}

fn unpack_block(words: &[u32], bits: usize, b: usize, out: &mut [u8]) {
    let w = &words[b * bits..(b + 1) * bits];
    let mut bytes = [0u8; 32];
    for (k, wk) in w.iter().enumerate() {
        bytes[4 * k..4 * k + 4].copy_from_slice(&wk.to_le_bytes());
    }
    // SAFETY: `bytes` holds 32 bytes; unaligned loads and stores are allowed by v128.
    unsafe {
        let p = bytes.as_ptr() as *const v128;
        let o = out.as_mut_ptr() as *mut v128;
        match bits {
            8 => {
                v128_store(o, v128_load(p));
                v128_store(o.add(1), v128_load(p.add(1)));
            }
            4 => {
                let v = v128_load(p);
                let lo = v128_and(v, u8x16_splat(0x0F));
                let hi = u8x16_shr(v, 4);
                let a =
                    i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(lo, hi);
                let b = i8x16_shuffle::<8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31>(
                    lo, hi,
                );
                v128_store(o, a);
                v128_store(o.add(1), b);
            }
            2 => {
                // Code c sits at bits 2c.. of the little-endian stream: byte c / 4, shift
                // 2 (c % 4). Split the 8 bytes into the four shifts, then interleave them back
                // into column order.
                let v = v128_load(p);
                let m3 = u8x16_splat(3);
                let c0 = v128_and(v, m3);
                let c1 = v128_and(u8x16_shr(v, 2), m3);
                let c2 = v128_and(u8x16_shr(v, 4), m3);
                let c3 = u8x16_shr(v, 6);
                let ab =
                    i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(c0, c1);
                let cd =
                    i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(c2, c3);
                let lo =
                    i8x16_shuffle::<0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23>(ab, cd);
                let hi =
                    i8x16_shuffle::<8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31>(
                        ab, cd,
                    );
                v128_store(o, lo);
                v128_store(o.add(1), hi);
            }
            _ => {
                for (k, ok) in out.iter_mut().enumerate() {
                    *ok = code_at(w, bits, k) as u8;
                }
            }
        }
    }
}

/// Σ (codes - zero) · x over one block of 32 (the convention of every instruction set, see
/// `code_zero`).
fn block_dot(c: &[u8], x: &[i8], zero: i16) -> i32 {
    // SAFETY: both slices hold 32 bytes.
    unsafe {
        let mut acc = i32x4_splat(0);
        let zero = i16x8_splat(zero);
        for h in 0..2 {
            let cv = v128_load(c.as_ptr().add(16 * h) as *const v128);
            let xv = v128_load(x.as_ptr().add(16 * h) as *const v128);
            let c_lo = i16x8_sub(u16x8_extend_low_u8x16(cv), zero);
            let c_hi = i16x8_sub(u16x8_extend_high_u8x16(cv), zero);
            let x_lo = i16x8_extend_low_i8x16(xv);
            let x_hi = i16x8_extend_high_i8x16(xv);
            acc = i32x4_add(acc, i32x4_dot_i16x8(c_lo, x_lo));
            acc = i32x4_add(acc, i32x4_dot_i16x8(c_hi, x_hi));
        }
        i32x4_extract_lane::<0>(acc)
            + i32x4_extract_lane::<1>(acc)
            + i32x4_extract_lane::<2>(acc)
            + i32x4_extract_lane::<3>(acc)
    }
}

/// `Σ a·b` over `min(a.len(), b.len())`.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let mut i = 0;
    let mut s = 0.0f32;
    // SAFETY: every load reads 4 floats below `len`.
    unsafe {
        let mut acc = f32x4_splat(0.0);
        while i + 4 <= len {
            let va = v128_load(a.as_ptr().add(i) as *const v128);
            let vb = v128_load(b.as_ptr().add(i) as *const v128);
            acc = f32x4_add(acc, f32x4_mul(va, vb));
            i += 4;
        }
        s += f32x4_extract_lane::<0>(acc)
            + f32x4_extract_lane::<1>(acc)
            + f32x4_extract_lane::<2>(acc)
            + f32x4_extract_lane::<3>(acc);
    }
    while i < len {
        s += a[i] * b[i];
        i += 1;
    }
    s
}
