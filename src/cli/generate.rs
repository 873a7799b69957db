//! `lowbit generate`.

use super::common::{mb, ModelArgs};
use clap::Args;
use lowbit::core::block_on;
use lowbit::core::generate::{generate, GenerateOptions, SamplingParams};
use lowbit::{Error, Result};
use std::io::Write;

/// Arguments of `lowbit generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user message (instruct models).
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample only among the most likely tokens whose probabilities sum to P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when this string appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context size (KV cache capacity) in tokens [config: kv_cache.max_seq_len; default 4096],
    /// at most the model's trained context.
    #[arg(long)]
    pub ctx: Option<usize>,
}

/// Runs `lowbit generate`.
pub fn run(a: &GenerateArgs) -> Result<()> {
    if !(0.0..=100.0).contains(&a.temperature) || a.temperature.is_nan() {
        return Err(Error::invalid_config(
            "--temperature must be between 0 and 100",
        ));
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(Error::invalid_config("--top-p must be in (0, 1]"));
    }
    let mut plan = a.model.plan(None)?;
    if let Some(ctx) = a.ctx {
        plan.kv_cache.max_seq_len = ctx;
    }
    let (model, _) = a.model.load(&plan)?;
    let tok = model.tokenizer();
    // The operator's own prompt may use control tokens; a chat message's content is text
    // (the template writes the markers, and its own BOS where the model wants one).
    let prompt = if a.chat {
        tok.encode_chat(&[("user", a.prompt.as_str())], true)?
    } else {
        tok.encode(&a.prompt, true)?
    };
    let ctx = plan.kv_cache.max_seq_len;
    let mut cache = model.new_cache_as(
        ctx.min(model.config().context_length.max(1)),
        plan.kv_cache.format()?,
    )?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop: a.stop.clone(),
        cancel: None,
    };
    let json = a.model.json;
    let mut out = std::io::stdout().lock();
    let mut print = |piece: &str, _last| {
        if !json {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    };
    let g = block_on(generate(
        model.as_ref(),
        &mut cache,
        &prompt,
        &opts,
        &mut print,
    ))?;
    drop(out);
    if json {
        let v = serde_json::json!({
            "model": model.config().name,
            "precision": model.plan().label(),
            "method": model.plan().method(),
            "bits_per_weight": model.bits_per_weight(),
            "prompt_tokens": prompt,
            "text": g.text,
            "tokens": g.tokens,
            "finish_reason": g.finish_reason,
            "stats": g.stats,
        });
        println!("{v}");
    } else {
        let s = &g.stats;
        println!();
        eprintln!(
            "\n[{} | {} {:.2} bits/weight | prompt {} tok, {:.1} tok/s | generated {} tok, \
             {:.1} tok/s, latency p50 {:.1} ms p95 {:.1} ms | first token {:.0} ms | weights \
             {:.1} MB, KV cache {:.1} MB, peak RSS {:.1} MB | finish: {:?}]",
            model.config().name,
            model.plan().label(),
            model.bits_per_weight(),
            s.prompt_tokens,
            s.prefill_tokens_per_s,
            s.generated_tokens,
            s.decode_tokens_per_s,
            s.token_latency_p50_ms,
            s.token_latency_p95_ms,
            s.time_to_first_token_ms,
            mb(s.weight_bytes),
            mb(s.kv_cache_bytes),
            mb(s.peak_rss_bytes),
            g.finish_reason,
        );
    }
    Ok(())
}
