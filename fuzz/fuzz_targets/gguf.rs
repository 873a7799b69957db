//! GGUF reader: any bytes must open as a consistent file or fail with `MODEL_LOADING_FAILED`;
//! what opens must give every tensor's bytes, dequantize (a few rows of each) and build its
//! tokenizer from the metadata, or fail with a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::formats::GgufFile;
use lowbit_core::tokenizer::Tokenizer;
use lowbit_core::ErrorCode;

/// Rows dequantized per tensor, and the widest row dequantized: enough to reach every
/// dequantizer's block loop without spending the run on big tensors.
const ROWS: u64 = 4;
const MAX_ROW_LEN: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let g = match GgufFile::from_bytes(data.to_vec()) {
        Ok(g) => g,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}");
            return;
        }
    };
    for key in g.metadata.keys() {
        let _ = (
            g.get_str(key),
            g.get_u64(key),
            g.get_f32(key),
            g.get_array(key),
        );
    }
    for t in g.tensors() {
        let bytes = g.tensor_bytes(&t.name).expect("a listed tensor has bytes");
        assert_eq!(bytes.len() as u64, t.n_bytes(), "tensor {}", t.name);
        assert_eq!(g.tensor_info(&t.name), Some(t));
        if t.row_len() > MAX_ROW_LEN {
            continue;
        }
        let rows = t.n_rows().min(ROWS);
        match g.dequantize_rows(&t.name, 0, rows) {
            Ok(v) => assert_eq!(v.len() as u64, rows * t.row_len(), "tensor {}", t.name),
            Err(e) => assert!(
                matches!(
                    e.code,
                    ErrorCode::UnsupportedModel | ErrorCode::ModelLoadingFailed
                ),
                "{e}"
            ),
        }
        assert!(g.dequantize_rows(&t.name, t.n_rows(), 1).is_err());
    }
    if let Ok(tok) = Tokenizer::from_gguf(&g) {
        // Encoding is the tokenizer's other untrusted-input path once the vocabulary is in.
        if let Ok(ids) = tok.encode("Hello, world! <|im_start|>user\n", true) {
            let _ = tok.decode(&ids);
        }
    }
});
