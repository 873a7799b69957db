//! Quantization error on real weight rows of SmolLM2-135M (576 values per row): the Gaussian
//! bounds of the unit tests say little about heavy-tailed real rows, so these are checked too.
//!
//! The source file is Q4_1 (4-bit asymmetric, groups of 32, f16 scale and min), so its weights
//! already sit on such a grid: int4 g32 asymmetric re-quantization is close to lossless, and the
//! other formats measure the loss relative to those weights.

use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::quant::{quantize, QuantSpec, Scheme};
use std::path::Path;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);
const TENSORS: [&str; 2] = ["blk.0.attn_q.weight", "blk.5.ffn_down.weight"];
const COLS: usize = 576;
const ROWS: usize = 64;

/// (bits, group, scheme, bound on ‖w − ŵ‖/‖w‖ over the first 64 rows of each tensor).
/// Bounds: the larger measured value (trailing comment: attn_q / ffn_down) plus about 10%;
/// int4 g32 asymmetric recovers the file's Q4_1 grid exactly (0.0), bounded at 1e-3.
const BOUNDS: [(u8, usize, Scheme, f64); 8] = [
    (8, 32, Scheme::Symmetric, 0.0066),   // 0.00596 / 0.00508
    (8, 128, Scheme::Asymmetric, 0.0071), // 0.00641 / 0.00531
    (4, 32, Scheme::Asymmetric, 0.001),   // 0.00000 / 0.00000
    (4, 128, Scheme::Symmetric, 0.128),   // 0.1165 / 0.0936
    (3, 32, Scheme::Asymmetric, 0.168),   // 0.1524 / 0.1371
    (3, 128, Scheme::Symmetric, 0.239),   // 0.2169 / 0.1860
    (2, 32, Scheme::Asymmetric, 0.358),   // 0.3256 / 0.2978
    (2, 128, Scheme::Asymmetric, 0.420),  // 0.3822 / 0.3330
];

fn rel_rms(w: &[f32], q: &[f32]) -> f64 {
    let num: f64 = w.iter().zip(q).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = w.iter().map(|a| f64::from(*a).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn real_rows_within_bounds() {
    let path = Path::new(MODEL);
    if !path.exists() {
        // The model is fetched by scripts/; without it there is nothing to measure.
        eprintln!("skipping: {MODEL} not present");
        return;
    }
    let file = GgufFile::open(path).expect("open GGUF");
    for name in TENSORS {
        let all = file.dequantize(name).expect("dequantize tensor");
        assert_eq!(all.len() % COLS, 0, "{name}: rows of {COLS}");
        let w = &all[..ROWS * COLS];
        for (bits, group, scheme, bound) in BOUNDS {
            let spec = QuantSpec::new(bits, group, scheme).unwrap();
            let e = rel_rms(w, &quantize(w, ROWS, COLS, spec).unwrap().dequantize());
            eprintln!("{name} int{bits} g{group} {scheme:?}: {e:.5}");
            assert!(
                e <= bound,
                "{name} int{bits} g{group} {scheme:?}: {e:.5} > {bound}"
            );
        }
    }
}
