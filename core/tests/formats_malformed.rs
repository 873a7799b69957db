//! Malformed GGUF files: truncation at every offset, seeded random corruption and hand-made
//! bad headers must all give `MODEL_LOADING_FAILED` with a message, never a panic or a huge
//! allocation.

use lowbit_core::formats::GgufFile;
use lowbit_core::{Error, ErrorCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expect_loading_error(bytes: Vec<u8>, what: &str) -> Error {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("{what}: opened"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{what}: {e}");
            assert!(!e.message.is_empty());
            e
        }
    }
}

/// End of the last tensor's data: every shorter prefix must fail, longer ones open.
fn data_end(g: &GgufFile) -> usize {
    g.tensors()
        .iter()
        .map(|t| (g.data_offset() + t.offset + t.n_bytes()) as usize)
        .max()
        .unwrap()
}

#[test]
fn every_prefix_of_a_fixture() {
    let full = std::fs::read(fixture("quant_types.gguf")).unwrap();
    let end = data_end(&GgufFile::from_bytes(full.clone()).unwrap());
    for len in 0..full.len() {
        let r = GgufFile::from_bytes(full[..len].to_vec());
        if len < end {
            let e = r.err().unwrap_or_else(|| panic!("prefix {len} opened"));
            assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
        } else {
            assert!(r.is_ok(), "prefix {len} (past the data) failed");
        }
    }
}

#[test]
fn real_model_truncated() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let full = std::fs::read(path).unwrap();
    let data_offset = 1_785_664; // from gguf-py
    for (len, needle) in [
        (0, "truncated"),
        (3, "truncated"),
        (4, "truncated"),
        (20, "truncated"),
        (1000, "absurd count of tensors"),
        (500_000, "truncated"),
        (data_offset - 1, "truncated"), // the tensor infos end exactly at the data
        (data_offset, "past the end"),
        (full.len() / 2, "past the end"),
        (full.len() - 1, "past the end"),
    ] {
        let e = expect_loading_error(full[..len].to_vec(), &format!("prefix {len}"));
        assert!(e.message.contains(needle), "prefix {len}: {e}");
    }
}

/// Opens a corrupted file; if it opens, every tensor must still dequantize or fail cleanly.
fn open_corrupt(bytes: Vec<u8>, what: &str) -> bool {
    match GgufFile::from_bytes(bytes) {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{what}: {e}");
            false
        }
        Ok(g) => {
            for t in g.tensors() {
                if let Err(e) = g.dequantize(&t.name) {
                    assert!(
                        matches!(
                            e.code,
                            ErrorCode::ModelLoadingFailed | ErrorCode::UnsupportedModel
                        ),
                        "{what}: {e}"
                    );
                }
            }
            true
        }
    }
}

#[test]
fn seeded_random_corruption() {
    let full = std::fs::read(fixture("quant_types.gguf")).unwrap();
    let header_end = GgufFile::from_bytes(full.clone()).unwrap().data_offset() as usize;
    let mut rng = StdRng::seed_from_u64(0x6767_7566);
    let (mut opened, mut refused) = (0, 0);
    for variant in 0..600 {
        let mut bytes = full.clone();
        // Two thirds of the variants hit only the header, where the parsing is.
        let span = if variant % 3 == 2 {
            bytes.len()
        } else {
            header_end
        };
        for _ in 0..rng.gen_range(1..=6) {
            let at = rng.gen_range(0..span);
            bytes[at] = match rng.gen_range(0..3) {
                0 => rng.gen(),
                1 => 0xFF,
                _ => bytes[at] ^ (1 << rng.gen_range(0..8)),
            };
        }
        if open_corrupt(bytes, &format!("variant {variant}")) {
            opened += 1;
        } else {
            refused += 1;
        }
    }
    // Both outcomes must occur, or the corruption is not reaching the parser.
    assert!(
        refused > 200 && opened > 50,
        "{refused} refused, {opened} opened"
    );
}

/// A minimal GGUF writer for hand-made bad headers.
#[derive(Default)]
struct Builder {
    bytes: Vec<u8>,
}

impl Builder {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = Builder::default();
        b.bytes.extend(b"GGUF");
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.bytes.extend(s.as_bytes());
        self
    }
    /// A tensor info: name, dims, ggml type id, offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.bytes);
        b.resize(b.len().next_multiple_of(32) + n, 0);
        b
    }
}

