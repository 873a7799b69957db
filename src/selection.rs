//! Selection: capability detection (WebGPU adapters, CPU SIMD), the `auto` choices of backend
//! and profile, and the merge of command defaults, profile, config file, environment and CLI
//! flags into one validated configuration, which [`crate::plan::RunPlan::from_config`] turns
//! into the run's plan.

use lowbit_core::adapter::ModelSource;
use lowbit_core::config::{
    resolve_layers, BackendAvailability, Capabilities, Config, Layer, ModelFacts, Resolution,
    Source, Validation,
};
use lowbit_core::profile::BrowserProfile;
use lowbit_core::registry::find_profile;
use lowbit_core::{Backend, Result};
use lowbit_wgpu::AdapterReport;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The host CPU as the CPU backend sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuReport {
    /// Model name and SIMD level.
    pub device: String,
    /// Instruction set the kernels use (`avx2`, `simd128`, `scalar`).
    pub isa: String,
    /// SIMD features the CPU reports.
    pub simd: Vec<String>,
    /// Logical cores.
    pub cores: usize,
}

/// A choice `auto` made and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Choice {
    /// What was chosen.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// What the machine offers and what `auto` picks on it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Detection {
    /// Every WebGPU adapter.
    pub adapters: Vec<AdapterReport>,
    /// The CPU.
    pub cpu: CpuReport,
    /// Facts for the validator.
    pub capabilities: Capabilities,
    /// `runtime.backend = "auto"` resolves to this.
    pub backend: Choice,
    /// `runtime.profile = "auto"` resolves to this.
    pub profile: Choice,
}

fn simd_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut v: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    v.push($f.to_string());
                }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    v.push("neon".to_string());
    v
}

/// Model facts from a GGUF header (no weights are read).
pub fn model_facts(path: &Path) -> Result<ModelFacts> {
    let source = ModelSource::open(path)?;
    let ModelSource::Gguf(g) = &source else {
        return Err(lowbit_core::Error::unsupported(format!(
            "{}: model facts are read from GGUF headers, not {}",
            path.display(),
            source.format_name()
        )));
    };
    let arch = g
        .get_str("general.architecture")
        .unwrap_or("llama")
        .to_owned();
    let get = |k: &str| g.get_u64(&format!("{arch}.{k}")).unwrap_or(0) as usize;
    Ok(ModelFacts {
        n_params: g.tensors().iter().map(|t| t.n_elements()).sum(),
        context_length: get("context_length"),
        widths: [get("embedding_length"), get("feed_forward_length")]
            .into_iter()
            .filter(|w| *w > 0)
            .collect(),
    })
}

