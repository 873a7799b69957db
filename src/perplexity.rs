//! Perplexity, by the same method as llama.cpp's `llama-perplexity`, so the two are
//! comparable number for number: tokenize the whole text (BOS first when the model adds one),
//! cut it into chunks of `ctx` tokens, put BOS at the start of each chunk (when the model adds
//! one), and score the second half of each chunk: the logits at positions `ctx/2 .. ctx-1`
//! predict the tokens after them.

use lowbit_core::adapter::{Logits, TextModel};
use lowbit_core::kv::KvFormat;
use lowbit_core::{block_on, Error, Result};
use serde::Serialize;

/// Result of a perplexity run.
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityResult {
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Standard error of the perplexity estimate (as llama.cpp prints it).
    pub perplexity_stderr: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored_tokens: usize,
    /// Tokens the whole text tokenized to.
    pub text_tokens: usize,
    /// Context length per chunk.
    pub ctx: usize,
    /// Bytes the KV cache keeps per token (keys and values, all layers).
    pub kv_bytes_per_token: f64,
}

/// Log-softmax probability of `target` in one row of logits (computed in f64).
fn log_prob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[target as usize] as f64 - max - sum.ln()
}

/// Computes perplexity over the first `n_chunks` chunks (`0` = all) of `text`.
/// `progress(chunk_done, n_chunks, running_ppl)` is called after every chunk.
pub fn perplexity(
    model: &dyn TextModel,
    text: &str,
    ctx: usize,
    n_chunks: usize,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityResult> {
    perplexity_kv(model, text, ctx, n_chunks, KvFormat::F32, progress)
}

/// [`perplexity`] with keys and values cached as `kv` (a quantized KV cache: every chunk's keys and values are written quantized and attention reads them so,
/// as generation would).
pub fn perplexity_kv(
    model: &dyn TextModel,
    text: &str,
    ctx: usize,
    n_chunks: usize,
    kv: KvFormat,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityResult> {
    if ctx < 4 {
        return Err(Error::invalid_config(format!(
            "--ctx must be at least 4, got {ctx}"
        )));
    }
    let limit = model.config().context_length;
    if limit > 0 && ctx > limit {
        return Err(Error::invalid_config(format!(
            "--ctx {ctx} is more than {}'s context length of {limit}",
            model.config().name
        )));
    }
    let tok = model.tokenizer();
    let tokens = tok.encode(text, true)?;
    if tokens.len() < 2 * ctx {
        return Err(Error::invalid_config(format!(
            "the text tokenizes to {} tokens; at least 2 × ctx = {} are needed",
            tokens.len(),
            2 * ctx
        )));
    }
    let max_chunks = tokens.len() / ctx;
    let n = if n_chunks == 0 {
        max_chunks
    } else {
        n_chunks.min(max_chunks)
    };
    let add_bos = tok.add_bos();
    let bos = tok.bos_id();
    let first = ctx / 2;
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache_as(ctx, kv)?;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    for i in 0..n {
        let mut chunk = tokens[i * ctx..(i + 1) * ctx].to_vec();
        if let (true, Some(b)) = (add_bos, bos) {
            chunk[0] = b;
        }
        cache.clear();
        let logits = block_on(model.forward(&mut cache, &chunk, Logits::All))?;
        for j in first..ctx - 1 {
            let lp = log_prob(&logits[j * vocab..(j + 1) * vocab], chunk[j + 1]);
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        }
        progress(i + 1, n, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let stderr_nll = (var / (count as f64 - 1.0).max(1.0)).sqrt();
    let ppl = mean.exp();
    Ok(PerplexityResult {
        perplexity: ppl,
        perplexity_stderr: ppl * stderr_nll,
        chunks: n,
        scored_tokens: count,
        text_tokens: tokens.len(),
        ctx,
        kv_bytes_per_token: cache.bytes() as f64 / ctx as f64,
    })
}
