//! Tokenizers: byte-level BPE and SentencePiece read from GGUF metadata (matching llama.cpp's
//! `llama_tokenize` id for id), Hugging Face `tokenizer.json` files (native builds), and chat
//! templates rendered with minijinja.
//!
//! Layout: [`vocab`] reads token tables, [`pretokenize`] holds the per-model split regexes,
//! [`bpe`] and [`spm`] the two merge algorithms, `gguf` ties them to llama.cpp's special-token
//! rules, `hf` wraps `tokenizer.json`, [`chat`] renders templates.

mod bpe;
mod byte_level;
mod chat;
mod gguf;
#[cfg(feature = "native")]
mod hf;
mod pretokenize;
mod spm;
mod vocab;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufValue};
use std::collections::BTreeMap;

/// The implementations behind [`Tokenizer`].
enum Inner {
    Gguf(Box<gguf::GgufTokenizer>),
    #[cfg(feature = "native")]
    Hf(Box<hf::HfTokenizer>),
}

/// A tokenizer built from GGUF metadata or a `tokenizer.json`.
pub struct Tokenizer {
    inner: Inner,
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Errors: `MODEL_LOADING_FAILED` when the metadata is missing, mistyped or inconsistent
    /// (e.g. merges naming unknown tokens); `UNSUPPORTED_MODEL` for tokenizer models other than
    /// `gpt2` (byte-level BPE) and `llama` (SentencePiece).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        Ok(Tokenizer {
            inner: Inner::Gguf(Box::new(gguf::GgufTokenizer::from_metadata(g)?)),
        })
    }

    /// Builds a tokenizer from GGUF-style metadata held in a map (`tokenizer.ggml.*` keys), for
    /// tools and tests that have no GGUF file.
    pub fn from_metadata(metadata: &BTreeMap<String, GgufValue>) -> Result<Self> {
        Ok(Tokenizer {
            inner: Inner::Gguf(Box::new(gguf::GgufTokenizer::from_metadata(metadata)?)),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; BOS/EOS and the chat template come from a
    /// `tokenizer_config.json` in the same folder when there is one.
    #[cfg(feature = "native")]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(hf::HfTokenizer::from_file(path)?)),
        })
    }

    /// Encodes text; `add_special` adds BOS (and EOS) where the model's metadata says so.
    /// Special-token texts in `text` (e.g. `<|im_start|>`) become their tokens, so rendered chat
    /// prompts encode right; use [`Tokenizer::encode_with`] to treat them as plain text.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, true)
    }

    /// Encodes text as llama.cpp's `llama_tokenize(text, add_special, parse_special)`: without
    /// `parse_special`, control tokens in the text are tokenized as plain text (user-defined
    /// tokens still match). `tokenizer.json` tokenizers always match their added tokens.
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Gguf(t) => t.encode(text, add_special, parse_special),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.encode(text, add_special),
        }
    }

    /// The raw bytes of one token (for streaming decode that never splits UTF-8): byte-level
    /// pieces mapped back through the GPT-2 byte table, SentencePiece `▁` as a space and
    /// `<0xXX>` as its byte. Control tokens give no bytes; unknown ids give none.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.inner {
            Inner::Gguf(t) => t.token_bytes(id),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.token_bytes(id),
        }
    }

    /// Decodes ids to text (invalid UTF-8 replaced, control tokens skipped). SentencePiece
    /// models drop the space their encoder prefixed, so `decode(encode(x)) == x`.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.inner {
            Inner::Gguf(t) => t.decode(ids),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.decode(ids),
        }
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(t) => t.vocab.bos,
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.bos,
        }
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(t) => t.vocab.eos,
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.eos,
        }
    }

    /// Whether `id` ends generation (EOS, EOT, EOM, and end-of-turn tokens such as
    /// `<|im_end|>` or `<|eot_id|>`, as llama.cpp's EOG set).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        let eog = match &self.inner {
            Inner::Gguf(t) => &t.vocab.end_of_generation,
            #[cfg(feature = "native")]
            Inner::Hf(t) => &t.end_of_generation,
        };
        eog.binary_search(&id).is_ok()
    }

    /// Whether the model wants BOS prepended (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(t) => t.vocab.add_bos && t.vocab.bos.is_some(),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.add_bos,
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Gguf(t) => t.vocab.len(),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.vocab_size(),
        }
    }

    /// The stored text of a token (byte-level or `▁` form, as in the vocabulary).
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Gguf(t) => t.vocab.texts.get(id as usize).cloned(),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.token_text(id),
        }
    }

    /// The id of an exact token text (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(t) => t.vocab.id(text),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.token_id(text),
        }
    }

    /// Jinja chat template from the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        match &self.inner {
            Inner::Gguf(t) => t.chat_template.as_deref(),
            #[cfg(feature = "native")]
            Inner::Hf(t) => t.chat_template.as_deref(),
        }
    }

    /// Renders the model's chat template for `messages` (`(role, content)` pairs), with
    /// `bos_token`/`eos_token` set and `raise_exception` defined; `add_generation_prompt` opens
    /// the assistant's turn. The result still needs [`Tokenizer::encode`] (which parses the
    /// special tokens in it); templates usually write BOS themselves, so encode it with
    /// `add_special = false` when the text starts with it.
    ///
    /// Errors: `UNSUPPORTED_MODEL` when the model has no template or it does not parse;
    /// `INVALID_CONFIG` when rendering fails (e.g. the template rejects the message order).
    pub fn apply_chat_template(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template()
            .ok_or_else(|| Error::unsupported("the model has no chat template"))?;
        let text_of = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or_default();
        let bos = text_of(self.bos_id());
        let eos = text_of(self.eos_id());
        chat::render(
            template,
            messages,
            add_generation_prompt,
            &chat::TemplateTokens {
                bos: &bos,
                eos: &eos,
            },
        )
    }
}

