//! Dequantization of every supported GGML type against `gguf.quants.dequantize`, and every
//! metadata value type, on fixtures written by `fixtures/make_fixtures.py`.

use lowbit_core::formats::{GgmlType, GgufFile, GgufValue};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected_values() -> Vec<f32> {
    std::fs::read(fixture("quant_types.expected.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn every_type_matches_gguf_py() {
    let g = GgufFile::open(&fixture("quant_types.gguf")).unwrap();
    let expected = expected_values();
    let mut at = 0;
    let mut seen = Vec::new();
    for t in g.tensors() {
        let got = g.dequantize(&t.name).unwrap();
        let want = &expected[at..at + got.len()];
        at += got.len();
        // gguf-py evaluates the same f32 expressions (`d * sc * q - dmin * m`, ...) as ggml and
        // as lowbit, but numpy may group a product differently (`(d * sc) * q` vs
        // `d * (sc * q)`), which moves a result by at most an ulp or two: 1e-6 relative. A
        // wrong bit field in a block layout is off by whole quantization steps, orders of
        // magnitude more.
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs() + 1e-30,
                "{} ({}) value {i}: {a} vs gguf-py {b}",
                t.name,
                t.ggml_type
            );
        }
        seen.push(t.ggml_type);
    }
    assert_eq!(at, expected.len(), "every expected value consumed");
    use GgmlType::*;
    for ty in [
        Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16, F32,
    ] {
        assert!(seen.contains(&ty), "fixture lacks {ty}");
    }
}

#[test]
fn row_ranges_and_shapes() {
    let g = GgufFile::open(&fixture("quant_types.gguf")).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    let cube = g.tensor_info("f32.cube").unwrap();
    assert_eq!(cube.dims, vec![8, 3, 2]);
    assert_eq!((cube.row_len(), cube.n_rows()), (8, 6));
    for name in ["q3_k.weight", "q5_0.weight", "f32.cube"] {
        let all = g.dequantize(name).unwrap();
        let info = g.tensor_info(name).unwrap();
        let rl = info.row_len() as usize;
        for first in 0..info.n_rows() {
            for n in 0..=info.n_rows() - first {
                let part = g.dequantize_rows(name, first, n).unwrap();
                let s = first as usize * rl;
                assert_eq!(part, all[s..s + n as usize * rl], "{name} rows {first}+{n}");
            }
        }
        assert!(g.dequantize_rows(name, info.n_rows(), 1).is_err());
        assert!(g.dequantize_rows(name, 1, u64::MAX).is_err());
    }
}

#[test]
fn every_metadata_type() {
    let g = GgufFile::open(&fixture("quant_types.gguf")).unwrap();
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("general.alignment"), Some(64));
    assert_eq!(g.get_u64("test.u8"), Some(200));
    assert_eq!(g.get("test.i8"), Some(&GgufValue::I64(-100)));
    assert_eq!(g.get_u64("test.u16"), Some(60000));
    assert_eq!(g.get("test.i16"), Some(&GgufValue::I64(-30000)));
    assert_eq!(g.get_u64("test.u32"), Some(4_000_000_000));
    assert_eq!(g.get("test.i32"), Some(&GgufValue::I64(-2_000_000_000)));
    assert_eq!(g.get_u64("test.i32"), None, "negative values are not u64");
    assert_eq!(g.get_f32("test.f32"), Some(0.25));
    assert_eq!(g.get("test.bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(g.get_str("test.string"), Some("héllo"));
    assert_eq!(g.get_u64("test.u64"), Some((1u64 << 63) + 5));
    assert_eq!(g.get("test.i64"), Some(&GgufValue::I64(-(1i64 << 62))));
    assert_eq!(g.get("test.f64"), Some(&GgufValue::F64(-1.5e300)));
    let strings = g.get_array("test.strings").unwrap();
    assert_eq!(
        strings,
        &[
            GgufValue::String("a".into()),
            GgufValue::String("bc".into()),
            GgufValue::String(String::new())
        ]
    );
    let ints = g.get_array("test.i32s").unwrap();
    assert_eq!(
        ints,
        &[GgufValue::I64(1), GgufValue::I64(-2), GgufValue::I64(3)]
    );
    assert_eq!(g.get_array("test.u8"), None);
    assert_eq!(g.get_str("test.u8"), None);
}

#[test]
fn version_2_reads_like_version_3() {
    // v2 and v3 share one layout for little-endian files (v3 only added big-endian support).
    let mut bytes = std::fs::read(fixture("quant_types.gguf")).unwrap();
    assert_eq!(bytes[4..8], 3u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::from_bytes(bytes).unwrap();
    let v3 = GgufFile::open(&fixture("quant_types.gguf")).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.metadata, v3.metadata);
    assert_eq!(v2.tensors(), v3.tensors());
    assert_eq!(
        v2.dequantize("q6_k.weight").unwrap(),
        v3.dequantize("q6_k.weight").unwrap()
    );
}
