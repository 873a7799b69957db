//! Unit tests of both algorithms on hand-made vocabularies, small enough to follow by hand.

use super::Tokenizer;
use crate::formats::gguf::GgufValue;
use std::collections::BTreeMap;

fn strings(items: &[&str]) -> GgufValue {
    GgufValue::Array(
        items
            .iter()
            .map(|s| GgufValue::String((*s).into()))
            .collect(),
    )
}

fn ints(items: &[i64]) -> GgufValue {
    GgufValue::Array(items.iter().map(|&i| GgufValue::I64(i)).collect())
}

fn floats(items: &[f64]) -> GgufValue {
    GgufValue::Array(items.iter().map(|&f| GgufValue::F64(f)).collect())
}

fn bpe_metadata() -> BTreeMap<String, GgufValue> {
    let mut m = BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("gpt2".into()),
    );
    m.insert(
        "tokenizer.ggml.pre".into(),
        GgufValue::String("gpt-2".into()),
    );
    m.insert(
        "tokenizer.ggml.tokens".into(),
        strings(&[
            "a",
            "b",
            "c",
            "Ġ",
            "ab",
            "abc",
            "Ġa",
            "<|im_end|>",
            "Ã",
            "©",
        ]),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        ints(&[1, 1, 1, 1, 1, 1, 1, 3, 1, 1]),
    );
    m.insert(
        "tokenizer.ggml.merges".into(),
        strings(&["a b", "ab c", "Ġ a"]),
    );
    m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U64(7));
    m
}

#[test]
fn bpe_merges_lowest_rank_first() {
    let t = Tokenizer::from_metadata(&bpe_metadata()).expect("tokenizer");
    // "abc" -> a b c -> ab c -> abc; " ab": rank 0 "a b" wins over rank 2 "Ġ a".
    assert_eq!(t.encode("abc ab", false).expect("encode"), [5, 3, 4]);
    // Bytes of "é" (C3 A9) map to "Ã" and "©" in the byte-level alphabet.
    assert_eq!(t.encode("é", false).expect("encode"), [8, 9]);
    assert_eq!(t.decode(&[5, 3, 4, 8, 9]), "abc abé");
    assert_eq!(t.token_bytes(3), b" ");
}

#[test]
fn bpe_special_tokens_only_with_parse_special() {
    let t = Tokenizer::from_metadata(&bpe_metadata()).expect("tokenizer");
    assert_eq!(
        t.encode_with("ab<|im_end|>", false, true).expect("encode"),
        [4, 7]
    );
    // As plain text the unknown characters '<', '|', ... have no tokens and are dropped.
    assert_eq!(
        t.encode_with("ab<|im_end|>", false, false).expect("encode"),
        [4]
    );
    assert!(t.is_end_of_generation(7));
    assert!(!t.is_end_of_generation(4));
    assert!(
        t.token_bytes(7).is_empty(),
        "control tokens render as nothing"
    );
}

fn spm_metadata() -> BTreeMap<String, GgufValue> {
    let mut m = BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("llama".into()),
    );
    let tokens = [
        "<unk>", "<s>", "</s>", "<0x0A>", "<0xC3>", "<0xA9>", "▁", "a", "b", "▁a", "▁ab", "ab",
    ];
    m.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
    m.insert(
        "tokenizer.ggml.scores".into(),
        floats(&[
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -3.0, -4.0, -4.0, -1.0, -0.5, -2.0,
        ]),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        ints(&[2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1]),
    );
    m
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let t = Tokenizer::from_metadata(&spm_metadata()).expect("tokenizer");
    assert!(t.add_bos());
    // "▁ab": "▁a" (-1) beats "ab" (-2), then "▁ab" (-0.5).
    assert_eq!(t.encode("ab", true).expect("encode"), [1, 10]);
    // "\n" and "é" have no tokens: byte fallback.
    assert_eq!(t.encode("a\né", false).expect("encode"), [9, 3, 4, 5]);
    assert_eq!(t.decode(&[1, 9, 3, 4, 5]), "a\né");
    assert_eq!(t.token_bytes(10), b" ab");
    assert_eq!(t.token_bytes(4), [0xC3]);
}

#[test]
fn spm_prefixes_space_after_special_tokens() {
    let t = Tokenizer::from_metadata(&spm_metadata()).expect("tokenizer");
    assert_eq!(t.encode("</s>ab", false).expect("encode"), [2, 10]);
}

#[test]
fn chat_template_missing_is_unsupported_model() {
    let t = Tokenizer::from_metadata(&spm_metadata()).expect("tokenizer");
    let err = t
        .apply_chat_template(&[("user", "hi")], true)
        .expect_err("no template");
    assert_eq!(err.code, crate::error::ErrorCode::UnsupportedModel);
}

#[test]
fn chat_template_sees_bos_and_eos() {
    let mut m = spm_metadata();
    m.insert(
        "tokenizer.chat_template".into(),
        GgufValue::String(
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
                .into(),
        ),
    );
    let t = Tokenizer::from_metadata(&m).expect("tokenizer");
    let text = t
        .apply_chat_template(&[("user", "ab")], false)
        .expect("render");
    assert_eq!(text, "<s>ab</s>");
    assert_eq!(t.encode(&text, false).expect("encode"), [1, 10, 2]);
}
