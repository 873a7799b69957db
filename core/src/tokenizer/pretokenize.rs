//! Pre-tokenizers of byte-level BPE models: the regex lists llama.cpp's `llm_tokenizer_bpe`
//! picks per `tokenizer.ggml.pre`, applied one after another so that each regex splits the pieces
//! the previous one left (matches and the text between them both become pieces).

use crate::error::{Error, Result};
use fancy_regex::{Regex, RegexBuilder};

/// Backtracking steps one regex match may take (fancy-regex's default is one million); the
/// patterns here backtrack at most a few times per character of a piece of at most
/// [`MAX_PIECE_BYTES`], so this only stops a pathological input.
const BACKTRACK_LIMIT: usize = 1 << 27;

/// Longest text one regex runs over. fancy-regex's backtracking stack (fixed at one million
/// entries, about one per character of a repeat) overflows on a word of a million letters, so
/// longer text is cut first, before a whitespace character where there is one near the cut.
/// Tokens then differ from llama.cpp's only at such cuts, inside a word of over 32 KiB.
const MAX_PIECE_BYTES: usize = 32 * 1024;

/// `text` in pieces of at most [`MAX_PIECE_BYTES`] (plus one character).
fn bounded_pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / MAX_PIECE_BYTES + 1);
    let mut rest = text;
    while rest.len() > MAX_PIECE_BYTES {
        let mut cut = MAX_PIECE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        // Prefer a cut before whitespace in the last quarter (pre-tokens start there anyway).
        if let Some(ws) = rest[MAX_PIECE_BYTES * 3 / 4..cut].rfind(char::is_whitespace) {
            let at = MAX_PIECE_BYTES * 3 / 4 + ws;
            if at > 0 {
                cut = at;
            }
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// `'s|'t|...` contractions, case-insensitive, then letters, 1-3 digits, punctuation runs, newlines.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// As [`LLAMA3`] but single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// As [`QWEN2`] with combining marks kept inside words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The original GPT-2 pattern.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// GPT-4o / Llama 4: case-aware words with contractions.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Tekken (Mistral Nemo).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A pre-tokenizer: the regex list, and whether whole words found in the vocabulary skip BPE.
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
    /// llama.cpp's `ignore_merges`: a pre-token that is itself a token is emitted as is.
    pub ignore_merges: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None` when the key is absent).
    /// Unknown values fall back to the Llama 3 pattern, the most common one among recent models.
    pub fn for_pre(pre: Option<&str>) -> Result<Self> {
        let (patterns, ignore_merges): (&[&str], bool) = match pre.unwrap_or("default") {
            "default" => (
                &[
                    r"[\p{P}\$\+<=>\^~\|]+",
                    GPT2,
                    r"\p{N}+",
                    "[0-9][0-9][0-9]",
                ],
                false,
            ),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
            | "lfm2" | "jina-v5-nano" => (&[LLAMA3], true),
            "dbrx" | "smaug-bpe" => (&[LLAMA3], false),
            "chatglm-bpe" => (&[LLAMA3], false),
            "glm4" | "glm5" => (&[LLAMA3], true),
            "deepseek-llm" => (
                &[
                    "[\r\n]",
                    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
                    "\\s+$",
                    "[一-龥ࠀ-一가-퟿]+",
                    "\\p{N}+",
                ],
                false,
            ),
            "deepseek-coder" => (
                &[
                    "[\r\n]",
                    "\\s?\\p{L}+",
                    "\\s?\\p{P}+",
                    "[一-龥ࠀ-一가-퟿]+",
                    "\\p{N}",
                ],
                false,
            ),
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => (
                &[
                    r"\p{N}{1,3}",
                    "[一-龥぀-ゟ゠-ヿ]+",
                    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
                ],
                false,
            ),
            "falcon" => (
                &[
                    r"[\p{P}\$\+<=>\^~\|`]+",
                    GPT2,
                    "[0-9][0-9][0-9]",
                ],
                false,
            ),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => (&[r"\p{N}", GPT2], false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
            | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code"
            | "roberta-bpe" | "exaone4" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => (&[GPT2], false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan"
            | "solar-open" | "megrez" | "grok-2" => (&[QWEN2], false),
            "qwen35" => (&[QWEN35], false),
            "poro-chat" | "bloom" | "gpt3-finnish" => (&[r" ?[^(\s|.,!?…。，、।۔،)]+"], false),
            "viking" => (&[r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"], false),
            "tekken" => (&[TEKKEN], true),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => (&[GPT4O], false),
            "seed-coder" => (
                &[r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"],
                false,
            ),
            other => {
                tracing::warn!(pre = other, "unknown pre-tokenizer; using the Llama 3 pattern");
                (&[LLAMA3], false)
            }
        };
        let regexes = patterns
            .iter()
            .map(|p| {
                RegexBuilder::new(p)
                    .backtrack_limit(BACKTRACK_LIMIT)
                    .build()
                    .map_err(|e| {
                        Error::unsupported(format!(
                            "pre-tokenizer regex {p:?} does not compile: {e}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreTokenizer {
            regexes,
            ignore_merges,
        })
    }

    /// Splits `text` into pre-tokens (never empty, concatenating back to `text`).
    pub fn split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let mut pieces = bounded_pieces(text);
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                // Each piece is matched on its own: lookaheads see the piece's end as the text's
                // end, as in llama.cpp.
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m = m.map_err(|e| {
                        Error::invalid_config(format!(
                            "the text cannot be split into words (pre-tokenizer: {e})"
                        ))
                    })?;
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::for_pre(Some(pre)).expect("pre-tokenizer");
        p.split(text)
            .expect("split")
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn gpt2_keeps_one_space_before_words() {
        assert_eq!(
            split("gpt-2", "Hello  world's 123!!"),
            ["Hello", " ", " world", "'s", " 123", "!!"]
        );
    }

    #[test]
    fn llama3_groups_three_digits_and_newlines() {
        assert_eq!(
            split("llama-bpe", "x 12345\n\n  y"),
            ["x", " ", "123", "45", "\n\n", " ", " y"]
        );
    }

    #[test]
    fn a_word_of_a_million_letters_splits_without_error() {
        // fancy-regex's default backtracking limit failed on this ("pre-tokenizer regex failed").
        for pre in ["smollm", "llama-bpe", "gpt-4o", "qwen2"] {
            let p = PreTokenizer::for_pre(Some(pre)).expect("pre-tokenizer");
            for text in [
                "a".repeat(1 << 20),
                "é".repeat(1 << 19),
                "x ".repeat(1 << 19),
            ] {
                let pieces = p.split(&text).expect("split");
                assert_eq!(pieces.concat(), text, "{pre}");
            }
        }
    }

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(split("smollm", "a 2024"), ["a", " ", "2", "0", "2", "4"]);
    }
}
