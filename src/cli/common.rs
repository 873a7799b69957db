//! Arguments and helpers shared by the subcommands.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::core::adapter::TextModel;
use lowbit::core::quant::Scheme;
use lowbit::core::Backend;
use lowbit::load::{load_text_model_on_backend, LoadOptions, QuantMethod};
use lowbit::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Model, precision and backend selection, common to every subcommand.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model file (GGUF). Default: models/SmolLM2-135M-Instruct.Q4_1.gguf (fetch it with
    /// scripts/fetch-models.sh smollm2; the folder can be moved with LOWBIT_MODELS_DIR).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Weight precision: fp32 | fp16 | int8 | int4 | int3 | int2. Integer formats quantize the
    /// attention and feed-forward matrices to that width (the embedding and output projection
    /// to 8 bits) with an error-minimising scale search.
    #[arg(long, short = 'q', default_value = "int4")]
    pub quant: String,
    /// Values per quantization group (scale) along the reduction dimension: 32, 64 or 128.
    #[arg(long, default_value_t = 32)]
    pub group_size: usize,
    /// Integer scheme: sym (one f16 scale per group) or asym (scale and offset per group).
    #[arg(long, default_value = "sym", value_parser = ["sym", "asym", "symmetric", "asymmetric"])]
    pub scheme: String,
    /// Backend: cpu | webgpu | auto.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// CPU worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Print one machine-readable JSON result on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ModelArgs {
    /// Load options for `quant` (which may differ from `self.quant` in multi-precision runs).
    pub fn load_options(&self, quant: &str) -> Result<LoadOptions> {
        Ok(LoadOptions {
            model: self.model.clone(),
            quant: QuantMethod::parse(quant)?,
            group_size: self.group_size,
            scheme: if self.scheme.starts_with("asym") {
                Scheme::Asymmetric
            } else {
                Scheme::Symmetric
            },
            backend: self.backend.clone(),
            threads: self.threads,
            ..Default::default()
        })
    }

    /// Loads the model with a progress bar on stderr.
    pub fn load(&self, quant: &str) -> Result<Box<dyn TextModel>> {
        Ok(self.load_with(&self.load_options(quant)?)?.0)
    }

    /// Loads per `opts` with a progress bar on stderr, returning the backend too.
    pub fn load_with(&self, opts: &LoadOptions) -> Result<(Box<dyn TextModel>, Arc<dyn Backend>)> {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} loading [{bar:30}] {pos}/{len} tensors {elapsed} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let model = load_text_model_on_backend(opts, &mut |done, total, what| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_owned());
        });
        bar.finish_and_clear();
        model
    }
}

/// Prints an error: as JSON on stdout with `--json`, else on stderr.
pub fn report_error(e: &Error, json: bool) {
    if json {
        let v = serde_json::json!({"error": {"code": e.code.as_str(), "message": e.message}});
        println!("{v}");
    } else {
        eprintln!("error: {e}");
    }
}

/// Megabytes, for tables.
pub fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}
