//! Low-bit weight quantization: int8, int4, int3 and int2, group-wise along the reduction
//! dimension (groups of 32, 64 or 128), symmetric or asymmetric, packed LSB-first into `u32`
//! words with f16 scales (and offsets) in separate arrays.
//!
//! Layout of a [`QuantizedMatrix`] with `rows` outputs and `cols` inputs (the reduction
//! dimension, a multiple of 32):
//! - row `r` occupies `data[r * row_words .. (r + 1) * row_words]`, `row_words = cols * bits / 32`;
//!   value `c` of the row sits at bit `c * bits` of that bit stream (LSB first; a 3-bit value may
//!   straddle two words). Every group starts on a word boundary because group sizes are
//!   multiples of 32.
//! - group `g` of row `r` covers columns `g * group_size .. min(cols, (g + 1) * group_size)`; the
//!   last group may be shorter (still a multiple of 32) when `group_size` does not divide `cols`.
//!   Its scale is `scales[r * groups_per_row + g]` (and offset `offsets[...]` when asymmetric).
//! - dequantized value: symmetric `w = scale * (q - 2^(bits-1))`; asymmetric
//!   `w = scale * q + offset`, with `q` the stored unsigned code in `0 .. 2^bits`.
//!
//! Kernels therefore compute a group's dot product as
//! `scale * Σ q·x + bias * Σ x` with `bias = -scale * 2^(bits-1)` (symmetric) or `offset`.

mod pack;
mod search;

pub use pack::{pack_codes, unpack_codes};
pub use search::quantize_group;

use crate::error::{Error, Result};
use half::f16;

/// Whether groups are centred on zero (one scale) or carry an offset too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `w = scale * (q - 2^(bits-1))`: one f16 per group.
    Symmetric,
    /// `w = scale * q + offset`: two f16 per group.
    Asymmetric,
}

/// A quantization format: bit width, group size and scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantSpec {
    /// 2, 3, 4 or 8.
    pub bits: u8,
    /// Values per scale along the reduction dimension: a multiple of 32 (32, 64, 128 usual).
    pub group_size: usize,
    /// Symmetric or asymmetric.
    pub scheme: Scheme,
}

impl QuantSpec {
    /// Validates and builds a spec.
    pub fn new(bits: u8, group_size: usize, scheme: Scheme) -> Result<Self> {
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(Error::invalid_config(format!(
                "quantization bits must be 2, 3, 4 or 8, got {bits}"
            )));
        }
        if group_size == 0 || group_size % 32 != 0 {
            return Err(Error::invalid_config(format!(
                "quantization group size must be a positive multiple of 32, got {group_size}"
            )));
        }
        Ok(QuantSpec {
            bits,
            group_size,
            scheme,
        })
    }

    /// The zero point subtracted from codes in the symmetric scheme: `2^(bits-1)`.
    pub fn sym_zero(&self) -> i32 {
        1 << (self.bits - 1)
    }

    /// Largest code, `2^bits - 1`.
    pub fn max_code(&self) -> u32 {
        (1u32 << self.bits) - 1
    }
}

/// A weight matrix in a packed low-bit format (see the module docs for the layout).
#[derive(Clone, Debug)]
pub struct QuantizedMatrix {
    /// Output dimension (number of rows).
    pub rows: usize,
    /// Reduction dimension (values per row), a multiple of 32.
    pub cols: usize,
    /// The format.
    pub spec: QuantSpec,
    /// Packed codes, `rows * row_words` words.
    pub data: Vec<u32>,
    /// One f16 scale per group, `rows * groups_per_row`.
    pub scales: Vec<f16>,
    /// One f16 offset per group when asymmetric, empty when symmetric.
    pub offsets: Vec<f16>,
}

impl QuantizedMatrix {
    /// `u32` words per row.
    pub fn row_words(&self) -> usize {
        self.cols * self.spec.bits as usize / 32
    }

    /// Groups per row (the last may be shorter than `group_size`).
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.spec.group_size)
    }

    /// Real storage cost in bits per weight, counting codes, scales and offsets.
    pub fn bits_per_weight(&self) -> f64 {
        let bits = self.data.len() * 32 + (self.scales.len() + self.offsets.len()) * 16;
        bits as f64 / (self.rows * self.cols) as f64
    }

    /// Bytes of packed codes, scales and offsets.
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 4 + (self.scales.len() + self.offsets.len()) * 2
    }
}
