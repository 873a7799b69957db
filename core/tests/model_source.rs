//! `ModelSource::open`: each format recognised from content, whether given the folder or the
//! model file; the real MiniLM (Hugging Face safetensors), Whisper tiny.en (CTranslate2) and
//! SmolLM2 (GGUF); sharded checkpoints; unknown and malformed input giving stable codes.

#[path = "support/model_writers.rs"]
mod model_writers;

use lowbit_core::adapter::ModelSource;
use lowbit_core::formats::SafeDtype;
use lowbit_core::{Error, ErrorCode};
use model_writers::{ct2, safetensors, Var};
use std::path::{Path, PathBuf};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("lowbit-model-source-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open_err(path: &Path) -> Error {
    match ModelSource::open(path) {
        Ok(s) => panic!("{} opened as {}", path.display(), s.format_name()),
        Err(e) => e,
    }
}

#[test]
fn minilm_folder_and_file() {
    let dir = models().join("all-MiniLM-L6-v2");
    for path in [
        dir.clone(),
        dir.join("model.safetensors"),
        dir.join("config.json"),
    ] {
        let src = ModelSource::open(&path).unwrap();
        assert_eq!(
            src.architecture().as_deref(),
            Some("bert"),
            "{}",
            path.display()
        );
        let ModelSource::HuggingFace(hf) = src else {
            panic!("{} is not read as Hugging Face", path.display());
        };
        assert!(hf.files().tokenizer_json.is_some());
        assert_eq!(hf.files().config_u64("hidden_size"), Some(384));
    }
    let ModelSource::HuggingFace(hf) = ModelSource::open(&dir).unwrap() else {
        unreachable!()
    };
    // The published shapes of all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, FFN 1536).
    let shape = |n: &str| {
        hf.tensor(n)
            .unwrap_or_else(|| panic!("{n} missing"))
            .shape
            .clone()
    };
    assert_eq!(shape("embeddings.word_embeddings.weight"), [30522, 384]);
    assert_eq!(shape("embeddings.position_embeddings.weight"), [512, 384]);
    assert_eq!(shape("embeddings.token_type_embeddings.weight"), [2, 384]);
    assert_eq!(shape("pooler.dense.weight"), [384, 384]);
    for l in 0..6 {
        let p = format!("encoder.layer.{l}");
        for m in ["query", "key", "value"] {
            assert_eq!(shape(&format!("{p}.attention.self.{m}.weight")), [384, 384]);
            assert_eq!(shape(&format!("{p}.attention.self.{m}.bias")), [384]);
        }
        assert_eq!(
            shape(&format!("{p}.attention.output.dense.weight")),
            [384, 384]
        );
        assert_eq!(
            shape(&format!("{p}.intermediate.dense.weight")),
            [1536, 384]
        );
        assert_eq!(shape(&format!("{p}.output.dense.weight")), [384, 1536]);
        assert_eq!(shape(&format!("{p}.output.LayerNorm.weight")), [384]);
    }
    assert!(hf.tensor("encoder.layer.6.output.dense.weight").is_none());
    assert_eq!(hf.tensors().count(), 104);
    assert!(hf
        .tensors()
        .all(|t| t.dtype == SafeDtype::F32 || t.name == "embeddings.position_ids"));
    // Values as numpy reads the same bytes.
    let emb = hf.tensor_f32("embeddings.word_embeddings.weight").unwrap();
    assert_eq!(emb.len(), 30522 * 384);
    assert_eq!(
        emb[..4].iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        [
            -0.019989013671875,
            -0.0034027099609375,
            -0.014678955078125,
            0.0117034912109375
        ]
    );
    let q = hf
        .tensor_f32("encoder.layer.5.attention.self.query.weight")
        .unwrap();
    // Shortest decimal forms of the f32 values: exact as f32 literals.
    assert_eq!(
        &q[383 * 384..383 * 384 + 3],
        &[0.05696888, -0.040231116, -0.10425384]
    );
    // position_ids are I64: a clear refusal, not garbage floats.
    let e = hf.tensor_f32("embeddings.position_ids").unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedModel, "{e}");
}

#[test]
fn whisper_folder_and_file() {
    let dir = models().join("whisper-tiny.en");
    for path in [dir.clone(), dir.join("model.bin")] {
        let src = ModelSource::open(&path).unwrap();
        assert_eq!(src.architecture().as_deref(), Some("whisper"));
        let ModelSource::Ct2(c) = src else {
            panic!("{} is not read as CTranslate2", path.display());
        };
        assert_eq!(c.model().spec(), "WhisperSpec");
        let files = c.files();
        assert!(files.tokenizer_json.is_some());
        assert!(files
            .vocabulary
            .as_ref()
            .is_some_and(|v| v.ends_with("vocabulary.txt")));
        // The converter's config.json (suppressed tokens for decoding).
        assert!(files
            .config
            .get("suppress_ids")
            .is_some_and(|v| v.is_array()));
    }
}

