//! CTranslate2 `model.bin` reader: files written by ctranslate2 itself (int8, int16, float16
//! quantization of known weights; `fixtures/make_ct2_fixtures.py`), every dtype and binary
//! version on files written here with its layout, malformed files (every prefix, seeded
//! corruption, hand-made bad headers) giving clean errors, and the real Whisper tiny.en model.

#[path = "support/model_writers.rs"]
mod model_writers;

use lowbit_core::formats::{Ct2Dtype, Ct2Model};
use lowbit_core::ErrorCode;
use model_writers::{ct2, ct2_version, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// A small model with a variable of every kind the reader converts.
fn every_kind() -> Vec<u8> {
    ct2(
        "WhisperSpec",
        3,
        &[
            Var::bf16("a/bf16", &[2], &[1.5, -2.0]),
            Var::f16("a/f16", &[2, 2], &[0.5, -0.25, 65504.0, 1e-3]),
            Var::f32("a/f32", &[3], &[1.0, -2.5, 3.25]),
            Var::i32("a/i32", &[2], &[-7, 123_456]),
            Var::i8("dec/int8/weight", &[2, 3], &[127, -127, 0, 10, 20, -30]),
            Var::f32("dec/int8/weight_scale", &[2], &[127.0, 10.0]),
            Var::i16("dec/int16/weight", &[2, 2], &[1000, -500, 2048, 0]),
            Var::f32("dec/int16/weight_scale", &[], &[1024.0]),
            Var::i16("dec/num_heads", &[], &[6]),
            Var::i8("dec/pre_norm", &[], &[1]),
        ],
        &[("dec/projection/weight", "dec/int8/weight")],
    )
}

#[test]
fn header_and_every_dtype() {
    let m = Ct2Model::from_bytes(every_kind()).unwrap();
    assert_eq!(m.binary_version(), 6);
    assert_eq!(m.spec(), "WhisperSpec");
    assert_eq!(m.spec_revision(), 3);
    assert_eq!(m.architecture(), "whisper");
    assert_eq!(m.variables().len(), 10);
    let f16 = m.variable("a/f16").unwrap();
    assert_eq!((f16.dtype, f16.shape.clone()), (Ct2Dtype::F16, vec![2, 2]));
    assert_eq!(m.variable_f32("a/bf16").unwrap(), [1.5, -2.0]);
    let h = m.variable_f32("a/f16").unwrap();
    assert_eq!(&h[..3], &[0.5, -0.25, 65504.0]);
    assert!((h[3] - 1e-3).abs() < 1e-6, "{}", h[3]);
    assert_eq!(m.variable_f32("a/f32").unwrap(), [1.0, -2.5, 3.25]);
    assert_eq!(m.variable_f32("a/i32").unwrap(), [-7.0, 123_456.0]);
    // Integer attributes without a scale stay integers.
    assert_eq!(m.variable_f32("dec/num_heads").unwrap(), [6.0]);
    assert_eq!(m.variable_f32("dec/pre_norm").unwrap(), [1.0]);
    assert_eq!(m.variable("dec/num_heads").unwrap().n_elements(), 1);
}

#[test]
fn quantized_weights_are_divided_by_their_scales() {
    let m = Ct2Model::from_bytes(every_kind()).unwrap();
    // int8: one scale per row (127 / row amax).
    assert_eq!(
        m.variable_f32("dec/int8/weight").unwrap(),
        [1.0, -1.0, 0.0, 1.0, 2.0, -3.0]
    );
    // int16: one scalar scale.
    assert_eq!(
        m.variable_f32("dec/int16/weight").unwrap(),
        [1000.0 / 1024.0, -500.0 / 1024.0, 2.0, 0.0]
    );
    // An alias reads its target, scale included.
    assert_eq!(
        m.variable_f32("dec/projection/weight").unwrap(),
        m.variable_f32("dec/int8/weight").unwrap()
    );
    assert_eq!(
        m.variable_bytes("dec/projection/weight").unwrap(),
        m.variable_bytes("dec/int8/weight").unwrap()
    );
    assert_eq!(m.aliases().len(), 1);
}

#[test]
fn int16_weight_without_scale_uses_ctranslate2_default() {
    let m = Ct2Model::from_bytes(ct2(
        "TransformerSpec",
        1,
        &[Var::i16("enc/weight", &[1, 2], &[1000, -3000])],
        &[],
    ))
    .unwrap();
    assert_eq!(m.variable_f32("enc/weight").unwrap(), [1.0, -3.0]);
    assert_eq!(m.architecture(), "transformer");
}

#[test]
fn older_binary_versions() {
    let vars = [
        Var::f32("w/weight", &[2], &[0.25, 4.0]),
        Var::i16("n", &[], &[8]),
    ];
    for version in [2, 3, 4, 5] {
        let m = Ct2Model::from_bytes(ct2_version(version, "TransformerSpec", 1, &vars, &[]))
            .unwrap_or_else(|e| panic!("version {version}: {e}"));
        assert_eq!(m.binary_version(), version);
        assert_eq!(m.variable_f32("w/weight").unwrap(), [0.25, 4.0]);
        assert_eq!(m.variable_f32("n").unwrap(), [8.0]);
    }
    for version in [0, 1, 7, 1_000_000] {
        let e = Ct2Model::from_bytes(ct2_version(version, "TransformerSpec", 1, &vars, &[]))
            .unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::UnsupportedModel,
            "version {version}: {e}"
        );
        assert!(e.message.contains("binary version"), "{e}");
    }
}

