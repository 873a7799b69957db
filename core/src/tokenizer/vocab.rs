//! The vocabulary half of a GGUF tokenizer: token texts, scores, types and special ids, read and
//! validated from `tokenizer.ggml.*` metadata the way llama.cpp's `llama_vocab::load` reads them.

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufValue};
use std::collections::{BTreeMap, HashMap};

/// Where tokenizer metadata comes from: a GGUF file, or a plain map in tests.
pub(crate) trait Metadata {
    /// The value stored under `key`.
    fn value(&self, key: &str) -> Option<&GgufValue>;
}

impl Metadata for GgufFile {
    fn value(&self, key: &str) -> Option<&GgufValue> {
        self.get(key)
    }
}

impl Metadata for BTreeMap<String, GgufValue> {
    fn value(&self, key: &str) -> Option<&GgufValue> {
        self.get(key)
    }
}

/// A token's role, from `tokenizer.ggml.token_type` (GGUF numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Ordinary text piece.
    Normal,
    /// The unknown token.
    Unknown,
    /// Control token (BOS, EOS, `<|im_start|>`): never produced from plain text.
    Control,
    /// Added token matched verbatim in text even without `parse_special`.
    UserDefined,
    /// Reserved, never produced.
    Unused,
    /// SentencePiece byte-fallback token `<0xXX>`.
    Byte,
}

impl TokenKind {
    fn from_gguf(v: i64) -> Self {
        match v {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            // 1 is normal; 0 (undefined) and unknown values behave as normal text in llama.cpp.
            _ => TokenKind::Normal,
        }
    }
}

/// Token texts that end a turn or a generation, forced to control tokens as llama.cpp does.
pub(crate) const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// Token texts, scores, kinds and special ids of one vocabulary.
pub(crate) struct Vocab {
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub kinds: Vec<TokenKind>,
    pub to_id: HashMap<String, u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// Ids that end generation (EOS, EOT, EOM and end-of-turn-looking control tokens).
    pub end_of_generation: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// Control, user-defined and unknown tokens, longest text first (special-token matching order).
    pub specials: Vec<u32>,
}

impl Vocab {
    /// Reads the vocabulary; `spm` selects SentencePiece defaults (BOS 1, EOS 2, UNK 0, add BOS,
    /// add space prefix).
    pub fn from_metadata(m: &dyn Metadata, spm: bool) -> Result<Self> {
        let texts = string_array(m, "tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::model_loading("tokenizer.ggml.tokens: missing"))?;
        if texts.is_empty() {
            return Err(Error::model_loading(
                "tokenizer.ggml.tokens: empty vocabulary",
            ));
        }
        if u32::try_from(texts.len()).is_err() {
            return Err(Error::model_loading(
                "tokenizer.ggml.tokens: too many tokens",
            ));
        }
        let n = texts.len();
        let texts: Vec<String> = texts
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.to_owned()
                }
            })
            .collect();

        let scores = match m.value("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(v) => {
                let items = array(v, "tokenizer.ggml.scores")?;
                check_len(items, n, "tokenizer.ggml.scores")?;
                items
                    .iter()
                    .take(n)
                    .enumerate()
                    .map(|(i, v)| match v {
                        GgufValue::F64(x) => Ok(*x as f32),
                        GgufValue::I64(x) => Ok(*x as f32),
                        GgufValue::U64(x) => Ok(*x as f32),
                        other => Err(type_error("tokenizer.ggml.scores", i, "a number", other)),
                    })
                    .collect::<Result<Vec<f32>>>()?
            }
        };
        let mut kinds = match m.value("tokenizer.ggml.token_type") {
            None => vec![TokenKind::Normal; n],
            Some(v) => {
                let items = array(v, "tokenizer.ggml.token_type")?;
                check_len(items, n, "tokenizer.ggml.token_type")?;
                items
                    .iter()
                    .take(n)
                    .enumerate()
                    .map(|(i, v)| match v {
                        GgufValue::I64(x) => Ok(TokenKind::from_gguf(*x)),
                        GgufValue::U64(x) => Ok(TokenKind::from_gguf(*x as i64)),
                        other => Err(type_error(
                            "tokenizer.ggml.token_type",
                            i,
                            "an integer",
                            other,
                        )),
                    })
                    .collect::<Result<Vec<TokenKind>>>()?
            }
        };

        let mut to_id = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            if to_id.insert(t.clone(), i as u32).is_some() {
                tracing::warn!(token = %t, id = i, "duplicate token text; the last id wins");
            }
        }

        let (mut bos, mut eos, mut unk) = if spm {
            (Some(1), Some(2), Some(0))
        } else {
            (None, None, None)
        };
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        bos = in_range(bos);
        eos = in_range(eos);
        unk = in_range(unk);
        let special_id = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
            match optional_u64(m, key)? {
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                Some(id) => {
                    tracing::warn!(key, id, vocab = n, "special token id out of range; ignored");
                    Ok(default)
                }
                None => Ok(default),
            }
        };
        bos = special_id("tokenizer.ggml.bos_token_id", bos)?;
        eos = special_id("tokenizer.ggml.eos_token_id", eos)?;
        unk = special_id("tokenizer.ggml.unknown_token_id", unk)?;
        let eot = special_id("tokenizer.ggml.eot_token_id", None)?;
        let eom = special_id("tokenizer.ggml.eom_token_id", None)?;

        let add_bos = optional_bool(m, "tokenizer.ggml.add_bos_token")?.unwrap_or(spm);
        let add_eos = optional_bool(m, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let add_space_prefix = optional_bool(m, "tokenizer.ggml.add_space_prefix")?.unwrap_or(spm);

        let mut end_of_generation: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
        for text in END_OF_GENERATION_TEXTS {
            if let Some(&id) = to_id.get(*text) {
                end_of_generation.push(id);
                kinds[id as usize] = TokenKind::Control;
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    kinds[i as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                )
            })
            .collect();
        // Stable sort: equal lengths keep id order, so matching is deterministic.
        specials.sort_by_key(|&i| std::cmp::Reverse(texts[i as usize].len()));

        Ok(Vocab {
            texts,
            scores,
            kinds,
            to_id,
            bos,
            eos,
            unk,
            end_of_generation,
            add_bos,
            add_eos,
            add_space_prefix,
            specials,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// The id of an exact token text.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.to_id.get(text).copied()
    }

    /// The texts of the tokens text only matches when special tokens are parsed (every
    /// special but the user-defined ones).
    pub fn control_texts(&self) -> Vec<String> {
        self.specials
            .iter()
            .filter(|&&id| self.kind(id) != TokenKind::UserDefined)
            .map(|&id| self.texts[id as usize].clone())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The kind of a token (Normal for out-of-range ids).
    pub fn kind(&self, id: u32) -> TokenKind {
        self.kinds
            .get(id as usize)
            .copied()
            .unwrap_or(TokenKind::Normal)
    }
}

/// A required-type array value.
fn array<'a>(v: &'a GgufValue, key: &str) -> Result<&'a [GgufValue]> {
    match v {
        GgufValue::Array(items) => Ok(items),
        other => Err(Error::model_loading(format!(
            "{key}: expected an array, found {}",
            type_name(other)
        ))),
    }
}

