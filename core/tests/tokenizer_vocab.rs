//! llama.cpp's tokenizer test vectors (`models/vocab/ggml-vocab-*.gguf` with `.inp`/`.out`, from
//! llama.cpp's `tests/`): every input must encode to exactly llama.cpp's ids, tokenized as
//! `test-tokenizer-0` does (`add_special = false`, `parse_special = false`).

use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::tokenizer::Tokenizer;
use std::path::PathBuf;

fn vocab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/vocab")
}

/// The (input, expected ids) pairs of one vocabulary, split as `test-tokenizer-0.cpp` does.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("read .inp");
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("read .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(i) => {
                inputs.push(rest[..i].to_owned());
                rest = &rest[i + sep.len()..];
            }
            None => {
                inputs.push(rest.to_owned());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: .inp and .out disagree on the test count"
    );
    inputs.into_iter().zip(outputs).collect()
}

fn tokenizer(name: &str) -> Tokenizer {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let g = GgufFile::open(&path).expect("open vocab gguf");
    Tokenizer::from_gguf(&g).expect("tokenizer")
}

/// Asserts every case of a vocabulary; reports all mismatches at once.
fn check(name: &str) {
    let t = tokenizer(name);
    let cases = cases(name);
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let got = t.encode_with(text, false, false).expect("encode");
        if &got != expected {
            failures.push(format!(
                "{text:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

macro_rules! vocab_tests {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check($name);
            }
        )*
    };
}

vocab_tests! {
    llama_bpe => "llama-bpe",
    gpt_2 => "gpt-2",
    llama_spm => "llama-spm",
    phi_3 => "phi-3",
    qwen2 => "qwen2",
    qwen35 => "qwen35",
    starcoder => "starcoder",
    refact => "refact",
    command_r => "command-r",
    mpt => "mpt",
    falcon => "falcon",
    deepseek_coder => "deepseek-coder",
    deepseek_llm => "deepseek-llm",
}

/// Decoding inverts encoding for SentencePiece (byte fallback, `▁`) and Llama 3 BPE vocabularies.
#[test]
fn decode_inverts_encode() {
    let texts = [
        "Grüße aus Köln — naïve façade",
        "Привет, мир! 日本語のテキスト 한국어",
        "emoji 🦀🚀👩‍👩‍👧 🇫🇷",
        "  two leading spaces\tand\n\nnewlines  ",
    ];
    for name in ["llama-spm", "llama-bpe", "qwen2", "phi-3"] {
        let t = tokenizer(name);
        for text in texts {
            let ids = t.encode_with(text, true, false).expect("encode");
            assert_eq!(t.decode(&ids), text, "{name}");
        }
    }
}
