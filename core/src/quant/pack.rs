//! LSB-first packing of codes into u32 words (PLACEHOLDER: being written).

/// Packs `codes` (each `< 2^bits`) LSB-first into `out` (`codes.len() * bits / 32` words).
pub fn pack_codes(codes: &[u8], bits: u8, out: &mut [u32]) {
    let _ = (codes, bits, out);
}

/// Unpacks `out.len()` codes of `bits` from `words`.
pub fn unpack_codes(words: &[u32], bits: u8, out: &mut [u8]) {
    let _ = (words, bits, out);
}
