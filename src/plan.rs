//! The run plan: what a run loads and how, typed. It is built in one place,
//! [`RunPlan::from_config`], from the merged and validated configuration (flags > environment >
//! file > profile > schema defaults, see [`crate::selection`]); the CLI, the server and the
//! library API all take one, so a setting flows in one direction:
//! CLI/env/file/profile → validated config → plan → adapter → backend → engine.

use crate::selection::{resolve, ConfigRequest, Resolved};
use lowbit_core::adapter::{LoadContext, ModelSource, QuantPlan, TextModel, WeightPrecision};
use lowbit_core::config::Config;
pub use lowbit_core::config::{tuning_from_config, weights_from_config};
use lowbit_core::profile::BrowserProfile;
use lowbit_core::quant::{model_file, parse_overrides, Quantizer};
use lowbit_core::registry::{
    create_backend, find_adapter, find_profile, BackendOptions, BackendTuning,
};
use lowbit_core::{block_on, Backend, Error, ErrorCode, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The command that fetches the default model.
pub const FETCH_COMMAND: &str = "scripts/fetch-models.sh smollm2";

/// Which model a run loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelChoice {
    /// The default model in the models folder ([`models_dir`]).
    Default,
    /// A model file.
    File(PathBuf),
    /// A synthetic model of a published shape with random weights (speed benchmarks; see
    /// `lowbit_models::synthetic::PRESETS`).
    Synthetic(String),
}

/// How the KV cache of each request is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCachePolicy {
    /// Bits per cached key/value (`kv_cache.bits`; 16 = f16).
    pub bits: u8,
    /// Values per scale of a quantized cache (`kv_cache.group_size`).
    pub group_size: usize,
    /// Recent tokens each query of a quantized cache sees at full precision
    /// (`kv_cache.recent_window`).
    pub recent_window: usize,
    /// Leading tokens a quantized cache keeps at full precision (`kv_cache.sink_tokens`).
    pub sink_tokens: usize,
    /// Keys quantized per channel (`kv_cache.key_grouping = "channel"`) or per token.
    pub key_channels: bool,
    /// Heads stored Hadamard-rotated (`kv_cache.rotate`).
    pub rotate: bool,
    /// Sliding window: each query sees the sinks and the last this many tokens, kept in a ring
    /// (`kv_cache.sliding_window`; 0 = off).
    pub sliding_window: usize,
    /// Tokens one request's cache holds, prompt and generated (`kv_cache.max_seq_len`),
    /// clamped to the model's trained context when the model is loaded.
    pub max_seq_len: usize,
}

impl KvCachePolicy {
    /// How keys and values are stored: f32 at 16 bits, else `bits`-bit blocks of
    /// `group_size` values (narrowed to the head dimension by the model where wider).
    ///
    /// Errors with `INVALID_CONFIG` for a width or group the store does not take.
    pub fn dtype(&self) -> Result<lowbit_core::backend::DType> {
        if self.bits >= 16 {
            return Ok(lowbit_core::backend::DType::F32);
        }
        lowbit_core::backend::DType::q_block(self.bits, self.group_size)
    }

    /// [`Self::dtype`] with the full-precision sinks and recent window of a quantized cache.
    ///
    /// Errors as [`Self::dtype`].
    pub fn format(&self) -> Result<lowbit_core::kv::KvFormat> {
        let dtype = self.dtype()?;
        let quantized = dtype != lowbit_core::backend::DType::F32;
        Ok(lowbit_core::kv::KvFormat {
            dtype,
            sinks: if quantized { self.sink_tokens } else { 0 },
            window: if quantized { self.recent_window } else { 0 },
            // Per-channel key blocks are quantized from the window as they fill.
            key_channels: quantized && self.key_channels && self.recent_window >= self.group_size,
            rotate: quantized && self.rotate,
            sliding: self.sliding_window,
            ring_sinks: if self.sliding_window > 0 {
                self.sink_tokens
            } else {
                0
            },
        })
    }
}