#[test]
fn hand_made_bad_headers() {
    let ok = Builder::header(3, 1, 0)
        .tensor("t", &[32, 2], 0, 0)
        .data(256);
    assert!(GgufFile::from_bytes(ok).is_ok(), "the baseline must open");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"GGML\x03\0\0\0".to_vec(), "magic"),
        ("v1", Builder::header(1, 0, 0).data(0), "version 1"),
        ("v4", Builder::header(4, 0, 0).data(0), "version 4"),
        (
            "big-endian",
            Builder::header(3u32.swap_bytes(), 0, 0).data(0),
            "big-endian",
        ),
        (
            "tensor count",
            Builder::header(3, u64::MAX, 0).data(0),
            "absurd",
        ),
        (
            "kv count",
            Builder::header(3, 0, 1 << 40).data(64),
            "absurd",
        ),
        (
            "string length",
            Builder::header(3, 0, 1).u64(u64::MAX - 3).data(64),
            "string length",
        ),
        (
            "key past end",
            Builder::header(3, 0, 1).u64(1000).data(64),
            "past the end",
        ),
        (
            "value type",
            Builder::header(3, 0, 1).str("k").u32(13).u64(0).data(0),
            "unknown value type 13",
        ),
        (
            "array length",
            Builder::header(3, 0, 1)
                .str("k")
                .u32(9)
                .u32(10)
                .u64(1 << 60)
                .data(64),
            "absurd",
        ),
        (
            "array element type",
            Builder::header(3, 0, 1)
                .str("k")
                .u32(9)
                .u32(77)
                .u64(1)
                .data(8),
            "unknown array element type 77",
        ),
        ("nested arrays", nested_arrays(100_000), "nested"),
        (
            "duplicate key",
            Builder::header(3, 0, 2)
                .str("k")
                .u32(4)
                .u32(1)
                .str("k")
                .u32(4)
                .u32(2)
                .data(0),
            "twice",
        ),
        (
            "invalid utf-8 key",
            {
                let mut b = Builder::header(3, 0, 1);
                b.u64(2);
                b.bytes.extend([0xC3, 0x28]);
                b.u32(4).u32(0).data(0)
            },
            "UTF-8",
        ),
        (
            "alignment",
            Builder::header(3, 0, 1)
                .str("general.alignment")
                .u32(4)
                .u32(48)
                .data(0),
            "power of two",
        ),
        (
            "zero dims",
            Builder::header(3, 1, 0).tensor("t", &[], 0, 0).data(64),
            "0 dims",
        ),
        (
            "five dims",
            Builder::header(3, 1, 0)
                .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
                .data(64),
            "5 dims",
        ),
        (
            "dims overflow",
            Builder::header(3, 1, 0)
                .tensor("t", &[1 << 32, 1 << 32, 1 << 32], 0, 0)
                .data(64),
            "overflow",
        ),
        (
            "rows overflow with zero row length",
            Builder::header(3, 1, 0)
                .tensor("t", &[0, 1 << 40, 1 << 40], 0, 0)
                .data(64),
            "overflow",
        ),
        (
            "unknown ggml type",
            Builder::header(3, 1, 0).tensor("t", &[32], 4, 0).data(64),
            "unknown ggml type id 4",
        ),
        (
            "row not whole blocks",
            Builder::header(3, 1, 0)
                .tensor("t", &[33, 2], 2, 0)
                .data(256),
            "block size",
        ),
        (
            "misaligned offset",
            Builder::header(3, 1, 0).tensor("t", &[4], 0, 4).data(256),
            "alignment",
        ),
        (
            "data past end",
            Builder::header(3, 1, 0)
                .tensor("t", &[32, 2], 0, 0)
                .data(255),
            "past the end",
        ),
        (
            "offset overflow",
            Builder::header(3, 1, 0)
                .tensor("t", &[32], 0, u64::MAX - 31)
                .data(256),
            "past the end",
        ),
        (
            "duplicate tensor",
            Builder::header(3, 2, 0)
                .tensor("t", &[8], 0, 0)
                .tensor("t", &[8], 0, 32)
                .data(64),
            "twice",
        ),
    ];
    for (what, bytes, needle) in cases {
        let e = expect_loading_error(bytes, what);
        assert!(e.message.contains(needle), "{what}: {e}");
    }
}

/// `depth` arrays, each holding the next as its only element.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut b = Builder::header(3, 0, 1);
    b.str("k").u32(9);
    for _ in 0..depth {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(1).u32(0);
    b.data(0)
}

#[test]
fn unsupported_type_is_reported_on_dequantize() {
    // An IQ4_NL tensor (type 20): the file is valid, but lowbit has no dequantizer for it.
    let bytes = Builder::header(3, 1, 0)
        .tensor("w.iq", &[32], 20, 0)
        .data(32);
    let g = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(g.tensor_bytes("w.iq").unwrap().len(), 18);
    let e = g.dequantize("w.iq").unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedModel);
    assert!(
        e.message.contains("w.iq") && e.message.contains("iq4_nl"),
        "{e}"
    );
    let e = g.dequantize("missing").unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
}

#[test]
fn missing_file_is_a_loading_error() {
    let e = GgufFile::open(Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
    assert!(e.message.contains("/nonexistent/model.gguf"), "{e}");
}
