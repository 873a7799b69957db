//! Where a model's tensors come from: a model file (GGUF), or random values of the right shape
//! for speed benchmarks of published shapes. Adapters read tensors through this module; the
//! synthetic presets only name shapes.

use half::f16;
use lowbit_core::adapter::WeightPrecision;
use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::quant::{quantize, QuantizedMatrix, Scheme};
use lowbit_core::{Error, Result, WeightMatrix};
use rayon::prelude::*;

/// Converts a dense f32 matrix into the backend format the plan asks for.
pub(crate) fn to_weight(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    p: WeightPrecision,
) -> Result<WeightMatrix> {
    Ok(match p {
        WeightPrecision::F32 => WeightMatrix::F32 { rows, cols, data },
        WeightPrecision::F16 => WeightMatrix::F16 {
            rows,
            cols,
            data: data.iter().map(|&v| half::f16::from_f32(v)).collect(),
        },
        WeightPrecision::Quant(spec) => WeightMatrix::Quantized(quantize(&data, rows, cols, spec)?),
    })
}

/// Where a model's tensors come from.
pub(crate) enum TensorSource<'a> {
    /// A GGUF file.
    Gguf(&'a GgufFile),
    /// Random values of the right shape (speed benchmarks of published shapes).
    Random,
}

impl TensorSource<'_> {
    /// The `rows × cols` matrix `name` in precision `p` (a random one seeded by `seed`).
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor or one of another shape.
    pub(crate) fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
        seed: u64,
    ) -> Result<WeightMatrix> {
        match self {
            TensorSource::Gguf(g) => {
                let dims = g
                    .tensor_dims(name)
                    .ok_or_else(|| Error::model_loading(format!("missing tensor {name}")))?;
                if dims.len() != 2 || dims[0] as usize != cols || dims[1] as usize != rows {
                    return Err(Error::model_loading(format!(
                        "tensor {name} has dims {dims:?}, expected [{cols}, {rows}]"
                    )));
                }
                to_weight(g.dequantize(name)?, rows, cols, p)
            }
            TensorSource::Random => random_weight(rows, cols, p, seed),
        }
    }

    /// The vector `name` (ones for a random model: norm weights that keep activations
    /// bounded).
    pub(crate) fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        match self {
            TensorSource::Gguf(g) => g.dequantize(name),
            TensorSource::Random => Ok(vec![1.0; len]),
        }
    }
}

/// SplitMix64: a fast, good-enough stream of random words.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform values in `[-a, a)` from a seed, in parallel.
fn random_f32(n: usize, a: f32, seed: u64) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let r = splitmix(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

/// A random weight matrix in precision `p`: random packed codes with small scales for integer
/// formats (no quantization search: the values are irrelevant to speed).
pub(crate) fn random_weight(
    rows: usize,
    cols: usize,
    p: WeightPrecision,
    seed: u64,
) -> Result<WeightMatrix> {
    // Scales keep activations bounded through many layers of random weights.
    let a = 1.0 / (cols as f32).sqrt();
    Ok(match p {
        WeightPrecision::F32 => WeightMatrix::F32 {
            rows,
            cols,
            data: random_f32(rows * cols, a, seed),
        },
        WeightPrecision::F16 => WeightMatrix::F16 {
            rows,
            cols,
            data: random_f32(rows * cols, a, seed)
                .into_par_iter()
                .map(f16::from_f32)
                .collect(),
        },
        WeightPrecision::Quant(spec) => {
            if !cols.is_multiple_of(32) {
                return Err(Error::invalid_config(format!(
                    "cols {cols} is not a multiple of 32"
                )));
            }
            let words = rows * cols * spec.bits as usize / 32;
            let groups = rows * cols.div_ceil(spec.group_size);
            let data: Vec<u32> = (0..words)
                .into_par_iter()
                .map(|i| splitmix(seed.wrapping_mul(31) ^ i as u64) as u32)
                .collect();
            let step = a / spec.max_code() as f32 * 2.0;
            let scales = vec![f16::from_f32(step); groups];
            let offsets = match spec.scheme {
                Scheme::Symmetric => Vec::new(),
                Scheme::Asymmetric => vec![f16::from_f32(-a); groups],
            };
            WeightMatrix::Quantized(QuantizedMatrix {
                rows,
                cols,
                spec,
                data,
                scales,
                offsets,
            })
        }
    })
}
