//! `lowbit passkey`.

use super::common::ModelArgs;
use clap::Args;
use lowbit::passkey;
use lowbit::results;
use lowbit::Result;
use lowbit_core::kv::KvFormat;
use std::path::PathBuf;

/// Arguments of `lowbit passkey`.
#[derive(Args, Debug)]
pub struct PasskeyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens (filler around the key; at most the model's context).
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
    /// Depths at which the key is hidden, evenly spread from the start (0) to the end (1) of
    /// the filler.
    #[arg(long, default_value_t = 5)]
    pub depths: usize,
    /// Keys tried at each depth.
    #[arg(long, default_value_t = 1)]
    pub trials: usize,
    /// Only the configured KV cache; by default an f32 cache runs the same trials first, side
    /// by side, when --kv-bits is below 16.
    #[arg(long)]
    pub no_baseline: bool,
    /// Append one JSON object per KV configuration to this JSON-lines file: date, commit,
    /// device, the configuration, each trial (depth, key, tokens, answer, found) and the rate.
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
}

/// Runs `lowbit passkey`.
pub fn run(a: &PasskeyArgs) -> Result<()> {
    let plan = a.model.plan(None)?;
    let (model, backend) = a.model.load(&plan)?;
    let kv = plan.kv_cache.format()?;
    let mut formats = Vec::new();
    if kv != KvFormat::F32 && !a.no_baseline {
        formats.push(KvFormat::F32);
    }
    formats.push(kv);
    let repeats = passkey::repeats_for(model.as_ref(), a.tokens)?;
    let depths = passkey::depths(a.depths);
    let mut out = results::open_output(a.output.as_deref())?;
    let mut summary = Vec::new();
    if !a.model.json {
        println!("| KV cache | depth | key | tokens | answer | found |");
        println!("|---|---:|---:|---:|---|---|");
    }
    for f in formats {
        let mut trials = Vec::new();
        for (i, &d) in depths.iter().enumerate() {
            for t in 0..a.trials {
                let key = passkey::passkey((i * a.trials + t) as u64);
                eprint!("\r{} depth {d:.2} key {t}/{} ...", f.label(), a.trials);
                let r = passkey::trial(model.as_ref(), repeats, d, key, f)?;
                eprint!("\r\x1b[K");
                if !a.model.json {
                    println!(
                        "| {} | {:.2} | {} | {} | {:?} | {} |",
                        f.label(),
                        r.depth,
                        r.key,
                        r.tokens,
                        r.answer,
                        if r.found { "yes" } else { "no" }
                    );
                }
                trials.push(r);
            }
        }
        let found = trials.iter().filter(|t| t.found).count();
        let rate = found as f64 / trials.len().max(1) as f64;
        if let Some(out) = &mut out {
            let mut config = results::load_config(&plan);
            config.insert("model".into(), model.config().name.clone().into());
            config.insert("kv".into(), f.label().into());
            config.insert("tokens".into(), a.tokens.into());
            out.set_backend(&backend.info());
            out.write(serde_json::json!({
                "test": "passkey",
                "config": config,
                "trials": trials,
                "found": found,
                "rate": rate,
            }))?;
        }
        summary.push(serde_json::json!({
            "kv": f.label(),
            "found": found,
            "trials": trials.len(),
            "rate": rate,
            "results": trials,
        }));
    }
    if a.model.json {
        println!("{}", serde_json::json!({ "runs": summary }));
    } else {
        for s in &summary {
            println!(
                "{}: {} of {} found",
                s["kv"].as_str().unwrap_or(""),
                s["found"],
                s["trials"]
            );
        }
    }
    Ok(())
}
