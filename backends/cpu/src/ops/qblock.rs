//! Asymmetric `bits`-bit blocks ([`lowbit_core::backend::DType::QBlock`]): the quantized KV
//! cache's storage. Each block of `group` values keeps `group × bits / 32` u32 words of codes
//! (value `j` at bit `j × bits` of the block's little-endian bit stream) and an f16 scale and
//! minimum; value = code × scale + minimum. Rows are written whole blocks at a time and read a
//! range at a time (an attention head's slice of a row), never as a dequantized copy of the
//! store.

use half::f16;

/// A store of `len` values in blocks.
pub(crate) struct QStore {
    pub bits: u32,
    pub group: usize,
    pub len: usize,
    /// Codes, `group × bits / 32` words per block.
    pub words: Vec<u32>,
    /// `(scale, minimum)` per block.
    pub params: Vec<(f16, f16)>,
}

impl QStore {
    /// Words of one block.
    fn block_words(&self) -> usize {
        self.group * self.bits as usize / 32
    }

    /// Zeroed store, or `None` when the host refuses the memory.
    pub fn zeroed(bits: u32, group: usize, len: usize) -> Option<QStore> {
        let blocks = len.div_ceil(group);
        let mut words = Vec::new();
        words
            .try_reserve_exact(blocks * group * bits as usize / 32)
            .ok()?;
        words.resize(blocks * group * bits as usize / 32, 0);
        let mut params = Vec::new();
        params.try_reserve_exact(blocks).ok()?;
        params.resize(blocks, (f16::ZERO, f16::ZERO));
        Some(QStore {
            bits,
            group,
            len,
            words,
            params,
        })
    }

    /// Quantizes `x` into the blocks from value `offset` (a multiple of `group`; `x` ends on a
    /// block boundary or at the end of the store, which the caller checked): each block's
    /// parameters from [`lowbit_core::quant::kv_block_params`], each value at its nearest code.
    pub fn write(&mut self, offset: usize, x: &[f32]) {
        let bw = self.block_words();
        let levels = ((1u32 << self.bits) - 1) as f32;
        for (b, block) in x.chunks(self.group).enumerate() {
            let bi = offset / self.group + b;
            let (scale, min) = lowbit_core::quant::kv_block_params(block, self.bits);
            let (m, s) = (min.to_f32(), scale.to_f32());
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let words = &mut self.words[bi * bw..(bi + 1) * bw];
            words.fill(0);
            for (j, &v) in block.iter().enumerate() {
                let v = if v.is_finite() { v } else { 0.0 };
                let q = ((v - m) * inv).round().clamp(0.0, levels) as u64;
                let bit = j * self.bits as usize;
                let (w, sh) = (bit / 32, bit % 32);
                words[w] |= (q << sh) as u32;
                if sh + self.bits as usize > 32 {
                    words[w + 1] |= (q >> (32 - sh)) as u32;
                }
            }
            self.params[bi] = (scale, min);
        }
    }

    /// Writes values `first, first + stride, …` (`out.len()` of them) to `out`.
    pub fn read_strided(&self, first: usize, stride: usize, out: &mut [f32]) {
        let bw = self.block_words();
        let mask = (1u64 << self.bits) - 1;
        let bits = self.bits as usize;
        for (k, o) in out.iter_mut().enumerate() {
            let i = first + k * stride;
            let bi = i / self.group;
            let (scale, min) = self.params[bi];
            let bit = (i - bi * self.group) * bits;
            let words = &self.words[bi * bw..(bi + 1) * bw];
            let (w, sh) = (bit / 32, bit % 32);
            let lo = u64::from(words[w]);
            let hi = if sh + bits > 32 {
                u64::from(words[w + 1]) << 32
            } else {
                0
            };
            *o = (((lo | hi) >> sh) & mask) as f32 * scale.to_f32() + min.to_f32();
        }
    }

    /// Writes values `from .. from + out.len()` to `out`.
    pub fn read(&self, from: usize, out: &mut [f32]) {
        let bw = self.block_words();
        let mask = (1u64 << self.bits) - 1;
        let bits = self.bits as usize;
        let mut i = from;
        let mut o = 0;
        while o < out.len() {
            let bi = i / self.group;
            let (scale, min) = self.params[bi];
            let (s, m) = (scale.to_f32(), min.to_f32());
            let words = &self.words[bi * bw..(bi + 1) * bw];
            let end = ((bi + 1) * self.group - i).min(out.len() - o);
            for k in 0..end {
                let bit = (i + k - bi * self.group) * bits;
                let (w, sh) = (bit / 32, bit % 32);
                let lo = u64::from(words[w]);
                let hi = if sh + bits > 32 {
                    u64::from(words[w + 1]) << 32
                } else {
                    0
                };
                let q = ((lo | hi) >> sh) & mask;
                out[o + k] = q as f32 * s + m;
            }
            i += end;
            o += end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_within_half_a_step() {
        for bits in [2u32, 3, 4, 8] {
            for group in [32usize, 64, 128] {
                let len = 3 * group;
                let x: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / group) as f32))
                    .collect();
                let mut q = QStore::zeroed(bits, group, len).unwrap();
                q.write(0, &x);
                let mut back = vec![0f32; len];
                q.read(0, &mut back);
                for (b, (xb, yb)) in x.chunks(group).zip(back.chunks(group)).enumerate() {
                    // No worse than plain min–max rounding (one of the candidates).
                    let (lo, hi) = xb
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                    let m = f16::from_f32(lo).to_f32();
                    let st = f16::from_f32((hi - m) / ((1u32 << bits) - 1) as f32).to_f32();
                    let plain: f32 = xb
                        .iter()
                        .map(|&v| {
                            let q = ((v - m) / st)
                                .round()
                                .clamp(0.0, ((1u32 << bits) - 1) as f32);
                            (v - (q * st + m)).powi(2)
                        })
                        .sum();
                    let got: f32 = xb.iter().zip(yb).map(|(a, c)| (a - c).powi(2)).sum();
                    assert!(
                        got <= plain * 1.0001 + 1e-9,
                        "{bits} bits, group {group}, block {b}: {got} vs min-max {plain}"
                    );
                    // And within the range of the block's values plus a step.
                    assert!(yb.iter().all(|&v| v >= lo - st && v <= hi + st));
                }
                // A range inside and across blocks reads the same values.
                let mut part = vec![0f32; group + 5];
                q.read(group / 2 + 3, &mut part);
                assert_eq!(part, back[group / 2 + 3..group / 2 + 3 + group + 5]);
            }
        }
    }

    #[test]
    fn constant_and_non_finite_blocks_do_not_poison_others() {
        let mut q = QStore::zeroed(4, 32, 64).unwrap();
        let mut x = vec![0.25f32; 64];
        x[40] = f32::NAN;
        q.write(0, &x);
        let mut back = vec![0f32; 64];
        q.read(0, &mut back);
        assert!(back[..32].iter().all(|&v| (v - 0.25).abs() < 1e-3));
        assert!(back[32..].iter().all(|v| v.is_finite()));
    }
}
