//! One registry for built-in backends, model adapters and profiles. Built-ins register with
//! `inventory::submit!` in their own crates; plugins loaded at run time add theirs with
//! [`register_adapter`] and [`register_profile`]. Lookups go through the functions here.

use crate::adapter::{ModelAdapter, ModelSource};
use crate::backend::Backend;
use crate::error::{Error, ErrorCode, Result};
use crate::profile::{BrowserProfile, ProfileData, ProfileRegistration};
use std::sync::{Arc, RwLock};

/// Options passed to backend constructors.
#[derive(Clone, Default)]
pub struct BackendOptions {
    /// Worker threads for CPU work; 0 = all cores.
    pub threads: usize,
    /// Gather per-kernel device timings (GPU timestamp queries) for benchmarks.
    pub profiling: bool,
    /// The profile whose constraints and tuning a GPU backend applies (`None`: the device's).
    pub profile: Option<Arc<dyn BrowserProfile>>,
    /// Kernel switches of the `[backend.webgpu]` and `[backend.cpu]` config sections.
    pub tuning: BackendTuning,
}

impl std::fmt::Debug for BackendOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendOptions")
            .field("threads", &self.threads)
            .field("profiling", &self.profiling)
            .field(
                "profile",
                &self.profile.as_ref().map(|p| p.name().to_owned()),
            )
            .field("tuning", &self.tuning)
            .finish()
    }
}

/// The backends' kernel switches, typed (config keys `backend.webgpu.*`, `backend.cpu.*`,
/// `runtime.f16`, `runtime.subgroups`). The defaults are the config schema's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendTuning {
    /// The WebGPU backend's.
    pub webgpu: WebGpuTuning,
    /// The CPU backend's.
    pub cpu: CpuTuning,
}

/// Switches of the WebGPU backend (`[backend.webgpu]`).
#[derive(Clone, Debug, PartialEq)]
pub struct WebGpuTuning {
    /// Software adapters (lavapipe) may be chosen (`allow_software_adapter`).
    pub allow_software_adapter: bool,
    /// The wide decode matvec (several blocks per lane); off: the narrow one (`wide_matvec`).
    pub wide_matvec: bool,
    /// Decode RMSNorm fused into a narrow matvec (`fused_norm`).
    pub fused_norm: bool,
    /// Prefill through the integer tiled kernel where there are no cooperative matrices
    /// (`int_prefill`).
    pub int_prefill: bool,
    /// Prefill on cooperative matrices (tensor cores): `None` where the adapter has them,
    /// `Some(true)` required, `Some(false)` never (`cooperative_matrix = auto | on | off`).
    pub cooperative_matrix: Option<bool>,
    /// A forced decode matvec shape (`matvec_shape = "LANESxROWS[xUNROLL]"`; `None`: the
    /// tuning's).
    pub matvec_shape: Option<MatvecShape>,
    /// naga's runtime bounds checks in every kernel, as browsers do (`checked_shaders`).
    pub checked_shaders: bool,
    /// With `checked_shaders`: naga's loop-bounding counters as well, as Firefox's wgpu
    /// inserts (Chrome's Tint clamps indices only) (`loop_bounding`).
    pub loop_bounding: bool,
    /// Split a step into submissions of at most this many dispatches; `None`: one submission
    /// (`dispatches_per_submit`, 0 = none).
    pub dispatches_per_submit: Option<usize>,
    /// f16 kernels: `None` where the device and profile allow (`runtime.f16`).
    pub f16: Option<bool>,
    /// Subgroup kernels: `None` where the device and profile allow (`runtime.subgroups`).
    pub subgroups: Option<bool>,
}

impl Default for WebGpuTuning {
    fn default() -> Self {
        WebGpuTuning {
            allow_software_adapter: false,
            wide_matvec: true,
            fused_norm: true,
            int_prefill: false,
            cooperative_matrix: None,
            matvec_shape: None,
            checked_shaders: false,
            loop_bounding: false,
            dispatches_per_submit: None,
            f16: None,
            subgroups: None,
        }
    }
}

/// Switches of the CPU backend (`[backend.cpu]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuTuning {
    /// Reference mode: quantized matmuls on f32 activations instead of 8-bit activation
    /// blocks (slow; isolates the weight format's own error) (`exact_activations`).
    pub exact_activations: bool,
    /// The kernels' instruction set: `None` the best this machine has, else `scalar`, `avx2`
    /// or `simd128` (`kernels`; comparing builds for different machines runs both on the
    /// portable kernels).
    pub kernels: Option<String>,
}

/// A decode matvec shape forced by configuration (`backend.webgpu.matvec_shape`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatvecShape {
    /// Lanes per workgroup.
    pub lanes: u32,
    /// Output rows per workgroup.
    pub rows: u32,
    /// Wide kernel: blocks each lane requests per step (`None`: the tuning's choice).
    pub unroll: Option<u32>,
}

impl MatvecShape {
    /// `LANESxROWS` or `LANESxROWSxUNROLL` (UNROLL 1, 2 or 4); `None` when malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('x').map(|p| p.trim().parse::<u32>().ok());
        let lanes = it.next()??;
        let rows = it.next()??;
        let unroll = match it.next() {
            Some(u) => Some(u.filter(|u| [1, 2, 4].contains(u))?),
            None => None,
        };
        if it.next().is_some() || lanes == 0 || rows == 0 {
            return None;
        }
        Some(MatvecShape {
            lanes,
            rows,
            unroll,
        })
    }
}

