//! The tokenizer of a real model, SmolLM2-135M-Instruct (byte-level BPE, `smollm` pre-tokenizer):
//! ids checked against llama.cpp's `llama-tokenize` (build of the llama-cpp-python 0.3.36
//! sources), chat-template rendering, round trips, and encoding speed.

use lowbit_core::formats::gguf::GgufFile;
use lowbit_core::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::time::Instant;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn smollm() -> Tokenizer {
    let g = GgufFile::open(&models().join("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("open gguf");
    Tokenizer::from_gguf(&g).expect("tokenizer")
}

/// `llama-tokenize -m SmolLM2-135M-Instruct.Q4_1.gguf -p TEXT --ids` (add_special and
/// parse_special on, as the tool's defaults; this model adds no BOS).
#[test]
fn ids_match_llama_cpp() {
    let t = smollm();
    let cases: &[(&str, &[u32])] = &[
        (
            "Hello world! The year 2024 was great.",
            &[19556, 905, 17, 378, 713, 216, 34, 32, 34, 36, 436, 1109, 30],
        ),
        (
            "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n",
            &[
                1, 4093, 198, 1780, 314, 216, 33, 34, 27, 39, 47, 2, 198, 1, 520, 9531, 198,
            ],
        ),
        (
            "Ünïcödé — 日本語のテキスト 🦀🚀 naïve café",
            &[
                142, 246, 94, 25972, 83, 7466, 84, 2756, 1841, 17097, 241, 115, 40993, 179, 120,
                248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 15107, 116, 218, 10813,
                244, 218, 15486, 46494, 37366,
            ],
        ),
        (
            "  leading spaces and\ttabs\n\nnewlines   ",
            &[
                216, 2899, 5600, 284, 197, 100, 7366, 198, 198, 2241, 5110, 333,
            ],
        ),
        (
            "It's 3.14159 - don't you've",
            &[
                1589, 506, 216, 35, 30, 33, 36, 33, 37, 41, 731, 1326, 982, 346, 3543,
            ],
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(&t.encode(text, true).expect("encode"), expected, "{text:?}");
    }
    // `--no-parse-special`: the control token is spelled out as text.
    assert_eq!(
        t.encode_with("<|im_start|>user\n", true, false)
            .expect("encode"),
        [44, 108, 306, 79, 3738, 108, 46, 4093, 198]
    );
}

#[test]
fn special_ids_and_chat_template() {
    let t = smollm();
    assert_eq!(t.bos_id(), Some(1));
    assert!(!t.add_bos());
    assert!(t.is_end_of_generation(2), "<|im_end|> ends generation");
    assert!(!t.is_end_of_generation(1));
    let prompt = t
        .apply_chat_template(&[("user", "Hi")], true)
        .expect("render");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn decode_inverts_encode_on_multilingual_text() {
    let t = smollm();
    let texts = [
        "Grüße aus Köln, naïve façade, ﬁne",
        "Привет, мир! Καλημέρα κόσμε",
        "日本語のテキストと中文文本，한국어 텍스트",
        "emoji 🦀🚀👩‍👩‍👧 and flags 🇫🇷 and ZWJ",
        "العربية والعبرית עברית हिन्दी ไทย",
        "\tcode:\n    fn main() { println!(\"{}\", 1 << 3); }\r\n",
    ];
    for text in texts {
        let ids = t.encode_with(text, false, false).expect("encode");
        assert_eq!(t.decode(&ids), text);
        // Streaming form: concatenated token bytes are the text's bytes.
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| t.token_bytes(i)).collect();
        assert_eq!(bytes, text.as_bytes());
    }
}

/// The 6 MB Brown corpus must encode in seconds: per-word BPE results are cached. The bound is
/// loose (2-core CI machine, debug or release) but catches an uncached or quadratic encoder.
#[test]
fn encodes_brown_corpus_quickly() {
    let path = models().join("brown.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!("{} missing", path.display());
    };
    let t = smollm();
    let start = Instant::now();
    let ids = t.encode_with(&text, false, false).expect("encode");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        ids.len() > text.len() / 8,
        "{} tokens for {} bytes",
        ids.len(),
        text.len()
    );
    assert!(secs < 30.0, "encoding took {secs:.1}s");
    assert_eq!(t.decode(&ids), text);
}
