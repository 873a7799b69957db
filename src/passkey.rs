//! Passkey retrieval: a five-digit number hidden at a chosen depth of a long repetitive filler
//! text, then asked for (the test of Mohtashami & Jaggi, "Landmark Attention", as long-context
//! work uses it). It checks that a KV-cache configuration still lets a model find one token
//! thousands of positions back, which perplexity (dominated by local context) does not show.

use lowbit_core::adapter::{Logits, TextModel};
use lowbit_core::kv::KvFormat;
use lowbit_core::{block_on, Error, Result};
use serde::Serialize;

const INTRO: &str = "There is important info hidden inside a lot of irrelevant text. Find it \
and memorize it. I will quiz you about the important information there. ";
const FILLER: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There \
and back again. ";
const QUESTION: &str = "What is the pass key? The pass key is";

/// The five-digit key of trial `seed` (deterministic, so runs are comparable).
pub fn passkey(seed: u64) -> u32 {
    // SplitMix64: well spread for consecutive seeds.
    let mut state = seed;
    10_000 + (lowbit_core::quant::splitmix64(&mut state) % 90_000) as u32
}

/// The prompt: the introduction, `repeats` filler sentences with the key's sentence inserted
/// after `depth × repeats` of them (`depth` in `0..=1`), then the question.
pub fn prompt(repeats: usize, depth: f64, key: u32) -> String {
    let at = ((depth.clamp(0.0, 1.0) * repeats as f64).round() as usize).min(repeats);
    let mut s = String::from(INTRO);
    for i in 0..=repeats {
        if i == at {
            s.push_str(&format!(
                "The pass key is {key}. Remember it. {key} is the pass key. "
            ));
        }
        if i < repeats {
            s.push_str(FILLER);
        }
    }
    s.push_str(QUESTION);
    s
}

/// Filler repeats that make a prompt of about `tokens` tokens for `model` (at least 1).
///
/// Errors with the tokenizer's error.
pub fn repeats_for(model: &dyn TextModel, tokens: usize) -> Result<usize> {
    let tok = model.tokenizer();
    let base = tok.encode(&prompt(0, 0.0, passkey(0)), true)?.len();
    let per = tok.encode(&prompt(16, 0.0, passkey(0)), true)?.len() - base;
    Ok((tokens.saturating_sub(base) * 16 / per.max(1)).max(1))
}

/// One trial's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    /// Where the key sat (0 = start of the filler, 1 = end).
    pub depth: f64,
    /// The hidden key.
    pub key: u32,
    /// Prompt tokens.
    pub tokens: usize,
    /// The greedy continuation (`answer_tokens` tokens).
    pub answer: String,
    /// Whether the answer's first number is the key.
    pub found: bool,
}

/// Greedy tokens read after the question.
pub const ANSWER_TOKENS: usize = 8;

/// Runs one trial: the prompt of `repeats` filler sentences with key `key` at `depth`, through a
/// fresh cache kept as `kv`, then [`ANSWER_TOKENS`] greedy tokens; found when the first number
/// in them is the key.
///
/// Errors with the model's errors (`UNSUPPORTED` for a KV format its backend cannot keep,
/// `CONTEXT_OVERFLOW` past the model's context).
pub fn trial(
    model: &dyn TextModel,
    repeats: usize,
    depth: f64,
    key: u32,
    kv: KvFormat,
) -> Result<Trial> {
    let ids = model
        .tokenizer()
        .encode(&prompt(repeats, depth, key), true)?;
    let ctx = model.config().context_length;
    if ids.len() + ANSWER_TOKENS > ctx {
        return Err(Error::context_overflow(format!(
            "a passkey prompt of {} tokens + {ANSWER_TOKENS} answer tokens > the model's context {ctx}",
            ids.len()
        )));
    }
    let mut cache = model.new_cache_as(ids.len() + ANSWER_TOKENS, kv)?;
    let logits = block_on(model.forward(&mut cache, &ids, Logits::Last))?;
    let first = lowbit_core::generate::argmax(&logits);
    let mut out = vec![first];
    block_on(
        model.decode_greedy(&mut cache, first, ANSWER_TOKENS - 1, &mut |t| {
            out.push(t);
            true
        }),
    )?;
    let answer = model.tokenizer().decode(&out);
    let number: String = answer
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(Trial {
        depth,
        key,
        tokens: ids.len(),
        found: number == key.to_string(),
        answer,
    })
}

/// `n` depths evenly spread over `0..=1` (one: the middle).
pub fn depths(n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![0.5],
        _ => (0..n).map(|i| i as f64 / (n - 1) as f64).collect(),
    }
}
