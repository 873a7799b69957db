//! Arguments and helpers shared by the subcommands.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::core::adapter::{TextModel, METHODS};
use lowbit::core::config::{schema, toml, Config, Source};
use lowbit::core::Backend;
use lowbit::plan::RunPlan;
use lowbit::selection::{load_plugins, ConfigRequest};
use lowbit::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Model, precision and backend selection, common to every subcommand. A flag left out takes
/// the configuration's value (file, `LOWBIT_<SECTION>_<KEY>` variable, profile, or the
/// schema default that `lowbit config show` prints).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model file (GGUF) [config: model.path]. Default: SmolLM2-135M-Instruct.Q4_1.gguf in
    /// ./models or $LOWBIT_MODELS_DIR (fetch it with scripts/fetch-models.sh smollm2).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Weight precision: fp32 | fp16 | int8 | int6 | int5 | int4 | int3 | int2 | mixed [config:
    /// quantization.method; default int4]. Integer formats quantize the attention and
    /// feed-forward matrices to that width (the embedding and output projection to 8 bits)
    /// with an error-minimising scale search; mixed takes each role's bits from
    /// [quantization.layers].
    #[arg(long, short = 'q')]
    pub quant: Option<String>,
    /// Values per quantization group (scale) along the reduction dimension: 32, 64 or 128
    /// [config: quantization.group_size; default 32].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Integer scheme: asym (scale and offset per group) or sym (one f16 scale per group)
    /// [config: quantization.scheme; default asym: at 4 bits it loses 0.47% perplexity on
    /// SmolLM2 where sym loses 19.6%].
    #[arg(long, value_parser = ["sym", "asym", "symmetric", "asymmetric"])]
    pub scheme: Option<String>,
    /// Calibration text: run the model on it first and use its layers' input statistics for
    /// importance-weighted scales and error-feedback rounding [config:
    /// quantization.calibration.file; default none]. Use text disjoint from what you evaluate
    /// (models/brown-calib.txt is disjoint from models/brown.txt's perplexity chunks).
    #[arg(long, value_name = "FILE")]
    pub calibrate: Option<PathBuf>,
    /// Quantize every matrix in a randomized-Hadamard basis of its input dimension
    /// (incoherence processing; undone on the activations by the backend) [config:
    /// quantization.rotation; default false].
    #[arg(long)]
    pub rotate: bool,
    /// Code grid of 2-4-bit weights: uniform, or learned (2^bits int8 levels fitted per tensor
    /// by importance-weighted Lloyd, decoded by table lookup) [config: quantization.grid;
    /// default uniform].
    #[arg(long, value_name = "uniform|learned")]
    pub grid: Option<String>,
    /// Mixed precision: with --calibrate, give each weight unit its own width (2, 3, 4, 5, 6 or 8
    /// bits) so the whole model (embedding and output projection included) averages at most
    /// this many bits per weight, the bits going where the measured error is highest [config:
    /// quantization.target_bits; default 0 = off].
    #[arg(long, value_name = "BITS")]
    pub target_bits: Option<f64>,
    /// KV-cache precision: 16 (f32 keys and values) or 8, 4, 3, 2 bits in blocks of
    /// kv_cache.group_size values (narrowed to the head dimension), min–max per block; CPU
    /// backend only so far [config: kv_cache.bits; default 16].
    #[arg(long, value_name = "BITS")]
    pub kv_bits: Option<u32>,
    /// With --kv-bits below 16: the most recent tokens every query sees at full precision
    /// [config: kv_cache.recent_window; default 128].
    #[arg(long, value_name = "TOKENS")]
    pub kv_window: Option<usize>,
    /// Sliding window: each token attends to the first kv_cache.sink_tokens tokens (default 4)
    /// and the last TOKENS only, kept in a ring, so generation runs past the context in
    /// constant memory; CPU backend only so far [config: kv_cache.sliding_window; default 0 =
    /// off].
    #[arg(long, value_name = "TOKENS")]
    pub kv_sliding: Option<usize>,
    /// Backend: auto | webgpu | cpu [config: runtime.backend; default auto].
    #[arg(long)]
    pub backend: Option<String>,
    /// CPU worker threads, 0 = all cores [config: runtime.threads; default 0].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Set any config key for this run, e.g. `--set backend.webgpu.wide_matvec=false`
    /// (repeatable; `lowbit config show` lists the keys). Above the file and the environment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print one machine-readable JSON result on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Config file (TOML, SPEC.md §2). Precedence: flags you pass > LOWBIT_<SECTION>_<KEY>
    /// environment variables > this file > the profile > the schema defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Profile applied to the WebGPU backend: auto | chrome | edge | firefox | safari | mobile
    /// | native, or a plugin's [config: runtime.profile].
    #[arg(long)]
    pub profile: Option<String>,
    /// Plugin library (cdylib) to load; repeatable [config: plugins].
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
}

/// `KEY=VALUE` of `--set`: the value as a TOML literal where it parses as one (`false`, `8`,
/// `[64, 1, 1]`), else as a string.
pub fn parse_set(item: &str) -> Result<(String, toml::Value)> {
    let (key, value) = item
        .split_once('=')
        .ok_or_else(|| Error::invalid_config(format!("--set {item}: expected KEY=VALUE")))?;
    let key = key.trim();
    if schema::key(key).is_none() {
        let hint = schema::nearest_key(key)
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        return Err(Error::invalid_config(format!(
            "--set: unknown key `{key}`{hint} (`lowbit config show` lists them)"
        )));
    }
    let value = value.trim();
    let parsed =
        schema::parse_literal(value).unwrap_or_else(|| toml::Value::String(value.to_owned()));
    Ok((key.to_owned(), parsed))
}