/// Which backend runs the model, and its switches.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendPlan {
    /// `auto`, `webgpu` or `cpu` (`runtime.backend`).
    pub name: String,
    /// CPU worker threads; 0 = all cores (`runtime.threads`).
    pub threads: usize,
    /// The profile applied to the WebGPU backend (`chrome`, `safari`, …); `None`: the device's
    /// own features and limits (the `native` profile).
    pub profile: Option<String>,
    /// Kernel switches (`[backend.webgpu]`, `[backend.cpu]`, `runtime.f16`,
    /// `runtime.subgroups`).
    pub tuning: BackendTuning,
}

/// Everything a run needs to load a model: model, per-role weight precision, KV-cache policy,
/// backend and its tuning, profile.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPlan {
    /// The model.
    pub model: ModelChoice,
    /// Weight precision per role.
    pub weights: QuantPlan,
    /// The KV cache.
    pub kv_cache: KvCachePolicy,
    /// The backend.
    pub backend: BackendPlan,
    /// Gather per-kernel device timings (benchmarks).
    pub profiling: bool,
    /// Run [`warm_up`] at the end of loading, so every kernel is compiled (and the backend's
    /// pipeline cache saved) before the first request instead of during it.
    pub warm_up: bool,
    /// How matrices are quantized beyond their formats.
    pub methods: QuantMethods,
}

/// The quantization methods of a run (`quantization.rotation`, `quantization.calibration.*`,
/// `quantization.overrides`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantMethods {
    /// Quantize in a randomized-Hadamard basis.
    pub rotation: bool,
    /// Codes of 2-4 bits on learned per-tensor grids (`quantization.grid = learned`).
    pub learned_grid: bool,
    /// Calibration text, if any.
    pub calibration_file: Option<PathBuf>,
    /// Chunks of the calibration text to run.
    pub calibration_chunks: usize,
    /// Error-feedback rounding (with calibration).
    pub error_feedback: bool,
    /// Per-tensor widths `(pattern, bits)`.
    pub overrides: Vec<(String, u32)>,
    /// Whole-model bits per weight for the width allocator; 0 = off.
    pub target_bits: f64,
    /// Bits all weight matrices may take together (`quantization.adaptive.memory_budget_mb`
    /// when `quantization.adaptive.enabled` and a calibration text is given): the width
    /// allocator meets it, and `target_bits` too where both are set.
    pub budget_bits: Option<f64>,
    /// Calibration tokens the allocator's sensitivity runs score.
    pub sensitivity_tokens: usize,
    /// A coarser group size the allocator may also give a unit (2, 3 or 4 bits); 0 = none.
    pub coarse_group: usize,
}

impl QuantMethods {
    /// The methods of a validated configuration.
    ///
    /// Errors: `INVALID_CONFIG` for malformed `quantization.overrides`.
    pub fn from_config(c: &Config) -> Result<Self> {
        let file = c.str("quantization.calibration.file");
        Ok(QuantMethods {
            rotation: c.bool("quantization.rotation"),
            learned_grid: c.str("quantization.grid") == "learned",
            calibration_file: (!file.is_empty()).then(|| PathBuf::from(&file)),
            calibration_chunks: c.int("quantization.calibration.chunks").max(1) as usize,
            error_feedback: c.bool("quantization.calibration.error_feedback"),
            overrides: {
                // Per-role widths first, explicit overrides after (the last match wins).
                let mut o: Vec<(String, u32)> = lowbit_core::config::schema::ROLE_KEYS
                    .iter()
                    .filter_map(|(key, suffix)| {
                        let bits = c.int(key);
                        (bits > 0).then(|| (suffix.to_string(), bits as u32))
                    })
                    .collect();
                o.extend(parse_overrides(&c.str("quantization.overrides"))?);
                o
            },
            target_bits: c.float("quantization.target_bits"),
            budget_bits: (c.bool("quantization.adaptive.enabled") && !file.is_empty())
                .then(|| c.int("quantization.adaptive.memory_budget_mb") as f64 * 8e6),
            sensitivity_tokens: c.int("quantization.calibration.sensitivity_tokens").max(16)
                as usize,
            coarse_group: {
                let g = c.int("quantization.target_coarse_group");
                if g != 0 && g % 32 != 0 {
                    return Err(lowbit_core::Error::invalid_config(format!(
                        "quantization.target_coarse_group = {g}: a multiple of 32, or 0 for none"
                    )));
                }
                g as usize
            },
        })
    }

