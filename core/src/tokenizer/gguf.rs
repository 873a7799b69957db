//! Tokenizers stored in GGUF metadata (`tokenizer.ggml.*`): byte-level BPE (`gpt2`) and
//! SentencePiece (`llama`), with llama.cpp's special-token splitting, BOS/EOS and space-prefix
//! rules, so that ids equal llama.cpp's `llama_tokenize`.

use super::bpe::Bpe;
use super::byte_level;
use super::pretokenize::PreTokenizer;
use super::spm::{self, SPACE};
use super::vocab::{optional_str, string_array, Metadata, TokenKind, Vocab};
use crate::error::{Error, Result};
use std::ops::Range;

/// The algorithm half of a GGUF tokenizer.
enum Model {
    /// Byte-level BPE with its pre-tokenizer.
    Bpe { bpe: Box<Bpe>, pre: PreTokenizer },
    /// SentencePiece score-driven merges.
    Spm,
}

/// A piece of input text after special-token splitting.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A tokenizer read from GGUF metadata.
pub(crate) struct GgufTokenizer {
    pub vocab: Vocab,
    model: Model,
    pub chat_template: Option<String>,
}

impl GgufTokenizer {
    /// Reads and validates `tokenizer.ggml.*` metadata.
    pub fn from_metadata(m: &dyn Metadata) -> Result<Self> {
        let kind = optional_str(m, "tokenizer.ggml.model")?
            .ok_or_else(|| Error::model_loading("tokenizer.ggml.model: missing"))?;
        let model_and_vocab = match kind {
            "gpt2" => {
                let vocab = Vocab::from_metadata(m, false)?;
                let merges = string_array(m, "tokenizer.ggml.merges")?.ok_or_else(|| {
                    Error::model_loading("tokenizer.ggml.merges: missing (required by gpt2 BPE)")
                })?;
                let bpe = Box::new(Bpe::new(&vocab, &merges)?);
                let pre = PreTokenizer::for_pre(optional_str(m, "tokenizer.ggml.pre")?)?;
                (Model::Bpe { bpe, pre }, vocab)
            }
            "llama" => (Model::Spm, Vocab::from_metadata(m, true)?),
            other => {
                return Err(Error::unsupported(format!(
                    "tokenizer model {other:?} is not supported (gpt2 and llama are)"
                )))
            }
        };
        let (model, vocab) = model_and_vocab;
        let chat_template = optional_str(m, "tokenizer.chat_template")?.map(str::to_owned);
        Ok(GgufTokenizer {
            vocab,
            model,
            chat_template,
        })
    }

    /// Encodes text as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_parts(text, add_special, parse_special, &[])
    }

    /// As [`GgufTokenizer::encode`], but control-token texts inside the byte ranges `literal`
    /// stay plain text (a rendered chat prompt: the template's markers are tokens, the
    /// messages' contents are text).
    pub fn encode_parts(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        literal: &[Range<usize>],
    ) -> Result<Vec<u32>> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.extend(v.bos);
        }
        let fragments = self.split_special(text, parse_special, literal);
        match &self.model {
            Model::Bpe { bpe, pre } => {
                for f in fragments {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(t) => {
                            for word in pre.split(t)? {
                                bpe.encode_word(v, word, pre.ignore_merges, &mut out);
                            }
                        }
                    }
                }
            }
            Model::Spm => {
                // A space is prefixed to text at the start and after every special token.
                let mut prev_special = true;
                let mut escaped = String::new();
                for f in fragments {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(t) => {
                            escaped.clear();
                            if v.add_space_prefix && prev_special {
                                escaped.push_str(SPACE);
                            }
                            for (i, part) in t.split(' ').enumerate() {
                                if i > 0 {
                                    escaped.push_str(SPACE);
                                }
                                escaped.push_str(part);
                            }
                            spm::encode(v, &escaped, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && v.add_eos {
            out.extend(v.eos);
        }
        Ok(out)
    }

    /// Splits out special tokens, longest first, as llama.cpp's `tokenizer_st_partition`:
    /// without `parse_special` only user-defined tokens are matched, and control tokens never
    /// match where they overlap a range of `literal`.
    fn split_special<'a>(
        &self,
        text: &'a str,
        parse_special: bool,
        literal: &[Range<usize>],
    ) -> Vec<Fragment<'a>> {
        let mut fragments = Vec::new();
        if !text.is_empty() {
            fragments.push(Fragment::Text(text));
        }
        for &id in &self.vocab.specials {
            let kind = self.vocab.kind(id);
            if !parse_special && kind != TokenKind::UserDefined {
                continue;
            }
            let special = self.vocab.texts[id as usize].as_str();
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(special)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                let Fragment::Text(rest) = f else {
                    next.push(f);
                    continue;
                };
                // Fragments are slices of `text`: their offset places them against `literal`.
                let base = rest.as_ptr() as usize - text.as_ptr() as usize;
                let (mut start, mut from) = (0, 0);
                while let Some(i) = rest[from..].find(special) {
                    let pos = from + i;
                    let (a, b) = (base + pos, base + pos + special.len());
                    if kind != TokenKind::UserDefined
                        && literal.iter().any(|r| a < r.end && b > r.start)
                    {
                        from = pos + special.chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if pos > start {
                        next.push(Fragment::Text(&rest[start..pos]));
                    }
                    next.push(Fragment::Token(id));
                    start = pos + special.len();
                    from = start;
                }
                if start < rest.len() {
                    next.push(Fragment::Text(&rest[start..]));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The bytes one token stands for; control and unknown tokens render as nothing.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.vocab.texts.get(id as usize) else {
            return Vec::new();
        };
        match self.vocab.kind(id) {
            TokenKind::Control | TokenKind::Unknown => Vec::new(),
            TokenKind::UserDefined => text.as_bytes().to_vec(),
            TokenKind::Byte => spm::parse_byte_token(text)
                .map(|b| vec![b])
                .unwrap_or_default(),
            TokenKind::Normal | TokenKind::Unused => match self.model {
                Model::Bpe { .. } => {
                    byte_level::decode(text).unwrap_or_else(|| text.as_bytes().to_vec())
                }
                Model::Spm => text.replace(SPACE, " ").into_bytes(),
            },
        }
    }

    /// Decodes ids; with a space prefix (SentencePiece) the leading space of the first token
    /// is dropped, as llama.cpp's `detokenize` does.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut strip_space = self.vocab.add_space_prefix;
        for &id in ids {
            let piece = self.token_bytes(id);
            if piece.is_empty() {
                continue;
            }
            let piece = if strip_space && piece[0] == b' ' {
                &piece[1..]
            } else {
                &piece[..]
            };
            strip_space = false;
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
