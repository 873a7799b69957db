//! safetensors: a fixture written by Python's `safetensors` package (plus a BF16 tensor
//! appended by hand, see fixtures/make_fixtures.py) read back, and malformed headers.

use lowbit_core::formats::{SafeDtype, SafeTensors};
use lowbit_core::ErrorCode;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn reads_python_written_file() {
    let st = SafeTensors::open(&fixture("small.safetensors")).unwrap();
    assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
    let listing: Vec<_> = st
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.clone()))
        .collect();
    assert_eq!(
        listing,
        vec![
            ("a", SafeDtype::F32, vec![3, 5]),
            ("b", SafeDtype::F16, vec![4]),
            ("c", SafeDtype::BF16, vec![2, 2, 2]),
        ]
    );
    // The expected file holds the same numbers already widened to f32 by numpy; widening
    // F16/BF16 is exact, so equality is exact.
    let expected: Vec<f32> = std::fs::read(fixture("small.expected.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut got = Vec::new();
    for t in st.tensors() {
        let v = st.tensor_f32(&t.name).unwrap();
        assert_eq!(v.len() as u64, t.n_elements());
        got.extend(v);
    }
    assert_eq!(got, expected);
    assert_eq!(st.tensor_bytes("b").unwrap().len(), 8);
    assert_eq!(st.tensor("c").unwrap().dtype.size(), 2);
    let e = st.tensor_f32("nope").unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
}

/// A file with header `json` and `data_len` zero bytes of data.
fn file(json: &str, data_len: usize) -> Vec<u8> {
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend(json.as_bytes());
    b.resize(b.len() + data_len, 0);
    b
}

#[test]
fn other_dtypes_are_listed_but_not_converted() {
    let st = SafeTensors::from_bytes(file(
        r#"{"i":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#,
        8,
    ))
    .unwrap();
    assert_eq!(st.tensor("i").unwrap().dtype, SafeDtype::I32);
    let e = st.tensor_f32("i").unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedModel);
}

#[test]
fn malformed_headers() {
    let mut huge_len = u64::MAX.to_le_bytes().to_vec();
    huge_len.extend(b"{}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "truncated"),
        ("short", vec![1, 2, 3], "truncated"),
        ("header length", huge_len, "past the end"),
        (
            "header past end",
            {
                let mut b = file("{}", 0);
                b[0] = 200;
                b
            },
            "past the end",
        ),
        ("not json", file("{nope", 0), "JSON"),
        ("not an object", file("[1,2]", 0), "JSON"),
        ("entry not object", file(r#"{"t":5}"#, 0), "not an object"),
        (
            "unknown dtype",
            file(
                r#"{"t":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}"#,
                1,
            ),
            "unknown dtype",
        ),
        (
            "missing shape",
            file(r#"{"t":{"dtype":"F32","data_offsets":[0,4]}}"#, 4),
            "missing shape",
        ),
        (
            "negative dim",
            file(
                r#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                4,
            ),
            "shape entry",
        ),
        (
            "size mismatch",
            file(
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                8,
            ),
            "do not hold",
        ),
        (
            "reversed offsets",
            file(
                r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
                8,
            ),
            "do not hold",
        ),
        (
            "data past end",
            file(
                r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                15,
            ),
            "past the end",
        ),
        (
            "shape overflow",
            file(
                r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
            ),
            "overflows",
        ),
        (
            "bad metadata",
            file(r#"{"__metadata__":{"k":1}}"#, 0),
            "not a string",
        ),
    ];
    for (what, bytes, needle) in cases {
        let e = SafeTensors::from_bytes(bytes).expect_err(what);
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{what}: {e}");
        assert!(e.message.contains(needle), "{what}: {e}");
    }
}

#[test]
fn every_prefix_fails_cleanly() {
    let full = std::fs::read(fixture("small.safetensors")).unwrap();
    for len in 0..full.len() {
        let e = SafeTensors::from_bytes(full[..len].to_vec()).expect_err("prefix opened");
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
    }
    assert!(SafeTensors::from_bytes(full).is_ok());
}