#[test]
fn every_prefix_fails_cleanly() {
    let full = every_kind();
    for len in 0..full.len() {
        let e = Ct2Model::from_bytes(full[..len].to_vec())
            .err()
            .unwrap_or_else(|| panic!("prefix {len} opened"));
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
        assert!(e.message.contains("truncated"), "prefix {len}: {e}");
    }
    assert!(Ct2Model::from_bytes(full).is_ok());
}

#[test]
fn seeded_corruption_never_panics() {
    let full = every_kind();
    let mut rng = StdRng::seed_from_u64(17);
    let (mut opened, mut failed) = (0, 0);
    for _ in 0..4000 {
        let mut bytes = full.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        match Ct2Model::from_bytes(bytes) {
            Ok(m) => {
                opened += 1;
                // Whatever opens must convert or refuse every variable without a panic.
                for v in m.variables().to_vec() {
                    if let Ok(values) = m.variable_f32(&v.name) {
                        assert_eq!(values.len() as u64, v.n_elements(), "{}", v.name);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                assert!(
                    matches!(
                        e.code,
                        ErrorCode::ModelLoadingFailed | ErrorCode::UnsupportedModel
                    ),
                    "{e}"
                );
            }
        }
    }
    // Both outcomes occur: data bytes corrupt silently, header bytes are caught.
    assert!(
        opened > 100 && failed > 100,
        "opened {opened}, failed {failed}"
    );
}

fn expect_error(bytes: Vec<u8>, needle: &str) {
    let e = Ct2Model::from_bytes(bytes).unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}");
    assert!(e.message.contains(needle), "expected {needle:?} in {e}");
}

#[test]
fn hand_made_bad_headers() {
    // A huge variable count with nothing behind it.
    let mut b = ct2("WhisperSpec", 1, &[], &[]);
    let count_at = 4 + 2 + "WhisperSpec".len() + 1 + 4;
    b[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    expect_error(b, "variables need at least");
    expect_error(
        ct2("S", 1, &[Var::raw("x", &[2], 9, vec![0; 8])], &[]),
        "unknown dtype id 9",
    );
    expect_error(
        ct2("S", 1, &[Var::raw("x", &[3], 0, vec![0; 8])], &[]),
        "do not hold",
    );
    expect_error(
        ct2("S", 1, &[Var::raw("x", &[1; 12], 0, vec![0; 4])], &[]),
        "rank 12",
    );
    expect_error(
        ct2(
            "S",
            1,
            &[Var::raw("x", &[u32::MAX, u32::MAX, u32::MAX], 0, vec![])],
            &[],
        ),
        "overflows",
    );
    expect_error(
        ct2(
            "S",
            1,
            &[Var::f32("x", &[1], &[1.0]), Var::f32("x", &[1], &[2.0])],
            &[],
        ),
        "appears twice",
    );
    expect_error(
        ct2("S", 1, &[Var::f32("x", &[1], &[1.0])], &[("y", "missing")]),
        "not a variable",
    );
    expect_error(
        ct2("S", 1, &[Var::f32("x", &[1], &[1.0])], &[("x", "x")]),
        "also a variable",
    );
    expect_error(ct2("", 1, &[], &[]), "empty spec name");
    let mut b = ct2("S", 1, &[Var::f32("xy", &[1], &[1.0])], &[]);
    let name_at = 4 + 2 + 2 + 4 + 4 + 2;
    b[name_at] = 0xff;
    expect_error(b, "not UTF-8");
}

#[test]
fn bad_scales_are_errors_not_garbage() {
    let m = Ct2Model::from_bytes(ct2(
        "S",
        1,
        &[
            Var::i8("no_scale/weight", &[1, 2], &[1, 2]),
            Var::i8("short/weight", &[3, 2], &[1, 2, 3, 4, 5, 6]),
            Var::f32("short/weight_scale", &[2], &[1.0, 2.0]),
            Var::i8("zero/weight", &[1, 1], &[1]),
            Var::f32("zero/weight_scale", &[1], &[0.0]),
        ],
        &[],
    ))
    .unwrap();
    for (name, needle) in [
        ("no_scale/weight", "has no"),
        ("short/weight", "2 scales"),
        ("zero/weight", "zero or non-finite"),
        ("absent", "not found"),
    ] {
        let e = m.variable_f32(name).unwrap_err();
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{name}: {e}");
        assert!(e.message.contains(needle), "{name}: {e}");
    }
}

/// Found by the ct2 fuzz target (a stack overflow): an alias can name a weight as its own
/// scale, or two weights as each other's. A scale is read as stored, never dequantized
/// itself, so neither recurses.
#[test]
fn aliased_scales_do_not_recurse() {
    let m = Ct2Model::from_bytes(ct2(
        "S",
        1,
        &[
            Var::i8("self/weight", &[1, 1], &[3]),
            Var::i8("a/weight", &[1, 1], &[4]),
            Var::i8("b/weight", &[1, 1], &[2]),
        ],
        &[
            ("self/weight_scale", "self/weight"),
            ("a/weight_scale", "b/weight"),
            ("b/weight_scale", "a/weight"),
        ],
    ))
    .unwrap();
    let e = m.variable_f32("self/weight").unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}");
    assert!(e.message.contains("itself"), "{e}");
    // Each divided by the other's stored code.
    assert_eq!(m.variable_f32("a/weight").unwrap(), [2.0]);
    assert_eq!(m.variable_f32("b/weight").unwrap(), [0.5]);
    // The alias itself reads its target, dequantized like it.
    assert_eq!(m.variable_f32("a/weight_scale").unwrap(), [0.5]);
}

fn whisper_tiny() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/whisper-tiny.en/model.bin")
}

