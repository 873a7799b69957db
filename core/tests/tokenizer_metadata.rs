//! Malformed tokenizer metadata gives a `MODEL_LOADING_FAILED` error naming the key, never a
//! panic; unsupported tokenizer models give `UNSUPPORTED_MODEL`.

use lowbit_core::error::ErrorCode;
use lowbit_core::formats::gguf::GgufValue;
use lowbit_core::tokenizer::Tokenizer;
use std::collections::BTreeMap;

fn strings(items: &[&str]) -> GgufValue {
    GgufValue::Array(
        items
            .iter()
            .map(|s| GgufValue::String((*s).into()))
            .collect(),
    )
}

fn valid() -> BTreeMap<String, GgufValue> {
    let mut m = BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("gpt2".into()),
    );
    m.insert(
        "tokenizer.ggml.pre".into(),
        GgufValue::String("llama-bpe".into()),
    );
    m.insert("tokenizer.ggml.tokens".into(), strings(&["a", "b", "ab"]));
    m.insert("tokenizer.ggml.merges".into(), strings(&["a b"]));
    m
}

fn error_with(edit: impl FnOnce(&mut BTreeMap<String, GgufValue>)) -> lowbit_core::Error {
    let mut m = valid();
    edit(&mut m);
    match Tokenizer::from_metadata(&m) {
        Ok(_) => panic!("malformed metadata was accepted"),
        Err(e) => e,
    }
}

#[test]
fn valid_metadata_loads() {
    let t = Tokenizer::from_metadata(&valid()).expect("valid");
    assert_eq!(t.encode("ab", false).expect("encode"), [2]);
}

#[test]
fn missing_tokens() {
    let e = error_with(|m| {
        m.remove("tokenizer.ggml.tokens");
    });
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
    assert!(e.message.contains("tokenizer.ggml.tokens"), "{e}");
}

#[test]
fn empty_tokens() {
    let e = error_with(|m| {
        m.insert("tokenizer.ggml.tokens".into(), GgufValue::Array(vec![]));
    });
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
}

#[test]
fn merges_with_unknown_token() {
    let e = error_with(|m| {
        m.insert("tokenizer.ggml.merges".into(), strings(&["a b", "ab zz"]));
    });
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
    assert!(e.message.contains("merges[1]"), "{e}");
}

#[test]
fn merge_without_separator() {
    let e = error_with(|m| {
        m.insert("tokenizer.ggml.merges".into(), strings(&["ab"]));
    });
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
}

#[test]
fn missing_merges_for_bpe() {
    let e = error_with(|m| {
        m.remove("tokenizer.ggml.merges");
    });
    assert!(e.message.contains("merges"), "{e}");
}

#[test]
fn wrong_types() {
    let e = error_with(|m| {
        m.insert(
            "tokenizer.ggml.tokens".into(),
            GgufValue::String("a b".into()),
        );
    });
    assert!(e.message.contains("expected an array"), "{e}");
    let e = error_with(|m| {
        m.insert(
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::U64(3)]),
        );
    });
    assert!(e.message.contains("tokens[1]"), "{e}");
    let e = error_with(|m| {
        m.insert(
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(vec![GgufValue::F64(0.0)]),
        );
    });
    assert!(e.message.contains("1 entries for 3 tokens"), "{e}");
    let e = error_with(|m| {
        m.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::U64(1));
    });
    assert!(e.message.contains("expected a bool"), "{e}");
    let e = error_with(|m| {
        m.insert(
            "tokenizer.ggml.bos_token_id".into(),
            GgufValue::String("1".into()),
        );
    });
    assert!(e.message.contains("expected an integer"), "{e}");
    let e = error_with(|m| {
        m.insert("tokenizer.ggml.model".into(), GgufValue::U64(2));
    });
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
}

#[test]
fn unknown_model_is_unsupported() {
    let e = error_with(|m| {
        m.insert(
            "tokenizer.ggml.model".into(),
            GgufValue::String("t5".into()),
        );
    });
    assert_eq!(e.code, ErrorCode::UnsupportedModel);
}

#[test]
fn out_of_range_special_ids_are_ignored() {
    let mut m = valid();
    m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U64(99));
    let t = Tokenizer::from_metadata(&m).expect("loads, as llama.cpp does");
    assert_eq!(t.bos_id(), None);
    assert_eq!(t.token_bytes(1_000_000), Vec::<u8>::new());
}
