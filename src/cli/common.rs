//! Arguments and helpers shared by the subcommands.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::core::adapter::TextModel;
use lowbit::core::config::Source;
use lowbit::core::Backend;
use lowbit::load::{load_text_model_on_backend, LoadOptions, QuantMethod};
use lowbit::selection::{self, load_plugins, resolve, ConfigRequest};
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
    /// Config file (TOML, SPEC.md §2). Precedence: flags you pass > LOWBIT_<SECTION>_<KEY>
    /// environment variables > this file > the profile > these flags' defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Profile applied to the WebGPU backend: auto | chrome | edge | firefox | safari | mobile
    /// | native, or a plugin's.
    #[arg(long)]
    pub profile: Option<String>,
    /// Plugin library (cdylib) to load; repeatable.
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Ids of the flags given on the command line (set after parsing; their defaults must not
    /// override a config file).
    #[arg(skip)]
    pub explicit: Vec<String>,
}

/// Flags of [`ModelArgs`] that map onto config keys.
const CONFIG_FLAGS: [(&str, &str); 6] = [
    ("model", "model.path"),
    ("quant", "quantization.method"),
    ("group_size", "quantization.group_size"),
    ("scheme", "quantization.scheme"),
    ("backend", "runtime.backend"),
    ("threads", "runtime.threads"),
];

/// Records which of the [`ModelArgs`] flags the user passed.
pub fn mark_explicit(args: &mut ModelArgs, m: &clap::ArgMatches) {
    args.explicit = CONFIG_FLAGS
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| {
            m.try_get_raw(id).is_ok()
                && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(str::to_owned)
        .collect();
}

impl ModelArgs {
    /// The configuration request of these flags: their defaults as command defaults, the
    /// flags the user passed (and `quant` when it differs from `self.quant`) as CLI values.
    pub fn config_request(&self, quant: &str) -> Result<ConfigRequest> {
        let method = QuantMethod::parse(quant)?.name();
        let scheme = if self.scheme.starts_with("asym") {
            "asymmetric"
        } else {
            "symmetric"
        };
        let values: [(&str, lowbit::core::config::toml::Value); 6] = [
            (
                "model",
                self.model
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
                    .into(),
            ),
            ("quant", method.into()),
            ("group_size", (self.group_size as i64).into()),
            ("scheme", scheme.into()),
            ("backend", self.backend.clone().into()),
            ("threads", (self.threads as i64).into()),
        ];
        let mut req = ConfigRequest {
            file: self.config.clone(),
            ..Default::default()
        };
        for ((id, key), (_, v)) in CONFIG_FLAGS.iter().zip(values) {
            let explicit = self.explicit.iter().any(|e| e == id)
                || (*id == "quant"
                    && QuantMethod::parse(&self.quant).ok() != QuantMethod::parse(quant).ok())
                || (*id == "model" && self.model.is_some());
            if explicit {
                req.cli
                    .push(*key, v, Source::Cli(format!("--{}", id.replace('_', "-"))));
            } else {
                req.command_defaults.push(*key, v, Source::CommandDefault);
            }
        }
        if let Some(p) = &self.profile {
            req.cli.push(
                "runtime.profile",
                p.clone().into(),
                Source::Cli("--profile".into()),
            );
        }
        if !self.plugins.is_empty() {
            let list = self
                .plugins
                .iter()
                .map(|p| lowbit::core::config::toml::Value::from(p.display().to_string()))
                .collect::<Vec<_>>();
            req.cli.push(
                "plugins",
                lowbit::core::config::toml::Value::Array(list),
                Source::Cli("--plugin".into()),
            );
        }
        Ok(req)
    }

    /// Load options for `quant` (which may differ from `self.quant` in multi-precision runs),
    /// through the configuration precedence; corrections are reported on stderr, errors
    /// returned as `INVALID_CONFIG`.
    pub fn load_options(&self, quant: &str) -> Result<LoadOptions> {
        load_plugins(&self.plugins)?;
        let r = resolve(&self.config_request(quant)?)?;
        for c in &r.validation.corrections {
            eprintln!("config: {} = {} → {} ({})", c.key, c.old, c.new, c.reason);
        }
        for w in &r.validation.warnings {
            eprintln!("config warning: {}: {}", w.key, w.message);
        }
        let profile = r.profile.clone();
        let config = r.validation.into_result()?;
        selection::load_options(&config, profile.as_ref())
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

/// The precisions of a run: `--quants a,b,c` when given, else `--quant`.
pub fn quant_list(quants: Option<&str>, quant: &str) -> Vec<String> {
    match quants {
        Some(q) => q.split(',').map(|s| s.trim().to_owned()).collect(),
        None => vec![quant.to_owned()],
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