#[test]
fn whisper_tiny_en_layout() {
    let m = Ct2Model::open(&whisper_tiny()).unwrap();
    assert_eq!(
        (m.binary_version(), m.spec(), m.spec_revision()),
        (6, "WhisperSpec", 3)
    );
    assert_eq!(m.architecture(), "whisper");
    assert_eq!(m.variables().len(), 148);
    // Whisper tiny: 4 encoder and 4 decoder layers of width 384, 6 heads, 80 mel bins,
    // 1500 audio positions, 448 text positions, 51864 tokens (English-only vocabulary).
    let shape = |n: &str| {
        let v = m.variable(n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(v.dtype, Ct2Dtype::F16, "{n}");
        v.shape.clone()
    };
    for side in ["encoder", "decoder"] {
        for l in 0..4 {
            let p = format!("{side}/layer_{l}");
            assert_eq!(
                shape(&format!("{p}/self_attention/linear_0/weight")),
                [1152, 384]
            );
            assert_eq!(shape(&format!("{p}/self_attention/linear_0/bias")), [1152]);
            assert_eq!(
                shape(&format!("{p}/self_attention/linear_1/weight")),
                [384, 384]
            );
            assert_eq!(shape(&format!("{p}/ffn/linear_0/weight")), [1536, 384]);
            assert_eq!(shape(&format!("{p}/ffn/linear_1/weight")), [384, 1536]);
            assert_eq!(shape(&format!("{p}/ffn/layer_norm/gamma")), [384]);
        }
        assert!(m
            .variable(&format!("{side}/layer_4/ffn/layer_norm/gamma"))
            .is_none());
        assert_eq!(m.variable_f32(&format!("{side}/num_heads")).unwrap(), [6.0]);
    }
    for l in 0..4 {
        // Cross-attention: queries from the decoder, fused keys|values from the encoder.
        assert_eq!(
            shape(&format!("decoder/layer_{l}/attention/linear_0/weight")),
            [384, 384]
        );
        assert_eq!(
            shape(&format!("decoder/layer_{l}/attention/linear_1/weight")),
            [768, 384]
        );
    }
    assert_eq!(shape("encoder/conv1/weight"), [384, 80, 3]);
    assert_eq!(shape("encoder/conv2/weight"), [384, 384, 3]);
    assert_eq!(shape("encoder/position_encodings/encodings"), [1500, 384]);
    assert_eq!(shape("decoder/position_encodings/encodings"), [448, 384]);
    assert_eq!(shape("decoder/embeddings/weight"), [51864, 384]);
    // The output projection is tied to the embedding table through an alias.
    assert_eq!(
        m.aliases()
            .get("decoder/projection/weight")
            .map(String::as_str),
        Some("decoder/embeddings/weight")
    );
    assert_eq!(shape("decoder/projection/weight"), [51864, 384]);
}

#[test]
fn whisper_tiny_en_values() {
    let m = Ct2Model::open(&whisper_tiny()).unwrap();
    // First values of the embedding table, as numpy reads the same f16 bytes.
    let emb = m.variable_f32("decoder/embeddings/weight").unwrap();
    assert_eq!(emb.len(), 51864 * 384);
    assert_eq!(
        emb[..4].iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        [
            0.034698486328125,
            -0.0052947998046875,
            -0.0164337158203125,
            -0.0004329681396484375
        ]
    );
    assert_eq!(m.variable_f32("decoder/projection/weight").unwrap(), emb);
    // The encoder's positions are Whisper's fixed sinusoids (sin of the first 192 channels,
    // cos of the last 192, timescales 1 .. 10000), stored in f16: an independent reference
    // for the f16 conversion over the whole tensor.
    let pos = m
        .variable_f32("encoder/position_encodings/encodings")
        .unwrap();
    let half = 192;
    let step = (10_000f64).ln() / (half - 1) as f64;
    let mut worst = 0f64;
    for p in 0..1500 {
        for i in 0..half {
            let angle = p as f64 * (-step * i as f64).exp();
            for (col, want) in [(i, angle.sin()), (half + i, angle.cos())] {
                let got = f64::from(pos[p * 384 + col]);
                worst = worst.max((got - want).abs());
            }
        }
    }
    // f16 keeps 11 significant bits: at most 2^-11 absolute error on values in [-1, 1],
    // plus the float error of the angle at position 1499.
    assert!(worst < 1e-3, "largest deviation from the sinusoids {worst}");
    // LayerNorm parameters are finite and the gammas not all zero; the fused q|k|v bias has
    // its key third zero (Whisper's key projection has no bias).
    for l in 0..4 {
        let g = m
            .variable_f32(&format!(
                "encoder/layer_{l}/self_attention/layer_norm/gamma"
            ))
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
        let b = m
            .variable_f32(&format!("encoder/layer_{l}/self_attention/linear_0/bias"))
            .unwrap();
        assert!(b[384..768].iter().all(|&v| v == 0.0), "layer {l} key bias");
        assert!(b[..384].iter().any(|&v| v != 0.0), "layer {l} query bias");
        assert!(b[768..].iter().any(|&v| v != 0.0), "layer {l} value bias");
    }
}

#[test]
fn whisper_tiny_en_truncated() {
    let full = std::fs::read(whisper_tiny()).unwrap();
    for len in [0, 3, 10, 60, 1_000, full.len() / 2, full.len() - 1] {
        let e = Ct2Model::from_bytes(full[..len].to_vec()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
        assert!(e.message.contains("truncated"), "prefix {len}: {e}");
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The float32 weight [4, 8] and bias [4] that `make_ct2_fixtures.py` gave ctranslate2.
fn original_weights() -> (Vec<f32>, Vec<f32>) {
    let raw = std::fs::read(fixture("ct2_weights.f32")).unwrap();
    let v: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (v[..32].to_vec(), v[32..].to_vec())
}

#[test]
fn files_written_by_ctranslate2() {
    let (weight, bias) = original_weights();
    for (file, dtype) in [
        ("ct2_int8.bin", Ct2Dtype::I8),
        ("ct2_int16.bin", Ct2Dtype::I16),
        ("ct2_float16.bin", Ct2Dtype::F16),
    ] {
        let m = Ct2Model::open(&fixture(file)).unwrap();
        assert_eq!(
            (m.spec(), m.spec_revision(), m.binary_version()),
            ("TinySpec", 2, 6)
        );
        assert_eq!(m.architecture(), "tiny");
        let w = m.variable("proj/weight").unwrap();
        assert_eq!((w.dtype, w.shape.clone()), (dtype, vec![4, 8]), "{file}");
        assert_eq!(m.variable_f32("heads").unwrap(), [6.0], "{file}");
        // The writer aliases the identical layer, scale included.
        assert_eq!(
            m.variable_f32("tied/weight").unwrap(),
            m.variable_f32("proj/weight").unwrap()
        );
        let got = m.variable_f32("proj/weight").unwrap();
        // Rows span 0.01 .. 10: each value within half a quantization step of the original.
        for (r, (want_row, got_row)) in weight.chunks(8).zip(got.chunks(8)).enumerate() {
            let amax = want_row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let step = match dtype {
                Ct2Dtype::I8 => amax / 127.0, // per-row scale 127 / amax
                Ct2Dtype::I16 => weight.iter().fold(0f32, |a, v| a.max(v.abs())) / 1024.0,
                _ => amax / 1024.0, // f16: 11 significant bits
            };
            for (want, got) in want_row.iter().zip(got_row) {
                assert!(
                    (want - got).abs() <= step * 0.5 + 1e-7,
                    "{file} row {r}: {got} for {want} (step {step})"
                );
            }
        }
        // Biases stay float (f16 only in the float16 file).
        let b = m.variable_f32("proj/bias").unwrap();
        for (want, got) in bias.iter().zip(&b) {
            assert!(
                (want - got).abs() <= want.abs() / 1024.0,
                "{file}: {got} vs {want}"
            );
        }
    }
}