    /// The methods as a label suffix (`+rot+gptq`, `+imp`, `+mixed`); empty when plain.
    pub fn label_suffix(&self) -> String {
        let mut s = String::new();
        if self.rotation {
            s.push_str("+rot");
        }
        if self.calibration_file.is_some() {
            s.push_str(if self.error_feedback { "+gptq" } else { "+imp" });
        }
        if self.learned_grid {
            s.push_str("+grid");
        }
        if self.target_bits > 0.0 {
            s.push_str(&format!("+alloc{}", self.target_bits));
        }
        if self.coarse_group > 0 && (self.target_bits > 0.0 || self.budget_bits.is_some()) {
            s.push_str(&format!("/g{}", self.coarse_group));
        }
        if let Some(b) = self.budget_bits {
            s.push_str(&format!("+budget{}MB", (b / 8e6).round()));
        }
        if !self.overrides.is_empty() {
            s.push_str("+mixed");
        }
        s
    }

    /// Whether a load needs the quantizer (anything but the plain search at the plan's widths).
    pub fn is_plain(&self) -> bool {
        !self.rotation
            && !self.learned_grid
            && self.calibration_file.is_none()
            && self.overrides.is_empty()
            && self.target_bits <= 0.0
            && self.budget_bits.is_none()
    }
}

impl Default for RunPlan {
    /// The schema's defaults (what `lowbit config show` prints with no file, flag or variable).
    fn default() -> Self {
        let native = find_profile("native");
        native
            .and_then(|p| RunPlan::from_config(&Config::default(), p.as_ref()))
            .expect("the schema's defaults form a valid plan (tested)")
    }
}

impl RunPlan {
    /// The plan of a merged, validated configuration and the profile it was validated under
    /// (applied to the WebGPU backend unless it is `native`, which means the device's own
    /// features and limits). The one place a configuration becomes a plan.
    ///
    /// Errors: `INVALID_CONFIG` for a value the validator lets through but no plan can hold
    /// (a malformed `backend.webgpu.matvec_shape`).
    pub fn from_config(c: &Config, profile: &dyn BrowserProfile) -> Result<Self> {
        let model = c.str("model.path");
        Ok(RunPlan {
            model: if model.is_empty() {
                ModelChoice::Default
            } else {
                ModelChoice::File(PathBuf::from(model))
            },
            weights: weights_from_config(c)?,
            kv_cache: {
                let kv = KvCachePolicy {
                    bits: c.int("kv_cache.bits").clamp(2, 16) as u8,
                    group_size: c.int("kv_cache.group_size").max(32) as usize,
                    recent_window: c.int("kv_cache.recent_window").max(0) as usize,
                    sink_tokens: c.int("kv_cache.sink_tokens").max(0) as usize,
                    key_channels: c.str("kv_cache.key_grouping") == "channel",
                    rotate: c.bool("kv_cache.rotate"),
                    sliding_window: c.int("kv_cache.sliding_window").max(0) as usize,
                    max_seq_len: c.int("kv_cache.max_seq_len").max(2) as usize,
                };
                kv.dtype()?;
                kv
            },
            backend: BackendPlan {
                name: c.str("runtime.backend"),
                threads: c.int("runtime.threads").max(0) as usize,
                profile: (profile.name() != "native").then(|| profile.name().to_owned()),
                tuning: tuning_from_config(c)?,
            },
            profiling: false,
            warm_up: true,
            methods: QuantMethods::from_config(c)?,
        })
    }

    /// Merges and validates `req`, then plans. Returns the resolution too (its corrections and
    /// warnings are for the caller to report; after a plan, its `validation.corrected` is the
    /// valid configuration).
    ///
    /// Errors: `INVALID_CONFIG` for an unreadable file or a value the validator rejects.
    pub fn resolve(req: &ConfigRequest) -> Result<(Self, Resolved)> {
        let r = resolve(req)?;
        let config = r.validation.clone().into_result()?;
        let plan = RunPlan::from_config(&config, r.profile.as_ref())?;
        Ok((plan, r))
    }