/// A backend constructor registered with `inventory`.
pub struct BackendRegistration {
    /// `cpu`, `webgpu`, ...
    pub name: &'static str,
    /// Higher is preferred by `auto`.
    pub priority: u32,
    /// Builds the backend, or says why it is unavailable.
    pub create: fn(&BackendOptions) -> Result<Arc<dyn Backend>>,
}
inventory::collect!(BackendRegistration);

/// A model adapter registered with `inventory`.
pub struct AdapterRegistration(pub &'static dyn ModelAdapter);
inventory::collect!(AdapterRegistration);

/// Names of the registered backends, most preferred first.
pub fn backend_names() -> Vec<&'static str> {
    let mut v: Vec<_> = inventory::iter::<BackendRegistration>.into_iter().collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.priority));
    v.into_iter().map(|r| r.name).collect()
}

/// Creates the backend `name`, or with `auto` the most preferred one that is available.
pub fn create_backend(name: &str, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    let mut regs: Vec<_> = inventory::iter::<BackendRegistration>.into_iter().collect();
    regs.sort_by_key(|r| std::cmp::Reverse(r.priority));
    if name == "auto" {
        let mut last = None;
        for r in regs {
            match (r.create)(opts) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| {
            Error::new(ErrorCode::WebgpuNotSupported, "no backend is registered")
        }));
    }
    match regs.iter().find(|r| r.name == name) {
        Some(r) => (r.create)(opts),
        None => Err(Error::invalid_config(format!(
            "unknown backend `{name}`; available: auto, {}",
            backend_names().join(", ")
        ))),
    }
}

/// The registered adapter that supports `source`.
pub fn find_adapter(source: &ModelSource) -> Result<&'static dyn ModelAdapter> {
    for r in inventory::iter::<AdapterRegistration> {
        if r.0.supports(source) {
            return Ok(r.0);
        }
    }
    for a in dynamic().adapters.iter() {
        if a.supports(source) {
            return Ok(*a);
        }
    }
    Err(Error::unsupported(format!(
        "no model adapter supports architecture `{}`",
        source.architecture().unwrap_or_else(|| "unknown".into())
    )))
}

/// Adapters and profiles registered at run time (by plugins).
struct Dynamic {
    adapters: Vec<&'static dyn ModelAdapter>,
    profiles: Vec<Arc<dyn BrowserProfile>>,
}

static DYNAMIC: RwLock<Dynamic> = RwLock::new(Dynamic {
    adapters: Vec::new(),
    profiles: Vec::new(),
});

fn dynamic() -> std::sync::RwLockReadGuard<'static, Dynamic> {
    DYNAMIC.read().unwrap_or_else(|p| p.into_inner())
}

/// Names of every adapter: built-in first, then plugins'.
pub fn adapter_names() -> Vec<String> {
    let mut v: Vec<String> = inventory::iter::<AdapterRegistration>
        .into_iter()
        .map(|r| r.0.name().to_owned())
        .collect();
    v.extend(dynamic().adapters.iter().map(|a| a.name().to_owned()));
    v
}

/// Registers an adapter at run time. Its name must not clash with any registered adapter
/// (`INVALID_CONFIG` otherwise). The adapter lives for the rest of the process.
pub fn register_adapter(adapter: Box<dyn ModelAdapter>) -> Result<()> {
    let name = adapter.name();
    if adapter_names().iter().any(|n| n == name) {
        return Err(Error::invalid_config(format!(
            "a model adapter named `{name}` is already registered; plugin adapters need unique names"
        )));
    }
    let leaked: &'static dyn ModelAdapter = Box::leak(adapter);
    DYNAMIC
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .adapters
        .push(leaked);
    Ok(())
}

/// Names of every profile: built-in (sorted), then plugins'.
pub fn profile_names() -> Vec<String> {
    let mut v: Vec<String> = inventory::iter::<ProfileRegistration>
        .into_iter()
        .map(|r| r.name.to_owned())
        .collect();
    v.sort();
    v.extend(dynamic().profiles.iter().map(|p| p.name().to_owned()));
    v
}

/// Registers a profile at run time; `INVALID_CONFIG` if its name is taken (or is `auto`).
pub fn register_profile(profile: Arc<dyn BrowserProfile>) -> Result<()> {
    let name = profile.name().to_owned();
    if name == "auto" || profile_names().contains(&name) {
        return Err(Error::invalid_config(format!(
            "a profile named `{name}` is already registered; plugin profiles need unique names"
        )));
    }
    DYNAMIC
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .profiles
        .push(profile);
    Ok(())
}

/// The profile `name` (built-in or a plugin's); `INVALID_CONFIG` naming the nearest one if
/// unknown.
pub fn find_profile(name: &str) -> Result<Arc<dyn BrowserProfile>> {
    if let Some(r) = inventory::iter::<ProfileRegistration>
        .into_iter()
        .find(|r| r.name == name)
    {
        return Ok(Arc::new(ProfileData::from_toml(r.toml)?));
    }
    if let Some(p) = dynamic().profiles.iter().find(|p| p.name() == name) {
        return Ok(p.clone());
    }
    let names = profile_names();
    let hint = crate::config::schema::nearest(name, names.iter().map(String::as_str))
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    Err(Error::invalid_config(format!(
        "unknown profile `{name}`; {hint}known: auto, {}",
        names.join(", ")
    )))
}
