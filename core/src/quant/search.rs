//! Error-minimising scale search (PLACEHOLDER: being written).
use super::QuantSpec;

/// Quantizes one group: writes codes, returns `(scale, offset)`.
pub fn quantize_group(values: &[f32], spec: &QuantSpec, codes: &mut [u8]) -> (f32, f32) {
    let _ = (values, spec, codes);
    (0.0, 0.0)
}