    /// The plan of a TOML config file (SPEC.md §2) over the schema's defaults, with the
    /// `LOWBIT_<SECTION>_<KEY>` environment overrides, exactly as the CLI resolves it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let req = ConfigRequest {
            file: Some(path.to_path_buf()),
            ..Default::default()
        };
        Ok(RunPlan::resolve(&req)?.0)
    }

    /// The backend constructor's options.
    ///
    /// Errors: `INVALID_CONFIG` for an unknown profile.
    pub fn backend_options(&self) -> Result<BackendOptions> {
        Ok(BackendOptions {
            threads: self.backend.threads,
            profiling: self.profiling,
            profile: self
                .backend
                .profile
                .as_deref()
                .map(find_profile)
                .transpose()?,
            tuning: self.backend.tuning.clone(),
        })
    }

    /// The model file (`None` for a synthetic model); the default one must exist.
    ///
    /// Errors: `MODEL_LOADING_FAILED` naming the fetch command when the file is missing.
    pub fn model_path(&self) -> Result<Option<PathBuf>> {
        match &self.model {
            ModelChoice::Synthetic(_) => Ok(None),
            ModelChoice::File(p) => resolve_model_path(Some(p)).map(Some),
            ModelChoice::Default => resolve_model_path(None).map(Some),
        }
    }

    /// The quantizer of this plan's methods for the model at `path`: calibrates first when
    /// the plan names a calibration text (see [`crate::calibrate`]).
    ///
    /// Errors: as [`crate::calibrate::calibrate`]; `INVALID_CONFIG` for a bad override width.
    pub fn quantizer(
        &self,
        path: &Path,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<Quantizer> {
        let m = &self.methods;
        if m.is_plain() {
            return Ok(Quantizer::default());
        }
        let (group, scheme) = self
            .weights
            .group_scheme()
            .unwrap_or((32, lowbit_core::Scheme::Asymmetric));
        let overrides = m
            .overrides
            .iter()
            .map(|(pat, bits)| {
                Ok((
                    pat.clone(),
                    WeightPrecision::from_bits(*bits, group, scheme)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let calibration = match &m.calibration_file {
            Some(f) => Some(crate::calibrate::calibrate(
                path,
                f,
                m.calibration_chunks,
                self.backend.threads,
                progress,
            )?),
            None => None,
        };
        let mut q = Quantizer {
            rotation: m.rotation,
            grid: m.learned_grid,
            error_feedback: m.error_feedback,
            calibration,
            overrides,
            damp: 0.01,
        };
        if m.target_bits > 0.0 || m.budget_bits.is_some() {
            let text = m.calibration_file.as_deref().ok_or_else(|| {
                lowbit_core::Error::invalid_config(
                    "quantization.target_bits needs calibration (--calibrate FILE)",
                )
            })?;
            let mut groups = vec![group];
            if m.coarse_group > 0 && m.coarse_group != group {
                groups.push(m.coarse_group);
            }
            let (widths, _) = crate::quantize::allocate_widths(
                &q,
                path,
                text,
                m.sensitivity_tokens,
                self.backend.threads,
                &groups,
                scheme,
                m.target_bits,
                m.budget_bits,
                progress,
            )?;
            // Explicit overrides stay last, so they win.
            let mut all = widths;
            all.append(&mut q.overrides);
            q.overrides = all;
        }
        Ok(q)
    }

    /// Opens the model, builds the backend and loads the model per plan.
    /// `progress(done, total, tensor)` reports per-tensor loading/quantizing progress.
    pub fn load(
        &self,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<(Box<dyn TextModel>, Arc<dyn Backend>)> {
        let backend_opts = self.backend_options()?;
        let (model, backend) = match &self.model {
            ModelChoice::Synthetic(name) => {
                lowbit_models::synthetic::preset(name)?;
                let backend = create_backend(&self.backend.name, &backend_opts)?;
                // Random codes are made packed, not quantized: of the methods only the
                // rotation and the grid apply (so decode with and without them can be
                // compared).
                let model = lowbit_models::synthetic::load_synthetic_with(
                    name,
                    &self.weights,
                    lowbit_models::tensor_source::RandomTensors {
                        rotation: self.methods.rotation,
                        grid: self.methods.learned_grid,
                    },
                    backend.clone(),
                    progress,
                )?;
                (model, backend)
            }
            _ => {
                let path = self.model_path()?.unwrap_or_default();
                let source = ModelSource::open(&path)?;
                let mut weights = self.weights;
                let mut ctx = LoadContext::default();
                match &source {
                    // A quantized model file (`lowbit quantize`): its matrices and plan.
                    ModelSource::Gguf(g) if model_file::is_model_file(g) => {
                        let (store, info) = model_file::read_model_file(g)?;
                        weights = crate::quantize::plan_of_json(&info.plan_json)?;
                        if !self.methods.is_plain() {
                            tracing::warn!(
                                "{} is already quantized: quantization methods are ignored",
                                path.display()
                            );
                        }
                        ctx.store = store;
                    }
                    _ => ctx.quantizer = self.quantizer(&path, progress)?,
                }
                let adapter = find_adapter(&source)?;
                let backend = create_backend(&self.backend.name, &backend_opts)?;
                let model = adapter
                    .load_with(&source, &weights, backend.clone(), progress, &mut ctx)?
                    .into_text()?;
                if ctx.store.by_name && ctx.store.misses > 0 {
                    return Err(Error::model_loading(format!(
                        "{}: {} matrices are missing from lowbit.weights",
                        path.display(),
                        ctx.store.misses
                    )));
                }
                (model, backend)
            }
        };
        if self.warm_up {
            progress(1, 1, "compiling kernels");
            warm_up(model.as_ref(), backend.as_ref())?;
        }
        Ok((model, backend))
    }
}

/// The name clients use for a served model: the file's stem, else the model's own name.
pub fn model_id(path: Option<&Path>, model: &dyn TextModel) -> String {
    path.and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.config().name.clone())
}

/// What [`warm_up`] did.
#[derive(Clone, Copy, Debug)]
pub struct WarmUp {
    /// Wall time of the warm-up forward passes (kernel compilation included), ms.
    pub ms: f64,
    /// Whether the backend's pipeline cache held the kernels at start (`None`: no cache).
    pub pipeline_cache_warm: Option<bool>,
}

/// Precompiles every kernel the model runs: a two-token prefill and a one-token decode step on
/// a scratch cache (the tiled and the vector paths, attention in both modes), then saves the
/// backend's pipeline cache.
pub fn warm_up(model: &dyn TextModel, backend: &dyn Backend) -> Result<WarmUp> {
    let t = std::time::Instant::now();
    block_on(lowbit_core::adapter::compile_kernels(model))?;
    let pipeline_cache_warm = backend.save_compiled()?;
    Ok(WarmUp {
        ms: t.elapsed().as_secs_f64() * 1e3,
        pipeline_cache_warm,
    })
}

/// The models folder: `$LOWBIT_MODELS_DIR`, else `models/` under the current directory (where
/// `scripts/fetch-models.sh` puts them when run from the checkout).
pub fn models_dir() -> PathBuf {
    std::env::var_os("LOWBIT_MODELS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Resolves the model path, with a message naming the fetch command when the default is absent.
///
/// Errors: `MODEL_LOADING_FAILED`.
pub fn resolve_model_path(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(p) if p.exists() => Ok(p.to_path_buf()),
        Some(p) => Err(Error::model_loading(format!(
            "model file {} does not exist",
            p.display()
        ))),
        None => {
            let p = models_dir().join(DEFAULT_MODEL_FILE);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::new(
                    ErrorCode::ModelLoadingFailed,
                    format!(
                        "the default model {} is missing; fetch it with `{FETCH_COMMAND}` \
                         (or pass --model PATH, or set LOWBIT_MODELS_DIR)",
                        p.display()
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_defaults_plan_int4_g32_asymmetric() {
        let p = RunPlan::default();
        assert_eq!(p.weights.method(), "int4");
        assert_eq!(p.weights.label(), "int4-g32-asym");
        assert_eq!(p.model, ModelChoice::Default);
        assert_eq!(p.backend.name, "auto");
        assert_eq!(p.kv_cache.bits, 16);
        assert_eq!(p.backend.tuning, BackendTuning::default());
    }

    #[test]
    fn mixed_keeps_each_role() {
        let mut c = Config::default();
        let src = lowbit_core::config::Source::Default;
        c.set("quantization.method", "mixed".into(), src.clone());
        c.set("quantization.layers.attention", 4.into(), src.clone());
        c.set("quantization.layers.feedforward", 2.into(), src);
        let w = weights_from_config(&c).unwrap();
        assert_eq!(w.attention.bits(), 4);
        assert_eq!(w.feedforward.bits(), 2);
        assert_eq!((w.embedding.bits(), w.lm_head.bits()), (8, 8));
        assert_eq!(w.method(), "mixed");
        assert_eq!(w.label(), "attn int4-g32-asym, ffn int2-g32-asym");
    }

    #[test]
    fn role_keys_become_overrides_before_explicit_ones() {
        let mut c = Config::default();
        let src = lowbit_core::config::Source::Default;
        c.set("quantization.layers.attn_v", 8.into(), src.clone());
        c.set("quantization.layers.ffn_down", 3.into(), src.clone());
        c.set(
            "quantization.overrides",
            "blk.0.ffn_down.weight=8".into(),
            src,
        );
        let m = QuantMethods::from_config(&c).unwrap();
        assert_eq!(
            m.overrides,
            vec![
                ("attn_v.weight".to_string(), 8),
                ("ffn_down.weight".to_string(), 3),
                ("blk.0.ffn_down.weight".to_string(), 8),
            ]
        );
        assert_eq!(m.label_suffix(), "+mixed");
        assert!(!m.is_plain());
    }

    #[test]
    fn adaptive_budget_drives_the_allocator_only_with_calibration() {
        let src = lowbit_core::config::Source::Default;
        let mut c = Config::default();
        c.set("quantization.adaptive.enabled", true.into(), src.clone());
        c.set(
            "quantization.adaptive.memory_budget_mb",
            60.into(),
            src.clone(),
        );
        let m = QuantMethods::from_config(&c).unwrap();
        assert_eq!(
            m.budget_bits, None,
            "without calibration the validator's uniform width rules"
        );
        assert!(m.is_plain());
        c.set("quantization.calibration.file", "calib.txt".into(), src);
        let m = QuantMethods::from_config(&c).unwrap();
        assert_eq!(m.budget_bits, Some(60.0 * 8e6));
        assert_eq!(m.label_suffix(), "+gptq+budget60MB");
        assert!(!m.is_plain());
    }

    #[test]
    fn coarse_group_is_a_multiple_of_32_and_labels_the_allocation() {
        let src = lowbit_core::config::Source::Default;
        let mut c = Config::default();
        c.set("quantization.target_coarse_group", 100.into(), src.clone());
        let e = QuantMethods::from_config(&c).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.message.contains("multiple of 32"), "{e}");
        c.set("quantization.target_coarse_group", 128.into(), src.clone());
        let m = QuantMethods::from_config(&c).unwrap();
        assert_eq!(m.coarse_group, 128);
        assert_eq!(
            m.label_suffix(),
            "",
            "no allocation: the key changes nothing"
        );
        c.set(
            "quantization.calibration.file",
            "calib.txt".into(),
            src.clone(),
        );
        c.set("quantization.target_bits", 4.5.into(), src);
        let m = QuantMethods::from_config(&c).unwrap();
        assert_eq!(m.label_suffix(), "+gptq+alloc4.5/g128");
    }

    #[test]
    fn malformed_matvec_shape_is_invalid_config() {
        let mut c = Config::default();
        c.set(
            "backend.webgpu.matvec_shape",
            "12x".into(),
            lowbit_core::config::Source::Default,
        );
        let e = tuning_from_config(&c).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
    }
}
