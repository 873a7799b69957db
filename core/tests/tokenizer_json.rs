//! `Tokenizer::from_file` (Hugging Face `tokenizer.json` through the `tokenizers` crate): a
//! `tokenizer.json` equivalent to SmolLM2's is written from the GGUF's vocabulary and merges (the
//! form SmolLM2 ships: digit split + GPT-2 byte level), and both loaders must agree id for id.

#![cfg(feature = "native")]

use lowbit_core::formats::gguf::{GgufFile, GgufValue};
use lowbit_core::tokenizer::Tokenizer;
use serde_json::json;
use std::path::PathBuf;

fn strings(g: &GgufFile, key: &str) -> Vec<String> {
    match g.get(key) {
        Some(GgufValue::Array(items)) => items
            .iter()
            .map(|v| match v {
                GgufValue::String(s) => s.clone(),
                other => panic!("{key}: {other:?}"),
            })
            .collect(),
        other => panic!("{key}: {other:?}"),
    }
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into a fresh folder.
fn write_tokenizer_json(g: &GgufFile) -> PathBuf {
    let tokens = strings(g, "tokenizer.ggml.tokens");
    let merges = strings(g, "tokenizer.ggml.merges");
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        Some(GgufValue::Array(items)) => items
            .iter()
            .map(|v| match v {
                GgufValue::I64(i) => *i,
                GgufValue::U64(u) => *u as i64,
                other => panic!("token_type: {other:?}"),
            })
            .collect(),
        other => panic!("token_type: {other:?}"),
    };
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| types[i] == 3)
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
    });
    let config = json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": g.get_str("tokenizer.chat_template").expect("template"),
    });
    let dir = std::env::temp_dir().join(format!("lowbit-tokenizer-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("write");
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    dir
}

#[test]
fn tokenizer_json_agrees_with_gguf() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = GgufFile::open(&path).expect("open gguf");
    let from_gguf = Tokenizer::from_gguf(&g).expect("gguf tokenizer");
    let dir = write_tokenizer_json(&g);
    let from_json = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer.json");
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(from_json.vocab_size(), from_gguf.vocab_size());
    assert_eq!(from_json.bos_id(), Some(1));
    assert_eq!(from_json.eos_id(), Some(2));
    assert!(from_json.is_end_of_generation(2));
    let texts = [
        "Hello world! The year 2024 was great.",
        "It's 3.14159 - don't you've",
        "Grüße aus Köln — 日本語のテキスト 🦀🚀 naïve café",
        "  leading spaces and\ttabs\n\nnewlines   ",
        "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n",
    ];
    for text in texts {
        let ids = from_json.encode(text, false).expect("encode");
        assert_eq!(
            ids,
            from_gguf.encode(text, false).expect("encode"),
            "{text:?}"
        );
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| from_json.token_bytes(i)).collect();
        assert_eq!(bytes, from_gguf.decode(&ids).as_bytes(), "{text:?}");
    }
    assert_eq!(
        from_json
            .apply_chat_template(&[("user", "Hi")], true)
            .expect("render"),
        from_gguf
            .apply_chat_template(&[("user", "Hi")], true)
            .expect("render"),
    );
}