impl Tokenizer {
    /// Renders `messages` with the model's chat template and encodes the result so that only
    /// the template's own markers become control tokens: control-token texts a message's
    /// content contains (`<|im_start|>system` in a user message) are tokenized as plain text,
    /// so no user can write another role's turn. Where the contents cannot be located in the
    /// rendering (a template that rewrites them) or the tokenizer always matches its special
    /// tokens (`tokenizer.json`), a content holding a control-token text is refused instead.
    /// Templates write BOS themselves, so none is added.
    ///
    /// Errors: those of [`Tokenizer::apply_chat_template`]; `INVALID_CONFIG` for a refused
    /// content.
    pub fn encode_chat(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let template = self
            .chat_template()
            .ok_or_else(|| Error::unsupported("the model has no chat template"))?;
        let text_of = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or_default();
        let (bos, eos) = (text_of(self.bos_id()), text_of(self.eos_id()));
        let tokens = chat::TemplateTokens {
            bos: &bos,
            eos: &eos,
        };
        let (rendered, located) =
            chat::render_with_contents(template, messages, add_generation_prompt, &tokens)?;
        let refuse_control_text = |controls: &[String]| -> Result<()> {
            for (_, content) in messages {
                if let Some(c) = controls.iter().find(|c| content.contains(c.as_str())) {
                    return Err(Error::invalid_config(format!(
                        "a message contains the control token text {c:?}; this model's chat \
                         template cannot keep it as plain text"
                    )));
                }
            }
            Ok(())
        };
        match &self.inner {
            Inner::Gguf(t) => {
                if !located {
                    refuse_control_text(&t.vocab.control_texts())?;
                }
                t.encode_parts(&rendered.text, false, true, &rendered.contents)
            }
            #[cfg(feature = "native")]
            Inner::Hf(t) => {
                refuse_control_text(&t.special_texts())?;
                t.encode(&rendered.text, false)
            }
        }
    }
}

#[cfg(test)]
mod tests;
