//! The GGUF reader against the real SmolLM2-135M-Instruct Q4_1 file (fetched by
//! scripts/fetch-models.sh). Reference values were computed with the Python `gguf` package
//! 0.19.0: `GGUFReader` + `gguf.quants.dequantize`, rows reshaped to `(-1, dims[0])`, sums in
//! float64.

use lowbit_core::formats::{GgmlType, GgufFile, GgufValue};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn model() -> &'static GgufFile {
    static MODEL: OnceLock<GgufFile> = OnceLock::new();
    MODEL.get_or_init(|| GgufFile::open(&model_path()).expect("open the SmolLM2 GGUF"))
}

/// One row's reference: first 8 values, sum and sum of squares (f64).
struct RowRef {
    tensor: &'static str,
    row: u64,
    /// Exactly representable in f32; kept as f64 literals so they read as gguf-py printed them.
    first: [f64; 8],
    sum: f64,
    sum_sq: f64,
}

// Both sides compute each value with the same f32 operations in the same order (`q * d + m`,
// `q * d`, or a plain copy), so values must agree exactly; sums differ only by f64 summation
// order over <= 1536 terms, far below the 1e-9 relative tolerance used.
const ROWS: [RowRef; 4] = [
    RowRef {
        tensor: "blk.0.attn_q.weight",
        row: 5,
        first: [
            0.076171875,
            -0.274658203125,
            -0.040771484375,
            0.894775390625,
            -0.859375,
            0.427001953125,
            -0.040771484375,
            -0.3916015625,
        ],
        sum: -3.731201171875,
        sum_sq: 66.46614653617144,
    },
    RowRef {
        tensor: "blk.0.ffn_down.weight",
        row: 575,
        first: [
            -0.04022216796875,
            -0.14361572265625,
            -0.117767333984375,
            0.192413330078125,
            -0.117767333984375,
            0.1148681640625,
            0.06317138671875,
            0.1148681640625,
        ],
        sum: 1.4561767578125,
        sum_sq: 26.398640965577215,
    },
    RowRef {
        tensor: "token_embd.weight",
        row: 1000,
        first: [
            -0.1119384765625,
            -0.0739593505859375,
            0.0379791259765625,
            -0.0179901123046875,
            -0.1619110107421875,
            -0.0099945068359375,
            0.0299835205078125,
            0.2398681640625,
        ],
        sum: 1.9784250259399414,
        sum_sq: 7.017881403814499,
    },
    RowRef {
        tensor: "blk.0.attn_norm.weight",
        row: 0,
        first: [
            0.01397705078125,
            0.0238037109375,
            -0.019775390625,
            -0.0302734375,
            -0.0196533203125,
            -0.03515625,
            0.0225830078125,
            -0.02001953125,
        ],
        sum: 0.6129436492919922,
        sum_sq: 0.9180835409024439,
    },
];

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

#[test]
fn smollm2_metadata() {
    let g = model();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count"), Some(30));
    assert_eq!(g.get_u64("llama.embedding_length"), Some(576));
    assert_eq!(g.get_u64("llama.attention.head_count_kv"), Some(3));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(
        g.get("tokenizer.ggml.add_bos_token"),
        Some(&GgufValue::Bool(false))
    );
    let tokens = g.get_array("tokenizer.ggml.tokens").expect("token list");
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        g.get_array("tokenizer.ggml.merges").map(<[_]>::len),
        Some(48900)
    );
    assert_eq!(g.metadata.len(), 33, "kv_count of the header");
}

#[test]
fn smollm2_tensor_directory() {
    let g = model();
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.tensor_dims("token_embd.weight"), Some(vec![576, 49152]));
    let embd = g.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.offset, 0);
    assert_eq!(g.data_offset(), 1_785_664, "data start reported by gguf-py");
    assert_eq!(
        g.tensor_bytes("token_embd.weight").unwrap().len(),
        576 * 49152 / 32 * 34
    );
    let count = |t| g.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(g.tensor_dims("no.such.tensor"), None);
}

#[test]
fn smollm2_rows_match_gguf_py() {
    let g = model();
    for r in &ROWS {
        let row = g.dequantize_rows(r.tensor, r.row, 1).unwrap();
        assert_eq!(row.len() as u64, g.tensor_info(r.tensor).unwrap().row_len());
        let first: Vec<f64> = row[..8].iter().map(|&v| f64::from(v)).collect();
        assert_eq!(first, r.first, "{} row {}", r.tensor, r.row);
        let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!(
            close(sum, r.sum, 1e-9),
            "{}: sum {sum} vs {}",
            r.tensor,
            r.sum
        );
        assert!(
            close(sum_sq, r.sum_sq, 1e-9),
            "{}: sum_sq {sum_sq}",
            r.tensor
        );
    }
}

#[test]
fn smollm2_whole_tensor_matches_rows_and_totals() {
    let g = model();
    // Whole-tensor f64 totals from gguf-py (same tolerance reasoning as the rows).
    for (name, total) in [
        ("blk.0.attn_q.weight", 59.22322082519531),
        ("blk.0.ffn_down.weight", 150.63577270507812),
        ("output_norm.weight", 1038.33203125),
    ] {
        let all = g.dequantize(name).unwrap();
        let info = g.tensor_info(name).unwrap();
        assert_eq!(all.len() as u64, info.n_elements());
        let s: f64 = all.iter().map(|&v| f64::from(v)).sum();
        assert!(close(s, total, 1e-9), "{name}: total {s} vs {total}");
        // A row range is the same slice of the whole.
        let rl = info.row_len() as usize;
        let rows = info.n_rows();
        let tail = g.dequantize_rows(name, rows - 1, 1).unwrap();
        assert_eq!(&all[all.len() - rl..], &tail[..]);
    }
    let e = g
        .dequantize_rows("token_embd.weight", 49151, 2)
        .unwrap_err();
    assert_eq!(e.code, lowbit_core::ErrorCode::ModelLoadingFailed);
}

#[test]
fn smollm2_every_tensor_dequantizes() {
    let g = model();
    let t0 = std::time::Instant::now();
    let mut values = 0u64;
    for t in g.tensors() {
        let v = g.dequantize(&t.name).unwrap();
        assert_eq!(v.len() as u64, t.n_elements(), "{}", t.name);
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{} has non-finite values",
            t.name
        );
        values += v.len() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "dequantized {values} values ({} MB of GGUF) in {secs:.3} s",
        std::fs::metadata(model_path()).unwrap().len() / 1_000_000
    );
    assert_eq!(values, 134_515_008);
}
