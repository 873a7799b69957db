//! `lowbit quantize`.

use super::common::ModelArgs;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::plan::ModelChoice;
use lowbit::quantize::quantize_model;
use lowbit::{Error, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `lowbit quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model to quantize (GGUF; a quantized source such as Q4_1 is dequantized first).
    pub input: PathBuf,
    /// Where to write the quantized model file (a GGUF holding lowbit's codes, scales,
    /// rotations and the plan; `generate`, `perplexity`, `bench` and `serve` load it with
    /// `--model`, skipping calibration and quantization).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Print each quantized matrix's width, bits/weight and measured error (relative, and
    /// weighted by the calibration text's activations when calibrated).
    #[arg(long)]
    pub report: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `lowbit quantize`.
pub fn run(a: &QuantizeArgs) -> Result<()> {
    if a.out == a.input {
        return Err(Error::invalid_config(
            "--out must differ from the input model",
        ));
    }
    let mut plan = a.model.plan(None)?;
    plan.model = ModelChoice::File(a.input.clone());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let t = Instant::now();
    let r = quantize_model(&plan, &a.input, &a.out, &mut |done, total, what| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_owned());
    });
    bar.finish_and_clear();
    let r = r?;
    let secs = t.elapsed().as_secs_f64();
    if a.model.json {
        println!(
            "{}",
            serde_json::json!({"out": a.out, "seconds": secs, "report": r})
        );
        return Ok(());
    }
    if a.report {
        println!("| tensor | precision | params | bits/weight | rel. error | act-weighted error |");
        println!("|---|---|---|---|---|---|");
        for t in &r.tensors {
            println!(
                "| {} | {} | {} | {:.3} | {:.4} | {} |",
                t.name,
                t.precision,
                t.params,
                t.bits_per_weight,
                t.rel_error,
                t.act_weighted_error
                    .map_or_else(|| "-".into(), |e| format!("{e:.4}"))
            );
        }
    }
    println!(
        "wrote {} ({:.1} MB): {:.3} bits/weight over the whole model, calibration: {}, {:.1} s",
        a.out.display(),
        r.file_bytes as f64 / 1e6,
        r.bits_per_weight,
        r.calibration,
        secs
    );
    Ok(())
}
