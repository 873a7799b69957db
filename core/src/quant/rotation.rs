//! Incoherence processing: a random orthogonal rotation of a weight matrix's input dimension,
//! undone on the activations (the idea behind QuIP# and QuaRot).
//!
//! A row's few large weights are what a low-bit grid quantizes worst. Rotating every row by the
//! same random orthogonal `R` spreads each weight over its whole block, so rows become
//! near-Gaussian and their groups quantize with far less error; the product is unchanged because
//! `W x = (W Rᵀ)(R x)`. `R` is block-diagonal: per block of `block` columns (a power of two),
//! `H · diag(s) / √block` with `H` the Sylvester Hadamard matrix and `s` random signs drawn from
//! `seed`. Applying it costs `block·log2(block)` adds per block (a fast Walsh–Hadamard
//! transform), so a backend rotates the activations on the fly.
//!
//! A [`super::QuantizedMatrix`] with a rotation stores the codes of `W Rᵀ`; its
//! [`super::QuantizedMatrix::dequantize_row`] returns rows of `W` (rotated back), while a
//! backend's linear rotates the input with [`Rotation::rotate`] and multiplies by the stored
//! rows, and its embedding lookup rotates a stored row back with [`Rotation::unrotate`].

use crate::error::{Error, Result};

/// A block-diagonal randomized Hadamard rotation of the input dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rotation {
    /// Columns per block: a power of two from 32 to 4096 dividing the matrix's columns.
    pub block: usize,
    /// Seed of the random signs (see [`Rotation::signs`]).
    pub seed: u64,
}

/// splitmix64: a tiny, well-mixed generator advancing `state`, so every backend derives the same
/// rotation signs (and `lowbit passkey` the same keys).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rotation {
    /// The largest power-of-two block (at most `max_block`, at least 32) dividing `cols`;
    /// `None` when `cols` is not a multiple of 32.
    pub fn block_for(cols: usize, max_block: usize) -> Option<usize> {
        if cols == 0 || !cols.is_multiple_of(32) {
            return None;
        }
        let mut b = 32;
        while b * 2 <= max_block && cols.is_multiple_of(b * 2) {
            b *= 2;
        }
        Some(b)
    }

    /// Checks the rotation fits a matrix of `cols` columns.
    ///
    /// Errors: `INVALID_CONFIG` when `block` is not a power of two in `32..=4096` or does not
    /// divide `cols`.
    pub fn check(&self, cols: usize) -> Result<()> {
        if !(32..=4096).contains(&self.block) || !self.block.is_power_of_two() {
            return Err(Error::invalid_config(format!(
                "rotation block must be a power of two from 32 to 4096, got {}",
                self.block
            )));
        }
        if cols == 0 || !cols.is_multiple_of(self.block) {
            return Err(Error::invalid_config(format!(
                "rotation block {} does not divide {cols} columns",
                self.block
            )));
        }
        Ok(())
    }

    /// The sign of each of `cols` columns as bits (bit `c % 32` of word `c / 32` set means
    /// −1), the form kernels read.
    pub fn sign_words(&self, cols: usize) -> Vec<u32> {
        let mut state = self.seed;
        let mut words = vec![0u32; cols.div_ceil(32)];
        for w in words.iter_mut() {
            *w = splitmix64(&mut state) as u32;
        }
        if !cols.is_multiple_of(32) {
            if let Some(last) = words.last_mut() {
                *last &= (1u32 << (cols % 32)) - 1;
            }
        }
        words
    }

    /// The sign (±1.0) of each of `cols` columns.
    pub fn signs(&self, cols: usize) -> Vec<f32> {
        let words = self.sign_words(cols);
        (0..cols)
            .map(|c| {
                if words[c / 32] >> (c % 32) & 1 == 1 {
                    -1.0
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// `x ← R x` for every row of `x` (rows of `signs.len()` values): per block, signs, then
    /// the normalised Hadamard transform.
    pub fn rotate(&self, signs: &[f32], x: &mut [f32]) {
        let scale = 1.0 / (self.block as f32).sqrt();
        for row in x.chunks_exact_mut(signs.len()) {
            for (v, s) in row.iter_mut().zip(signs) {
                *v *= s * scale;
            }
            for blk in row.chunks_exact_mut(self.block) {
                fwht(blk);
            }
        }
    }

    /// `x ← Rᵀ x` for every row of `x`: the inverse of [`Rotation::rotate`] (`H` is symmetric).
    pub fn unrotate(&self, signs: &[f32], x: &mut [f32]) {
        let scale = 1.0 / (self.block as f32).sqrt();
        for row in x.chunks_exact_mut(signs.len()) {
            for blk in row.chunks_exact_mut(self.block) {
                fwht(blk);
            }
            for (v, s) in row.iter_mut().zip(signs) {
                *v *= s * scale;
            }
        }
    }
}

/// In-place unnormalised fast Walsh–Hadamard transform of a power-of-two-long slice.
pub fn fwht(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// `x ← R x` in f64 (for Hessians and references).
pub fn rotate_f64(rot: &Rotation, signs: &[f32], x: &mut [f64]) {
    let scale = 1.0 / (rot.block as f64).sqrt();
    for row in x.chunks_exact_mut(signs.len()) {
        for (v, s) in row.iter_mut().zip(signs) {
            *v *= f64::from(*s) * scale;
        }
        for blk in row.chunks_exact_mut(rot.block) {
            let n = blk.len();
            let mut h = 1;
            while h < n {
                for i in (0..n).step_by(2 * h) {
                    for j in i..i + h {
                        let (a, b) = (blk[j], blk[j + h]);
                        blk[j] = a + b;
                        blk[j + h] = a - b;
                    }
                }
                h *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthogonal_and_inverts() {
        let rot = Rotation { block: 64, seed: 7 };
        let cols = 192;
        let signs = rot.signs(cols);
        let x: Vec<f32> = (0..cols * 2)
            .map(|i| ((i * 37 % 101) as f32) - 50.0)
            .collect();
        let mut y = x.clone();
        rot.rotate(&signs, &mut y);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&y)).abs() / norm(&x) < 1e-5);
        assert!(x.iter().zip(&y).any(|(a, b)| (a - b).abs() > 1.0));
        rot.unrotate(&signs, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn products_survive_rotation() {
        let rot = Rotation { block: 32, seed: 3 };
        let cols = 96;
        let signs = rot.signs(cols);
        let w: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
        let (mut wr, mut xr) = (w.clone(), x.clone());
        rot.rotate(&signs, &mut wr);
        rot.rotate(&signs, &mut xr);
        assert!((dot(&w, &x) - dot(&wr, &xr)).abs() < 1e-4);
    }

    #[test]
    fn blocks_and_checks() {
        assert_eq!(Rotation::block_for(576, 128), Some(64));
        assert_eq!(Rotation::block_for(1536, 128), Some(128));
        assert_eq!(Rotation::block_for(100, 128), None);
        assert!(Rotation { block: 48, seed: 0 }.check(96).is_err());
        assert!(Rotation { block: 64, seed: 0 }.check(96).is_err());
        assert!(Rotation { block: 32, seed: 0 }.check(96).is_ok());
    }
}
