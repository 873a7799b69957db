//! LSB-first packing of codes into `u32` words: the one packing routine for every bit width.
//!
//! Code `i` occupies bits `i * bits .. (i + 1) * bits` of a continuous little-endian bit stream,
//! so a 3-bit code may straddle two words. 2-, 4- and 8-bit codes never straddle.

/// Packs `codes` (each `< 2^bits`; higher bits are ignored) LSB-first into `out`.
///
/// Writes `ceil(codes.len() * bits / 32)` words; bits past the last code in the final word are
/// zero. `bits` is 1..=8 (the formats use 2 to 6 and 8).
///
/// # Panics
/// If `out` is shorter than `ceil(codes.len() * bits / 32)` words (a caller bug: the sizes come
/// from the layout, never from a file).
pub fn pack_codes(codes: &[u8], bits: u8, out: &mut [u32]) {
    let bits = u32::from(bits);
    let mask = (1u64 << bits) - 1;
    // A 64-bit accumulator holds the pending bits; a word is flushed whenever 32 are ready.
    let mut acc = 0u64;
    let mut pending = 0u32;
    let mut w = 0;
    for &c in codes {
        acc |= (u64::from(c) & mask) << pending;
        pending += bits;
        if pending >= 32 {
            out[w] = acc as u32;
            w += 1;
            acc >>= 32;
            pending -= 32;
        }
    }
    if pending > 0 {
        out[w] = acc as u32;
    }
}

/// Unpacks `out.len()` codes of `bits` (1..=8) from the LSB-first bit stream in `words`.
///
/// # Panics
/// If `words` holds fewer than `out.len() * bits` bits (a caller bug, as for [`pack_codes`]).
pub fn unpack_codes(words: &[u32], bits: u8, out: &mut [u8]) {
    let bits = u32::from(bits);
    let mask = (1u64 << bits) - 1;
    let mut acc = 0u64;
    let mut avail = 0u32;
    let mut w = 0;
    for o in out.iter_mut() {
        if avail < bits {
            acc |= u64::from(words[w]) << avail;
            w += 1;
            avail += 32;
        }
        *o = (acc & mask) as u8;
        acc >>= bits;
        avail -= bits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn words_for(n: usize, bits: u8) -> usize {
        (n * bits as usize).div_ceil(32)
    }

    #[test]
    fn round_trip_every_width_and_length() {
        let mut rng = StdRng::seed_from_u64(7);
        for bits in [2u8, 3, 4, 8] {
            // Multiples of 32 that are not multiples of 64/128, plus the model widths.
            for n in [32usize, 64, 96, 160, 576, 1536, 32 * 37] {
                let codes: Vec<u8> = (0..n)
                    .map(|_| rng.gen_range(0..(1u16 << bits)) as u8)
                    .collect();
                let mut words = vec![0u32; words_for(n, bits)];
                assert_eq!(
                    words.len(),
                    n * bits as usize / 32,
                    "no padding for multiples of 32"
                );
                pack_codes(&codes, bits, &mut words);
                let mut back = vec![0u8; n];
                unpack_codes(&words, bits, &mut back);
                assert_eq!(codes, back, "bits {bits}, n {n}");
            }
        }
    }

    #[test]
    fn three_bit_codes_straddle_words_lsb_first() {
        // Code 10 sits at bits 30..33: its low two bits end word 0, its top bit starts word 1.
        let mut codes = [0u8; 32];
        codes[10] = 0b101;
        codes[0] = 0b011;
        codes[31] = 0b111;
        let mut words = [0u32; 3];
        pack_codes(&codes, 3, &mut words);
        assert_eq!(words[0], 0b011 | (0b01 << 30));
        assert_eq!(words[1], 0b1);
        assert_eq!(words[2], 0b111 << 29);
    }

    #[test]
    fn fixed_layout_for_2_4_8_bits() {
        let codes: Vec<u8> = (0..32).map(|i| i as u8).collect();
        let mut w8 = [0u32; 8];
        pack_codes(&codes, 8, &mut w8);
        assert_eq!(w8[0], 0x0302_0100);
        let mut w4 = [0u32; 4];
        pack_codes(&codes, 4, &mut w4);
        assert_eq!(w4[0], 0x7654_3210);
        let mut w2 = [0u32; 2];
        pack_codes(&codes, 2, &mut w2);
        // Codes 0,1,2,3 repeated (masked to 2 bits): 0b11_10_01_00 per byte.
        assert_eq!(w2[0], 0xE4E4_E4E4);
    }

    #[test]
    fn higher_bits_are_masked() {
        let codes = [0xFFu8; 32];
        let mut words = [0u32; 4];
        pack_codes(&codes, 4, &mut words);
        assert_eq!(words, [u32::MAX; 4]);
        let mut w3 = [0u32; 3];
        pack_codes(&codes, 3, &mut w3);
        assert_eq!(w3, [u32::MAX; 3]);
    }
}
