//! Tokenizers from a Hugging Face `tokenizer.json` (through the `tokenizers` crate), with the
//! BOS/EOS tokens and chat template of a `tokenizer_config.json` beside it.

use super::byte_level;
use super::spm::{parse_byte_token, SPACE};
use super::vocab::END_OF_GENERATION_TEXTS;
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::Path;

/// How token texts map back to bytes, from the `decoder` of `tokenizer.json`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PieceStyle {
    /// GPT-2 byte-level alphabet.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` a byte.
    Metaspace,
    /// Texts are the bytes.
    Plain,
}

/// A `tokenizer.json` tokenizer.
pub(crate) struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    style: PieceStyle,
    special: HashSet<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub end_of_generation: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl HfTokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` from the same folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let fail =
            |e: &dyn std::fmt::Display| Error::model_loading(format!("{}: {e}", path.display()));
        let json = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| fail(&e))?;
        // Padding and truncation in a tokenizer.json (sentence-transformers ship Fixed(128)
        // padding) would append pad ids or silently drop tokens; callers see every token and
        // the model's own length limits instead.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| fail(&e))?;
        let parsed: serde_json::Value = serde_json::from_str(&json).map_err(|e| fail(&e))?;
        let decoder = parsed
            .get("decoder")
            .map(|d| d.to_string())
            .unwrap_or_default();
        let style = if decoder.contains("\"ByteLevel\"") {
            PieceStyle::ByteLevel
        } else if decoder.contains("Metaspace") || decoder.contains("ByteFallback") {
            PieceStyle::Metaspace
        } else {
            PieceStyle::Plain
        };
        let special: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();

        let config: serde_json::Value = path
            .parent()
            .map(|dir| dir.join("tokenizer_config.json"))
            .filter(|p| p.exists())
            .map(|p| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| Error::model_loading(format!("{}: {e}", p.display())))?;
                serde_json::from_str(&text)
                    .map_err(|e| Error::model_loading(format!("{}: {e}", p.display())))
            })
            .transpose()?
            .unwrap_or(serde_json::Value::Null);
        // Token fields are either a string or `{"content": ...}`.
        let token_field = |name: &str| -> Option<u32> {
            let v = config.get(name)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let bos = token_field("bos_token");
        let eos = token_field("eos_token");
        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: use "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };
        let mut end_of_generation: Vec<u32> = eos.into_iter().collect();
        end_of_generation.extend(
            END_OF_GENERATION_TEXTS
                .iter()
                .filter_map(|t| inner.token_to_id(t)),
        );
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        let add_bos = match (bos, inner.encode("", true)) {
            (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
            _ => false,
        };
        Ok(HfTokenizer {
            inner,
            style,
            special,
            bos,
            eos,
            end_of_generation,
            add_bos,
            chat_template,
        })
    }

    /// The texts of the special tokens (which [`HfTokenizer::encode`] always matches).
    pub fn special_texts(&self) -> Vec<String> {
        self.special
            .iter()
            .filter_map(|&id| self.token_text(id))
            .collect()
    }

    /// Encodes text; added tokens are always matched, `add_special` runs the post-processor.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::invalid_config(format!("tokenizer.json encode failed: {e}")))
    }

    /// The bytes of one token; special tokens render as nothing.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if self.special.contains(&id) {
            return Vec::new();
        }
        let Some(text) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        match self.style {
            PieceStyle::ByteLevel => byte_level::decode(&text).unwrap_or_else(|| text.into_bytes()),
            PieceStyle::Metaspace => match parse_byte_token(&text) {
                Some(b) => vec![b],
                None => text.replace(SPACE, " ").into_bytes(),
            },
            PieceStyle::Plain => text.into_bytes(),
        }
    }

    /// Decodes with the tokenizer's own decoder, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_else(|_| {
            let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token text of an id.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Id of a token text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }
}
