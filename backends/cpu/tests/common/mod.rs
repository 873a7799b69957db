//! Shared test fixtures: random packed matrices built straight from the documented layout of
//! `lowbit_core::quant` (LSB-first bit stream per row, f16 scales/offsets per group), a scalar
//! dequantizer for them, and every backend this machine can run.

#![allow(dead_code)]

use half::f16;
use lowbit_core::quant::{QuantSpec, QuantizedMatrix, Scheme};
use lowbit_cpu::{CpuBackend, Isa};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One backend per instruction set available here (scalar always), 2 threads each.
pub fn backends() -> Vec<CpuBackend> {
    [Isa::Scalar, Isa::Avx2, Isa::Simd128]
        .into_iter()
        .filter(|i| i.is_available())
        .map(|i| CpuBackend::with_isa(2, i).expect("available isa"))
        .collect()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Packs per-row codes LSB-first into u32 words, as the module docs of `quant` lay them out.
pub fn pack_rows(codes: &[u8], rows: usize, cols: usize, bits: usize) -> Vec<u32> {
    let row_words = cols * bits / 32;
    let mut data = vec![0u32; rows * row_words];
    for r in 0..rows {
        let words = &mut data[r * row_words..(r + 1) * row_words];
        for c in 0..cols {
            let v = codes[r * cols + c] as u64;
            let bit = c * bits;
            let (w, s) = (bit / 32, bit % 32);
            let wide = v << s;
            words[w] |= wide as u32;
            if s + bits > 32 {
                words[w + 1] |= (wide >> 32) as u32;
            }
        }
    }
    data
}

/// A random matrix with its codes (`rows * cols`).
pub fn random_matrix(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    bits: u8,
    group_size: usize,
    scheme: Scheme,
) -> (QuantizedMatrix, Vec<u8>) {
    let spec = QuantSpec::new(bits, group_size, scheme).expect("valid spec");
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| rng.gen_range(0..=spec.max_code()) as u8)
        .collect();
    let groups = rows * cols.div_ceil(group_size);
    let scales = (0..groups)
        .map(|_| f16::from_f32(rng.gen_range(0.01..0.1)))
        .collect();
    let offsets = match scheme {
        Scheme::Symmetric => Vec::new(),
        Scheme::Asymmetric => (0..groups)
            .map(|_| f16::from_f32(rng.gen_range(-0.8..0.2)))
            .collect(),
    };
    let m = QuantizedMatrix {
        rows,
        cols,
        spec,
        data: pack_rows(&codes, rows, cols, bits as usize),
        scales,
        offsets,
        rotation: None,
        grid: None,
    };
    (m, codes)
}

/// `(scale, bias)` of value `(r, c)`: `w = scale * code + bias`.
pub fn scale_bias(m: &QuantizedMatrix, r: usize, c: usize) -> (f32, f32) {
    let gpr = m.cols.div_ceil(m.spec.group_size);
    let i = r * gpr + c / m.spec.group_size;
    let s = m.scales[i].to_f32();
    let b = match m.spec.scheme {
        Scheme::Symmetric => -s * m.spec.sym_zero() as f32,
        Scheme::Asymmetric => m.offsets[i].to_f32(),
    };
    (s, b)
}

/// Dense f32 copy of `m` from its codes.
pub fn dequantize(m: &QuantizedMatrix, codes: &[u8]) -> Vec<f32> {
    (0..m.rows * m.cols)
        .map(|i| {
            let (s, b) = scale_bias(m, i / m.cols, i % m.cols);
            s * codes[i] as f32 + b
        })
        .collect()
}

/// `x[n, cols] · wᵀ` in f64.
pub fn reference_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * rows];
    for j in 0..n {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[j * cols + c] as f64)
                .sum();
            out[j * rows + r] = s as f32;
        }
    }
    out
}

pub fn random_vec(rng: &mut StdRng, len: usize, amp: f32) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-amp..amp)).collect()
}