#[test]
fn gguf_still_opens() {
    let src = ModelSource::open(&models().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert!(matches!(src, ModelSource::Gguf(_)));
    assert_eq!(src.architecture().as_deref(), Some("llama"));
}

#[test]
fn sharded_checkpoint() {
    let dir = scratch("sharded");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let s1 = safetensors(&[("a.weight", &[2, 2], &[1.0, 2.0, 3.0, 4.0])]);
    let s2 = safetensors(&[("b.weight", &[3], &[5.0, 6.0, 7.0])]);
    std::fs::write(dir.join("model-00001-of-00002.safetensors"), &s1).unwrap();
    std::fs::write(dir.join("model-00002-of-00002.safetensors"), &s2).unwrap();
    // Without an index: the shards by name.
    for path in [dir.clone(), dir.join("model-00002-of-00002.safetensors")] {
        let ModelSource::HuggingFace(hf) = ModelSource::open(&path).unwrap() else {
            panic!("not Hugging Face");
        };
        assert_eq!(hf.architecture(), Some("llama"));
        assert_eq!(hf.tensor_f32("a.weight").unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(hf.tensor_f32("b.weight").unwrap(), [5.0, 6.0, 7.0]);
        assert!(hf.files().tokenizer_json.is_none());
    }
    // With an index that agrees.
    let index = dir.join("model.safetensors.index.json");
    let write_index = |map: &str| {
        std::fs::write(
            &index,
            format!(r#"{{"metadata": {{}}, "weight_map": {map}}}"#),
        )
        .unwrap()
    };
    write_index(
        r#"{"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}"#,
    );
    for path in [dir.clone(), index.clone()] {
        let src = ModelSource::open(&path).unwrap();
        let ModelSource::HuggingFace(hf) = src else {
            panic!("not Hugging Face");
        };
        assert_eq!(hf.tensors().count(), 2);
        assert_eq!(hf.tensor("b.weight").unwrap().shape, [3]);
    }
    // Indexes that disagree with the shards, or point outside the folder.
    for (map, needle) in [
        (
            r#"{"a.weight": "model-00002-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}"#,
            "does not hold it",
        ),
        (
            r#"{"a.weight": "model-00001-of-00002.safetensors", "c.weight": "model-00002-of-00002.safetensors"}"#,
            "does not hold it",
        ),
        (
            r#"{"a.weight": "../model-00001-of-00002.safetensors"}"#,
            "not a file in the folder",
        ),
        (r#"{"a.weight": "/etc/passwd"}"#, "not a file in the folder"),
        (r#"{"a.weight": 3}"#, "not a file name"),
        (r#"{}"#, "weight_map is empty"),
        (
            r#"{"a.weight": "model-00009-of-00009.safetensors"}"#,
            "No such file",
        ),
    ] {
        write_index(map);
        let e = open_err(&dir);
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{map}: {e}");
        assert!(e.message.contains(needle), "{map}: {e}");
    }
    std::fs::write(&index, "[1, 2]").unwrap();
    assert!(open_err(&dir).message.contains("not a JSON object"));
    // The same tensor in two shards.
    std::fs::remove_file(&index).unwrap();
    std::fs::write(dir.join("model-00002-of-00002.safetensors"), &s1).unwrap();
    assert!(open_err(&dir).message.contains("in two shards"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_input_is_unsupported() {
    let dir = scratch("unknown");
    // An empty folder, a folder of other files, a text file, a tiny file.
    assert_eq!(open_err(&dir).code, ErrorCode::UnsupportedModel);
    std::fs::write(dir.join("notes.txt"), "hello, this is not a model").unwrap();
    assert_eq!(open_err(&dir).code, ErrorCode::UnsupportedModel);
    assert_eq!(
        open_err(&dir.join("notes.txt")).code,
        ErrorCode::UnsupportedModel
    );
    std::fs::write(dir.join("empty.bin"), b"").unwrap();
    assert_eq!(
        open_err(&dir.join("empty.bin")).code,
        ErrorCode::UnsupportedModel
    );
    // safetensors weights with no config.json beside them.
    let st = safetensors(&[("w", &[1], &[1.0])]);
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    let e = open_err(&dir.join("model.safetensors"));
    assert_eq!(e.code, ErrorCode::UnsupportedModel, "{e}");
    assert!(e.message.contains("config.json"), "{e}");
    assert_eq!(open_err(&dir).code, ErrorCode::UnsupportedModel);
    // A CTranslate2 model.bin under another name.
    std::fs::write(dir.join("weights.dat"), ct2("WhisperSpec", 1, &[], &[])).unwrap();
    let e = open_err(&dir.join("weights.dat"));
    assert_eq!(e.code, ErrorCode::UnsupportedModel, "{e}");
    // A damaged GGUF file (by its name) is a loading failure of the GGUF reader.
    for (name, bytes) in [("bad.gguf", &b"GGUX0000"[..]), ("short.GGUF", &b"GG"[..])] {
        std::fs::write(dir.join(name), bytes).unwrap();
        let e = open_err(&dir.join(name));
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{name}: {e}");
    }
    // A missing path.
    let e = open_err(&dir.join("absent.gguf"));
    assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_folders_fail_to_load() {
    let dir = scratch("malformed");
    let st = safetensors(&[("w", &[2], &[1.0, 2.0])]);
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    // A config.json that is not JSON, or not an object.
    for bad in ["{not json", "[1, 2]", ""] {
        std::fs::write(dir.join("config.json"), bad).unwrap();
        let e = open_err(&dir);
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{bad:?}: {e}");
        assert!(e.message.contains("config.json"), "{e}");
    }
    // Truncated weights: every prefix that still has a JSON brace fails to load.
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    assert!(ModelSource::open(&dir).is_ok());
    for len in [9, 20, st.len() - 4, st.len() - 1] {
        std::fs::write(dir.join("model.safetensors"), &st[..len]).unwrap();
        let e = open_err(&dir);
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
    }
    // A truncated or corrupted model.bin in a CTranslate2 folder.
    let bin = ct2(
        "WhisperSpec",
        1,
        &[Var::f16("w/weight", &[2, 2], &[1.0, 2.0, 3.0, 4.0])],
        &[],
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.bin"), &bin).unwrap();
    let src = ModelSource::open(&dir).unwrap();
    assert_eq!(src.architecture().as_deref(), Some("whisper"));
    for len in [16, 30, bin.len() - 1] {
        std::fs::write(dir.join("model.bin"), &bin[..len]).unwrap();
        for path in [dir.clone(), dir.join("model.bin")] {
            let e = open_err(&path);
            assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
            assert!(e.message.contains("truncated"), "prefix {len}: {e}");
        }
    }
    let mut future = bin.clone();
    future[0] = 7;
    std::fs::write(dir.join("model.bin"), &future).unwrap();
    // A version this reader does not know is not taken for a CTranslate2 model at all.
    assert_eq!(open_err(&dir).code, ErrorCode::UnsupportedModel);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn real_files_truncated() {
    let dir = scratch("real-truncated");
    let full = std::fs::read(models().join("all-MiniLM-L6-v2/model.safetensors")).unwrap();
    std::fs::copy(
        models().join("all-MiniLM-L6-v2/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    for len in [8, 100, full.len() / 2, full.len() - 1] {
        std::fs::write(dir.join("model.safetensors"), &full[..len]).unwrap();
        let e = open_err(&dir);
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "prefix {len}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_tokenizers_load() {
    use lowbit_core::tokenizer::Tokenizer;
    let ModelSource::HuggingFace(hf) =
        ModelSource::open(&models().join("all-MiniLM-L6-v2")).unwrap()
    else {
        panic!("not Hugging Face")
    };
    let bert = Tokenizer::from_file(hf.files().tokenizer_json.as_ref().unwrap()).unwrap();
    // bert-base-uncased WordPiece: [CLS] hello world [SEP], lower-cased.
    assert_eq!(
        bert.encode("Hello World", true).unwrap(),
        [101, 7592, 2088, 102]
    );
    let ModelSource::Ct2(c) = ModelSource::open(&models().join("whisper-tiny.en")).unwrap() else {
        panic!("not CTranslate2")
    };
    let whisper = Tokenizer::from_file(c.files().tokenizer_json.as_ref().unwrap()).unwrap();
    let text = " The quick brown fox.";
    let ids = whisper.encode(text, false).unwrap();
    assert!(!ids.is_empty() && ids.iter().all(|&i| i < 51864), "{ids:?}");
    assert_eq!(whisper.decode(&ids), text);
}