/// Probes adapters (once per process: each configuration resolved, e.g. one per precision of a
/// `bench` run, reuses the list) and the CPU; with `model`, reads the model's header too.
/// `allow_software`: a software adapter counts as usable (`backend.webgpu.allow_software_adapter`).
pub fn detect(model: Option<&Path>, allow_software: bool) -> Detection {
    static ADAPTERS: std::sync::OnceLock<Vec<AdapterReport>> = std::sync::OnceLock::new();
    let adapters = ADAPTERS.get_or_init(lowbit_wgpu::probe_adapters).clone();
    let cpu = match lowbit_cpu::CpuBackend::new(1) {
        Ok(b) => b.info().device,
        Err(e) => e.to_string(),
    };
    let cpu = CpuReport {
        device: cpu,
        isa: lowbit_cpu::Isa::detect().name().to_string(),
        simd: simd_features(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let software_ok = allow_software;
    let usable: Vec<&AdapterReport> = adapters
        .iter()
        .filter(|a| a.compute && (!a.software || software_ok))
        .collect();
    // Same ranking as the backend: discrete > integrated > virtual > other > software.
    let rank = |a: &AdapterReport| match a.device_type.as_str() {
        "DiscreteGpu" => 4,
        "IntegratedGpu" => 3,
        "VirtualGpu" => 2,
        "Cpu" => 0,
        _ => 1,
    };
    let best = usable.iter().max_by_key(|a| rank(a)).copied();
    let software: Vec<&str> = adapters
        .iter()
        .filter(|a| a.software)
        .map(|a| a.name.as_str())
        .collect();
    let webgpu = match best {
        Some(a) => BackendAvailability {
            name: "webgpu".into(),
            available: true,
            detail: format!("{} ({}, {})", a.name, a.backend, a.device_type),
        },
        None if !software.is_empty() => BackendAvailability {
            name: "webgpu".into(),
            available: false,
            detail: format!(
                "only software adapters ({}); set backend.webgpu.allow_software_adapter = true to use them",
                software.join(", ")
            ),
        },
        None => BackendAvailability {
            name: "webgpu".into(),
            available: false,
            detail: "no WebGPU adapter with compute shaders".into(),
        },
    };
    let backend = if webgpu.available {
        Choice {
            name: "webgpu".into(),
            reason: format!("a usable WebGPU adapter: {}", webgpu.detail),
        }
    } else {
        Choice {
            name: "cpu".into(),
            reason: format!(
                "webgpu unavailable ({}); the native {} CPU backend is faster than a software rasteriser",
                webgpu.detail, cpu.isa
            ),
        }
    };
    let profile = Choice {
        name: "native".into(),
        reason: if backend.name == "webgpu" {
            "running natively (not in a browser): the adapter's own features and limits".into()
        } else {
            "running natively; the profile only tunes the WebGPU backend, which is not used".into()
        },
    };
    let capabilities = Capabilities {
        backends: vec![
            webgpu,
            BackendAvailability {
                name: "cpu".into(),
                available: true,
                detail: format!("{} ({})", cpu.device, cpu.isa),
            },
        ],
        gpu: best.map(|a| a.capabilities.clone()),
        model: model.and_then(|p| model_facts(p).ok()),
    };
    Detection {
        adapters,
        cpu,
        capabilities,
        backend,
        profile,
    }
}

/// Paths of plugins loaded so far (loading twice would clash with itself).
static LOADED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Loads each plugin once per process.
pub fn load_plugins(paths: &[PathBuf]) -> Result<Vec<lowbit_core::plugin::LoadedPlugin>> {
    let mut out = Vec::new();
    for p in paths {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.contains(&key) {
            continue;
        }
        out.push(lowbit_core::plugin::load_plugin(p)?);
        loaded.insert(key);
    }
    Ok(out)
}

/// The inputs of a configuration, lowest precedence first: command defaults, (profile),
/// file, environment, flags.
#[derive(Clone, Debug)]
pub struct ConfigRequest {
    /// The running command's defaults (below the profile).
    pub command_defaults: Layer,
    /// A config file.
    pub file: Option<PathBuf>,
    /// Whether to read `LOWBIT_<SECTION>_<KEY>` variables.
    pub env: bool,
    /// Flags the user passed.
    pub cli: Layer,
}

impl Default for ConfigRequest {
    fn default() -> Self {
        ConfigRequest {
            command_defaults: Layer::new(Source::CommandDefault),
            file: None,
            env: true,
            cli: Layer::new(Source::Cli(String::new())),
        }
    }
}

/// A merged, validated configuration.
pub struct Resolved {
    /// The merged configuration before validation (what `config show` prints).
    pub merged: Config,
    /// The profile applied.
    pub profile: Arc<dyn BrowserProfile>,
    /// Why that profile.
    pub profile_reason: String,
    /// The validator's answer.
    pub validation: Validation,
    /// Machine facts used.
    pub detection: Detection,
    /// Environment variables that look like overrides but name no key (with a suggestion).
    pub unknown_env: Vec<(String, Option<String>)>,
}

/// Merges and validates. Plugins named by the config are loaded first (they may provide the
/// profile). Errors only for an unreadable config file or a failing plugin; everything else is
/// in [`Resolved::validation`].
pub fn resolve(req: &ConfigRequest) -> Result<Resolved> {
    let file = req.file.as_deref().map(Layer::from_file).transpose()?;
    let env = if req.env {
        Layer::from_env(std::env::vars())
    } else {
        Layer::new(Source::Env(String::new()))
    };
    let unknown_env = if req.env {
        Layer::unknown_env(std::env::vars())
    } else {
        Vec::new()
    };
    let mut layers: Vec<&Layer> = vec![&req.command_defaults];
    layers.extend(file.as_ref());
    layers.push(&env);
    layers.push(&req.cli);
    let first = Config::from_layers(layers.iter().copied());
    let plugins: Vec<PathBuf> = first
        .strings("plugins")
        .into_iter()
        .map(PathBuf::from)
        .collect();
    load_plugins(
        &plugins
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect::<Vec<_>>(),
    )?;
    let model = match first.str("model.path") {
        p if p.is_empty() => crate::plan::resolve_model_path(None).ok(),
        p => Some(PathBuf::from(p)),
    };
    let detection = detect(
        model.as_deref(),
        first.bool("backend.webgpu.allow_software_adapter"),
    );
    let mut user: Vec<&Layer> = file.iter().collect();
    user.push(&env);
    user.push(&req.cli);
    let Resolution {
        merged,
        profile,
        profile_reason,
        validation,
    } = resolve_layers(
        &req.command_defaults,
        &user,
        &detection.profile.name,
        &detection.profile.reason,
        &detection.capabilities,
    )?;
    Ok(Resolved {
        merged,
        profile,
        profile_reason,
        validation,
        detection,
        unknown_env,
    })
}

/// Shorthand for a backend by name with a profile applied (tests, tools).
pub fn backend_for_profile(name: &str, profile: &str) -> Result<Arc<dyn Backend>> {
    lowbit_core::registry::create_backend(
        name,
        &lowbit_core::registry::BackendOptions {
            profile: Some(find_profile(profile)?),
            ..Default::default()
        },
    )
}
