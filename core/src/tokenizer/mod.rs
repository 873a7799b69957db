//! Tokenizers (PLACEHOLDER: being written; API fixed).

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// A tokenizer built from GGUF metadata or a `tokenizer.json`.
pub struct Tokenizer {
    vocab: Vec<Vec<u8>>,
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(_g: &GgufFile) -> Result<Self> {
        Err(Error::unsupported("tokenizer not built yet"))
    }
    /// Encodes text; `add_special` adds BOS (and EOS) where the model's metadata says so.
    pub fn encode(&self, _text: &str, _add_special: bool) -> Result<Vec<u32>> {
        Err(Error::unsupported("tokenizer not built yet"))
    }
    /// The raw bytes of one token (for streaming decode that never splits UTF-8).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.vocab.get(id as usize).cloned().unwrap_or_default()
    }
    /// Decodes ids to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        None
    }
    /// Whether `id` ends generation (EOS, EOT, ...).
    pub fn is_end_of_generation(&self, _id: u32) -> bool {
        false
    }
    /// Whether the model wants BOS prepended (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        false
    }
    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
    /// Jinja chat template from the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        None
    }
}
