//! `lowbit perplexity`.

use super::common::ModelArgs;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::perplexity::perplexity_kv;
use lowbit::results;
use lowbit::{Error, Result};
use std::path::PathBuf;

/// Arguments of `lowbit perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (e.g. models/brown.txt from scripts/fetch-models.sh).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Chunks to evaluate from the start of the text (0 = all).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    /// Evaluate several precisions in one run, comma-separated (overrides --quant), e.g.
    /// fp32,int8,int4.
    #[arg(long)]
    pub quants: Option<String>,
    /// Append one JSON object per precision to this JSON-lines file, each written as it is
    /// measured: date, commit, command, device, backend, driver, the full configuration (model,
    /// precision, group size, scheme, text, context, chunks) and the perplexity.
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
}

/// Runs `lowbit perplexity`.
pub fn run(a: &PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| {
        Error::invalid_config(format!("cannot read text file {}: {e}", a.file.display()))
    })?;
    let quants = super::common::quant_list(a.quants.as_deref());
    let mut rows = Vec::new();
    let mut out = results::open_output(a.output.as_deref())?;
    if !a.model.json {
        println!(
            "| precision | bits/weight | weights MB | perplexity | ± | chunks | tokens scored |"
        );
        println!("|---|---|---|---|---|---|---|");
    }
    for q in &quants {
        let plan = a.model.plan(q.as_deref())?;
        let (model, backend) = a.model.load(&plan)?;
        let bar = ProgressBar::new(a.chunks as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} perplexity [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let r = perplexity_kv(
            model.as_ref(),
            &text,
            a.ctx,
            a.chunks,
            plan.kv_cache.format()?,
            &mut |done, total, ppl| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(format!("ppl {ppl:.4}"));
            },
        )?;
        bar.finish_and_clear();
        let f = plan.kv_cache.format()?;
        let kv = if f == lowbit_core::kv::KvFormat::F32 {
            String::new()
        } else {
            format!(" {}", f.label())
        };
        let label = format!(
            "{}{}{kv}",
            model.plan().label(),
            plan.methods.label_suffix()
        );
        if !a.model.json {
            println!(
                "| {label} | {:.3} | {:.1} | {:.4} | {:.4} | {} | {} |",
                model.bits_per_weight(),
                model.weight_bytes() as f64 / 1e6,
                r.perplexity,
                r.perplexity_stderr,
                r.chunks,
                r.scored_tokens
            );
        }
        if let Some(out) = &mut out {
            let mut config = results::load_config(&plan);
            config.insert("model".into(), model.config().name.clone().into());
            config.insert("precision".into(), label.clone().into());
            config.insert("bits_per_weight".into(), model.bits_per_weight().into());
            config.insert("weight_bytes".into(), model.weight_bytes().into());
            config.insert("file".into(), a.file.display().to_string().into());
            config.insert("ctx".into(), a.ctx.into());
            config.insert("chunks".into(), a.chunks.into());
            out.set_backend(&backend.info());
            out.write(serde_json::json!({
                "test": "perplexity",
                "config": config,
                "perplexity": r.perplexity,
                "perplexity_stderr": r.perplexity_stderr,
                "chunks": r.chunks,
                "scored_tokens": r.scored_tokens,
                "text_tokens": r.text_tokens,
                "kv_bytes_per_token": r.kv_bytes_per_token,
            }))?;
        }
        rows.push(serde_json::json!({
            "precision": label,
            "bits_per_weight": model.bits_per_weight(),
            "weight_bytes": model.weight_bytes(),
            "result": r,
        }));
    }
    if a.model.json {
        println!("{}", serde_json::json!({ "file": a.file, "runs": rows }));
    }
    Ok(())
}
