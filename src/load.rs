//! Loading a text model from a path with a precision plan, on a chosen backend.

use lowbit_core::adapter::{Logits, ModelSource, QuantPlan, TextModel, WeightPrecision};
use lowbit_core::quant::{QuantSpec, Scheme};
use lowbit_core::registry::{create_backend, find_adapter, BackendOptions};
use lowbit_core::{Backend, Error, ErrorCode, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The command that fetches the default model.
pub const FETCH_COMMAND: &str = "scripts/fetch-models.sh smollm2";

/// Weight precision requested by the user (`--quant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMethod {
    /// Dense f32 (the file's weights dequantized).
    Fp32,
    /// Dense f16.
    Fp16,
    /// 8-bit.
    Int8,
    /// 4-bit.
    Int4,
    /// 3-bit.
    Int3,
    /// 2-bit.
    Int2,
}

impl QuantMethod {
    /// Parses `fp32|fp16|int8|int4|int3|int2`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fp32" | "f32" => QuantMethod::Fp32,
            "fp16" | "f16" => QuantMethod::Fp16,
            "int8" | "q8" => QuantMethod::Int8,
            "int4" | "q4" => QuantMethod::Int4,
            "int3" | "q3" => QuantMethod::Int3,
            "int2" | "q2" => QuantMethod::Int2,
            _ => {
                return Err(Error::invalid_config(format!(
                    "unknown quantization `{s}`; expected fp32, fp16, int8, int4, int3 or int2"
                )))
            }
        })
    }

    /// The config name: `fp32`, `fp16`, `int8`, `int4`, `int3`, `int2`.
    pub fn name(self) -> &'static str {
        match self {
            QuantMethod::Fp32 => "fp32",
            QuantMethod::Fp16 => "fp16",
            QuantMethod::Int8 => "int8",
            QuantMethod::Int4 => "int4",
            QuantMethod::Int3 => "int3",
            QuantMethod::Int2 => "int2",
        }
    }

    /// Bits of the integer formats, `None` for dense ones.
    pub fn bits(self) -> Option<u8> {
        match self {
            QuantMethod::Fp32 | QuantMethod::Fp16 => None,
            QuantMethod::Int8 => Some(8),
            QuantMethod::Int4 => Some(4),
            QuantMethod::Int3 => Some(3),
            QuantMethod::Int2 => Some(2),
        }
    }

    /// The plan: attention and feed-forward matrices at the requested width; the embedding
    /// table and output projection at 8 bits when the request is below 8 (the output
    /// projection is the most sensitive matrix — llama.cpp likewise keeps it at 6–8 bits).
    pub fn plan(self, group_size: usize, scheme: Scheme) -> Result<QuantPlan> {
        Ok(match self.bits() {
            None if self == QuantMethod::Fp32 => QuantPlan::uniform(WeightPrecision::F32),
            None => QuantPlan::uniform(WeightPrecision::F16),
            Some(bits) => {
                let layers = WeightPrecision::Quant(QuantSpec::new(bits, group_size, scheme)?);
                let edge = WeightPrecision::Quant(QuantSpec::new(8, group_size, scheme)?);
                QuantPlan {
                    layers,
                    embedding: edge,
                    lm_head: edge,
                }
            }
        })
    }
}

/// What to load and where.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Model file; `None` = the default model in the models folder.
    pub model: Option<PathBuf>,
    /// Weight precision.
    pub quant: QuantMethod,
    /// Group size of integer formats.
    pub group_size: usize,
    /// Symmetric or asymmetric integer formats.
    pub scheme: Scheme,
    /// `cpu`, `webgpu` or `auto`.
    pub backend: String,
    /// CPU worker threads (0 = all cores).
    pub threads: usize,
    /// Build a synthetic model of this published shape with random weights instead of
    /// reading `model` (speed benchmarks; see `lowbit_models::synthetic::PRESETS`).
    pub synthetic: Option<String>,
    /// Gather per-kernel device timings (benchmarks).
    pub profiling: bool,
    /// Profile applied to the WebGPU backend (`chrome`, `safari`, ... or a plugin's);
    /// `None` = the device's own features and limits.
    pub profile: Option<String>,
    /// Per-role precisions replacing `quant`'s plan (`quantization.method = "mixed"`).
    pub plan: Option<QuantPlan>,
    /// Run [`warm_up`] at the end of loading, so every kernel is compiled (and the backend's
    /// pipeline cache saved) before the first request instead of during it.
    pub warm_up: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            model: None,
            quant: QuantMethod::Int4,
            group_size: 32,
            scheme: Scheme::Symmetric,
            backend: "auto".into(),
            threads: 0,
            synthetic: None,
            profiling: false,
            profile: None,
            plan: None,
            warm_up: true,
        }
    }
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
    let tok = model.tokenizer().bos_id().unwrap_or(0);
    let mut cache = model.new_cache(4)?;
    model.forward(&mut cache, &[tok, tok], Logits::Last)?;
    model.forward(&mut cache, &[tok], Logits::Last)?;
    drop(cache);
    let pipeline_cache_warm = backend.save_compiled()?;
    Ok(WarmUp {
        ms: t.elapsed().as_secs_f64() * 1e3,
        pipeline_cache_warm,
    })
}

/// The models folder: `$LOWBIT_MODELS_DIR`, else `models/` under the current directory.
pub fn models_dir() -> PathBuf {
    std::env::var_os("LOWBIT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Resolves the model path, with a message naming the fetch command when the default is absent.
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
                         (or pass --model PATH)",
                        p.display()
                    ),
                ))
            }
        }
    }
}

/// Opens the model file, builds the backend and loads the model per plan.
/// `progress(done, total, tensor)` reports per-tensor loading/quantizing progress.
pub fn load_text_model(
    opts: &LoadOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Box<dyn TextModel>> {
    Ok(load_text_model_on_backend(opts, progress)?.0)
}

/// Like [`load_text_model`], also returning the backend (for its kernel timings).
pub fn load_text_model_on_backend(
    opts: &LoadOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Box<dyn TextModel>, Arc<dyn Backend>)> {
    let plan = match opts.plan {
        Some(p) => p,
        None => opts.quant.plan(opts.group_size, opts.scheme)?,
    };
    let backend_opts = BackendOptions {
        threads: opts.threads,
        profiling: opts.profiling,
        profile: opts
            .profile
            .as_deref()
            .map(lowbit_core::registry::find_profile)
            .transpose()?,
    };
    if let Some(name) = &opts.synthetic {
        lowbit_models::synthetic::preset(name)?;
        let backend = create_backend(&opts.backend, &backend_opts)?;
        let model =
            lowbit_models::synthetic::load_synthetic(name, &plan, backend.clone(), progress)?;
        if opts.warm_up {
            warm_up(model.as_ref(), backend.as_ref())?;
        }
        return Ok((model, backend));
    }
    let path = resolve_model_path(opts.model.as_deref())?;
    let source = ModelSource::open(&path)?;
    let adapter = find_adapter(&source)?;
    let backend = create_backend(&opts.backend, &backend_opts)?;
    let model = adapter.load_text(&source, &plan, backend.clone(), progress)?;
    if opts.warm_up {
        progress(1, 1, "compiling kernels");
        warm_up(model.as_ref(), backend.as_ref())?;
    }
    Ok((model, backend))
}