fn check_len(items: &[GgufValue], n: usize, key: &str) -> Result<()> {
    if items.len() < n {
        return Err(Error::model_loading(format!(
            "{key}: {} entries for {n} tokens",
            items.len()
        )));
    }
    Ok(())
}

/// An optional array of strings; `Ok(None)` when the key is absent.
pub(crate) fn string_array<'a>(m: &'a dyn Metadata, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = m.value(key) else {
        return Ok(None);
    };
    array(v, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            GgufValue::String(s) => Ok(s.as_str()),
            other => Err(type_error(key, i, "a string", other)),
        })
        .collect::<Result<Vec<&str>>>()
        .map(Some)
}

/// An optional string value.
pub(crate) fn optional_str<'a>(m: &'a dyn Metadata, key: &str) -> Result<Option<&'a str>> {
    match m.value(key) {
        None => Ok(None),
        Some(GgufValue::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::model_loading(format!(
            "{key}: expected a string, found {}",
            type_name(other)
        ))),
    }
}

fn optional_u64(m: &dyn Metadata, key: &str) -> Result<Option<u64>> {
    match m.value(key) {
        None => Ok(None),
        Some(GgufValue::U64(v)) => Ok(Some(*v)),
        Some(GgufValue::I64(v)) if *v >= 0 => Ok(Some(*v as u64)),
        // llama.cpp stores "no token" as -1 in a few converters.
        Some(GgufValue::I64(_)) => Ok(None),
        Some(other) => Err(Error::model_loading(format!(
            "{key}: expected an integer, found {}",
            type_name(other)
        ))),
    }
}

fn optional_bool(m: &dyn Metadata, key: &str) -> Result<Option<bool>> {
    match m.value(key) {
        None => Ok(None),
        Some(GgufValue::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::model_loading(format!(
            "{key}: expected a bool, found {}",
            type_name(other)
        ))),
    }
}

fn type_error(key: &str, index: usize, expected: &str, found: &GgufValue) -> Error {
    Error::model_loading(format!(
        "{key}[{index}]: expected {expected}, found {}",
        type_name(found)
    ))
}

// The catch-all arm keeps this compiling if the GGUF reader grows value types.
#[allow(unreachable_patterns)]
fn type_name(v: &GgufValue) -> &'static str {
    match v {
        GgufValue::U64(_) => "an unsigned integer",
        GgufValue::I64(_) => "a signed integer",
        GgufValue::F64(_) => "a float",
        GgufValue::Bool(_) => "a bool",
        GgufValue::String(_) => "a string",
        GgufValue::Array(_) => "an array",
        _ => "another type",
    }
}