impl ModelArgs {
    /// The configuration request of these flags: the flags the user passed, and `quant` (a
    /// precision of a multi-precision run) over `--quant`.
    pub fn config_request(&self, quant: Option<&str>) -> Result<ConfigRequest> {
        let mut req = ConfigRequest {
            file: self.config.clone(),
            ..Default::default()
        };
        let cli = &mut req.cli;
        let flag = |name: &str| Source::Cli(format!("--{name}"));
        if let Some(p) = &self.model {
            cli.push("model.path", p.display().to_string().into(), flag("model"));
        }
        // A precision typed on the command line is taken as written: an unknown one is an
        // error, not a correction to the nearest name (as a config file's would be).
        let method = match quant {
            Some(q) => Some((q, "quants")),
            None => self.quant.as_deref().map(|q| (q, "quant")),
        };
        if let Some((q, name)) = method {
            if !METHODS.contains(&q) {
                return Err(Error::invalid_config(format!(
                    "--{name} {q}: unknown precision; expected one of {}",
                    METHODS.join(", ")
                )));
            }
            cli.push("quantization.method", q.into(), flag(name));
        }
        if let Some(g) = self.group_size {
            cli.push(
                "quantization.group_size",
                (g as i64).into(),
                flag("group-size"),
            );
        }
        if let Some(s) = &self.scheme {
            let scheme = if s.starts_with("asym") {
                "asymmetric"
            } else {
                "symmetric"
            };
            cli.push("quantization.scheme", scheme.into(), flag("scheme"));
        }
        if let Some(f) = &self.calibrate {
            cli.push(
                "quantization.calibration.file",
                f.display().to_string().into(),
                flag("calibrate"),
            );
        }
        if let Some(b) = self.kv_bits {
            cli.push("kv_cache.bits", i64::from(b).into(), flag("kv-bits"));
        }
        if let Some(w) = self.kv_window {
            cli.push(
                "kv_cache.recent_window",
                (w as i64).into(),
                flag("kv-window"),
            );
        }
        if let Some(w) = self.kv_sliding {
            cli.push(
                "kv_cache.sliding_window",
                (w as i64).into(),
                flag("kv-sliding"),
            );
        }
        if let Some(b) = self.target_bits {
            cli.push("quantization.target_bits", b.into(), flag("target-bits"));
        }
        if let Some(g) = &self.grid {
            cli.push("quantization.grid", g.as_str().into(), flag("grid"));
        }
        if self.rotate {
            cli.push("quantization.rotation", true.into(), flag("rotate"));
        }
        if let Some(b) = &self.backend {
            cli.push("runtime.backend", b.as_str().into(), flag("backend"));
        }
        if let Some(t) = self.threads {
            cli.push("runtime.threads", (t as i64).into(), flag("threads"));
        }
        if let Some(p) = &self.profile {
            cli.push("runtime.profile", p.as_str().into(), flag("profile"));
        }
        if !self.plugins.is_empty() {
            let list = self
                .plugins
                .iter()
                .map(|p| toml::Value::from(p.display().to_string()))
                .collect::<Vec<_>>();
            cli.push("plugins", toml::Value::Array(list), flag("plugin"));
        }
        for item in &self.set {
            let (key, value) = parse_set(item)?;
            cli.push(key, value, Source::Cli(format!("--set {item}")));
        }
        Ok(req)
    }

    /// The run plan for `quant` (a precision of a multi-precision run; `None`: `--quant` or
    /// the configuration's), through the configuration precedence; corrections and warnings
    /// are reported on stderr, errors returned as `INVALID_CONFIG`.
    pub fn plan(&self, quant: Option<&str>) -> Result<RunPlan> {
        Ok(self.resolve(&self.config_request(quant)?)?.0)
    }

    /// Loads these flags' plugins, resolves `req` (these flags' request, possibly with more
    /// keys) and reports its corrections and warnings on stderr. Returns the plan and the
    /// validated configuration (for keys outside the plan, such as `[server]`).
    pub fn resolve(&self, req: &ConfigRequest) -> Result<(RunPlan, Config)> {
        load_plugins(&self.plugins)?;
        let (plan, r) = RunPlan::resolve(req)?;
        for c in &r.validation.corrections {
            eprintln!("config: {} = {} → {} ({})", c.key, c.old, c.new, c.reason);
        }
        for w in &r.validation.warnings {
            eprintln!("config warning: {}: {}", w.key, w.message);
        }
        Ok((plan, r.validation.corrected))
    }

    /// Loads per `plan` with a progress bar on stderr, returning the backend too.
    pub fn load(&self, plan: &RunPlan) -> Result<(Box<dyn TextModel>, Arc<dyn Backend>)> {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} loading [{bar:30}] {pos}/{len} tensors {elapsed} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let model = plan.load(&mut |done, total, what| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_owned());
        });
        bar.finish_and_clear();
        model
    }
}

/// The precisions of a run: `--quants a,b,c` when given (each over `--quant`), else one run at
/// `--quant` or the configuration's precision (`None`).
pub fn quant_list(quants: Option<&str>) -> Vec<Option<String>> {
    match quants {
        Some(q) => q.split(',').map(|s| Some(s.trim().to_owned())).collect(),
        None => vec![None],
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
