//! Adapter choice, device creation and the translation of wgpu errors into typed errors.

use lowbit_core::profile::{BrowserProfile, KernelWorkgroups};
pub use lowbit_core::registry::MatvecShape;
use lowbit_core::registry::WebGpuTuning;
use lowbit_core::{Error, ErrorCode, Result};
use std::sync::{Arc, Mutex};

/// How to pick the adapter and which kernel paths to allow.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Accept a CPU (software) adapter such as Mesa's lavapipe. `auto` selection only does so
    /// with `backend.webgpu.allow_software_adapter = true`, so a software rasteriser never wins over the
    /// native CPU backend.
    pub allow_software: bool,
    /// Prefer a software adapter over hardware ones (tests on lavapipe).
    pub prefer_software: bool,
    /// f16 arithmetic kernels: `None` uses them where the adapter has `SHADER_F16`;
    /// `Some(true)` requires them (error if unsupported); `Some(false)` keeps f32.
    pub f16: Option<bool>,
    /// Subgroup reductions: `None` where the adapter has `SUBGROUP`; `Some` as for `f16`.
    pub subgroups: Option<bool>,
    /// Caps the bytes bound per storage binding below the device limit, so weights are split
    /// into more row pieces (tests use it to exercise splitting on small matrices).
    pub max_binding_bytes: Option<u64>,
    /// Records GPU timestamps around every kernel (needs `TIMESTAMP_QUERY`).
    pub profiling: bool,
    /// Workgroup sizes per kernel family (from a profile); the tuning fits them to the device.
    /// `None`: the tuning's own defaults.
    pub workgroups: Option<KernelWorkgroups>,
    /// Use the wide matvec (whole 32-value blocks per lane, integer dot products against 8-bit
    /// activations) on long rows of 2-, 3-, 4- and 8-bit codes. On the H100 it beat the narrow kernel (8B int4 decode 89 vs 82 tok/s,
    /// 1B 257 vs 208). Config key `backend.webgpu.wide_matvec`.
    pub wide_matvec: bool,
    /// Fuse a decode RMSNorm into the narrow matvec that follows it where that pays (few
    /// workgroup-columns, see `Tuning::fuse_norm_into_narrow`: on the H100 SmolLM2's q|k|v and
    /// gate|up): the matvec normalises the activation vector as it loads it, saving a
    /// dispatch. Otherwise the norm writes f32 rows for it; a wide matvec always takes 8-bit
    /// activation blocks from the norm. Config key
    /// `backend.webgpu.fused_norm`.
    pub fused_norm: bool,
    /// Overrides the decode matvec's shape that the profile and tuning pick: lanes (a power of
    /// two; the wide kernel then runs exactly this many), rows per workgroup (1..=16) and, when
    /// given, the wide kernel's blocks per lane and step (1, 2 or 4). Config key
    /// `backend.webgpu.matvec_shape = "LANESxROWS[xUNROLL]"` (e.g. `128x8`, `64x4x2`), for sweeps.
    pub matvec_shape: Option<MatvecShape>,
    /// Folder of the on-disk pipeline cache (wgpu `PipelineCache`, Vulkan only): compiled
    /// kernels are loaded from `<dir>/<adapter key>.bin` at start and written back after the
    /// load-time warm-up, so a second start compiles nothing in the driver. `None`: no cache.
    /// `from_tuning` uses `LOWBIT_PIPELINE_CACHE_DIR`, else `$XDG_CACHE_HOME/lowbit/pipelines` or
    /// `~/.cache/lowbit/pipelines`; `LOWBIT_PIPELINE_CACHE=0` turns it off.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
    /// Compile kernels with naga's runtime bounds checks (index clamping, guarded integer
    /// division), as a browser's WebGPU always does. Off by default: the kernels are lowbit's
    /// own, tested on every path, and buffer accesses stay protected by the driver's robust
    /// buffer access. Config key `backend.webgpu.checked_shaders`.
    pub checked_shaders: bool,
    /// With [`WgpuOptions::checked_shaders`]: naga's loop-bounding counters as well (every loop
    /// gets a 64-bit iteration counter and an exit), as Firefox's wgpu compiles WGSL; Chrome's
    /// Tint adds no such counters. Config key `backend.webgpu.loop_bounding`.
    pub loop_bounding: bool,
    /// Split a step's work into submissions of at most this many dispatches, so the GPU starts
    /// on the first layers while the host still records (and wgpu finishes) the rest. `None`
    /// (the default): one submission per step. Config key
    /// `backend.webgpu.dispatches_per_submit`.
    pub dispatches_per_submit: Option<usize>,
    /// Prefill (matmuls of several token rows) on 2-, 3-, 4- and 8-bit codes through the
    /// integer tiled kernel: activations quantized to 8 bits per 32-value block, as decode
    /// does, and integer dot products of four codes at a time, instead of the f32 kernel on
    /// dequantized tiles, where prefill does not run on cooperative matrices. On the H100 it
    /// beat the f32 kernel by 9–70% (pp512); it moves perplexity as 8-bit activations do.
    /// Config key `backend.webgpu.int_prefill`.
    pub int_prefill: bool,
    /// Prefill on the GPU's matrix units (tensor cores) through cooperative matrices
    /// (`wgpu_cooperative_matrix`, Vulkan `VK_KHR_cooperative_matrix`): f16 tiles of dequantized
    /// weights and activations, 16 × 16 × 16 products with f32 sums. `None` uses them where the
    /// adapter offers 16 × 16 × 16 f16 → f32 products to 32-lane subgroups and has f16 and
    /// subgroup kernels on; `Some(true)` requires them (error otherwise); `Some(false)` keeps the
    /// other tiled kernels. Config key `backend.webgpu.cooperative_matrix`. Native
    /// only: no browser's WebGPU has cooperative matrices yet.
    pub coop_matrix: Option<bool>,
}

/// The default pipeline cache folder (see [`WgpuOptions::pipeline_cache_dir`]).
pub fn default_pipeline_cache_dir() -> Option<std::path::PathBuf> {
    if std::env::var("LOWBIT_PIPELINE_CACHE").is_ok_and(|v| v == "0" || v == "off") {
        return None;
    }
    if let Some(d) = std::env::var_os("LOWBIT_PIPELINE_CACHE_DIR") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("lowbit").join("pipelines"))
}

impl WgpuOptions {
    /// Options from the configuration's typed switches (`[backend.webgpu]`, `runtime.f16`,
    /// `runtime.subgroups`) and the pipeline cache folder of the environment
    /// ([`default_pipeline_cache_dir`]).
    pub fn from_tuning(t: &WebGpuTuning) -> Self {
        WgpuOptions {
            allow_software: t.allow_software_adapter,
            f16: t.f16,
            subgroups: t.subgroups,
            wide_matvec: t.wide_matvec,
            fused_norm: t.fused_norm,
            int_prefill: t.int_prefill,
            coop_matrix: t.cooperative_matrix,
            matvec_shape: t.matvec_shape,
            pipeline_cache_dir: default_pipeline_cache_dir(),
            checked_shaders: t.checked_shaders,
            loop_bounding: t.loop_bounding,
            dispatches_per_submit: t.dispatches_per_submit,
            ..Default::default()
        }
    }

    /// Applies a profile: f16, subgroup and cooperative-matrix kernels off where it forbids
    /// them (so none is built even on an adapter that has the feature), storage bindings capped
    /// at its limit, and its workgroup sizes handed to the tuning. Where it allows a feature,
    /// the adapter decides.
    pub fn with_profile(mut self, profile: &dyn BrowserProfile) -> Self {
        if !profile.allow_f16() {
            self.f16 = Some(false);
        }
        if !profile.allow_subgroups() {
            self.subgroups = Some(false);
        }
        if !profile.allow_cooperative_matrix() {
            self.coop_matrix = Some(false);
        }
        let cap = profile.max_storage_binding();
        self.max_binding_bytes = Some(self.max_binding_bytes.map_or(cap, |m| m.min(cap)));
        self.workgroups = Some(profile.workgroups());
        self
    }

    /// Options for tests: the software adapter (lavapipe) first.
    pub fn software() -> Self {
        WgpuOptions {
            allow_software: true,
            prefer_software: true,
            ..Default::default()
        }
    }
}

/// A wgpu `PipelineCache` backed by one file.
pub(crate) struct DiskPipelineCache {
    pub cache: wgpu::PipelineCache,
    pub file: std::path::PathBuf,
    /// Whether the file held data when the device opened (a warm start).
    pub warm: bool,
}

impl DiskPipelineCache {
    fn open(device: &wgpu::Device, file: std::path::PathBuf) -> Self {
        let data = std::fs::read(&file).ok();
        // SAFETY: the data was written by `save` from `PipelineCache::get_data` of a device with
        // the same `pipeline_cache_key`; wgpu and the driver validate the header (and fall back
        // to an empty cache when it does not match, `fallback: true`).
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("lowbit pipelines"),
                data: data.as_deref(),
                fallback: true,
            })
        };
        DiskPipelineCache {
            cache,
            warm: data.is_some_and(|d| !d.is_empty()),
            file,
        }
    }

    /// Writes the cache's current contents (atomically: a temporary file, then a rename).
    pub fn save(&self) -> Result<()> {
        let Some(data) = self.cache.get_data() else {
            return Ok(());
        };
        let fail = |e: std::io::Error| {
            Error::invalid_config(format!(
                "cannot write the pipeline cache {}: {e}",
                self.file.display()
            ))
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = self
            .file
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &data).map_err(fail)?;
        std::fs::rename(&tmp, &self.file).map_err(fail)?;
        tracing::debug!(file = %self.file.display(), bytes = data.len(), "pipeline cache saved");
        Ok(())
    }
}

/// An opened device with what the kernels need to know about it.
pub(crate) struct GpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Everything the adapter offers (the device enables only what the kernels use).
    pub adapter_features: wgpu::Features,
    pub f16: bool,
    pub subgroups: bool,
    /// Cooperative-matrix prefill ([`WgpuOptions::coop_matrix`]).
    pub coop_matrix: bool,
    pub timestamps: bool,
    /// The driver-level pipeline cache every kernel is compiled through, when the adapter
    /// supports one and a folder was given.
    pub pipeline_cache: Option<DiskPipelineCache>,
    /// Kernels keep naga's runtime checks ([`WgpuOptions::checked_shaders`]).
    pub checked_shaders: bool,
    /// Checked kernels also get loop-bounding counters ([`WgpuOptions::loop_bounding`]).
    pub loop_bounding: bool,
    /// [`WgpuOptions::dispatches_per_submit`].
    pub dispatches_per_submit: Option<usize>,
    /// Errors reported outside error scopes, drained by [`GpuDevice::take_error`].
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
}

/// Tokens × rows of a cooperative-matrix prefill tile (matmul.wgsl, `COOP_TILED`).
pub(crate) const COOP_TILE_T: u32 = 128;
pub(crate) const COOP_TILE_R: u32 = 128;
/// Columns per step of that kernel.
pub(crate) const COOP_TILE_K: u32 = 32;

/// Workgroup memory of that kernel: f16 tiles of its tokens and rows, `COOP_TILE_K + 8` halves
/// each (the columns and the padding), and the sums of its tokens × 16 rows in f32.
const COOP_WORKGROUP_BYTES: u32 =
    (COOP_TILE_T + COOP_TILE_R) * (COOP_TILE_K + 8) * 2 + COOP_TILE_T * 16 * 4;

fn not_supported(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::WebgpuNotSupported, msg)
}

fn rank(t: wgpu::DeviceType, prefer_software: bool) -> u32 {
    use wgpu::DeviceType::*;
    match (t, prefer_software) {
        (Cpu, true) => 5,
        (DiscreteGpu, _) => 4,
        (IntegratedGpu, _) => 3,
        (VirtualGpu, _) => 2,
        (Other, _) => 1,
        (Cpu, false) => 0,
    }
}

fn resolve(what: &str, want: Option<bool>, has: bool) -> Result<bool> {
    match want {
        Some(true) if !has => Err(not_supported(format!(
            "{what} kernels were required but the adapter lacks the feature"
        ))),
        Some(w) => Ok(w),
        None => Ok(has),
    }
}

impl GpuDevice {
    /// Picks an adapter and opens a device with the limits the kernels may use. In a browser
    /// the instance is the page's `navigator.gpu`, and its one adapter is what it offers.
    pub async fn open_async(opts: &WgpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        #[cfg(not(target_arch = "wasm32"))]
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        // A browser lists no adapters: it hands out the one it chose for the page.
        #[cfg(target_arch = "wasm32")]
        let adapters: Vec<wgpu::Adapter> = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .into_iter()
            .collect();
        let mut seen = Vec::new();
        let mut best: Option<(u32, wgpu::Adapter)> = None;
        for a in adapters {
            let info = a.get_info();
            seen.push(format!(
                "{} ({:?}, {:?})",
                info.name, info.backend, info.device_type
            ));
            if info.device_type == wgpu::DeviceType::Cpu && !opts.allow_software {
                continue;
            }
            if !a
                .get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
            {
                continue;
            }
            let r = rank(info.device_type, opts.prefer_software);
            if best.as_ref().is_none_or(|(b, _)| r > *b) {
                best = Some((r, a));
            }
        }
        let Some((_, adapter)) = best else {
            let found = if seen.is_empty() {
                "no adapters at all".to_string()
            } else {
                seen.join(", ")
            };
            return Err(not_supported(format!(
                "no usable WebGPU adapter (found: {found}); software adapters need \
                 backend.webgpu.allow_software_adapter = true \
                 (LOWBIT_BACKEND_WEBGPU_ALLOW_SOFTWARE_ADAPTER=1)"
            )));
        };
        let info = adapter.get_info();
        let features = adapter.features();
        let f16 = resolve(
            "f16",
            opts.f16,
            features.contains(wgpu::Features::SHADER_F16),
        )?;
        let subgroups = resolve(
            "subgroup",
            opts.subgroups,
            features.contains(wgpu::Features::SUBGROUP),
        )?;
        // The cooperative-matrix kernel: 16 × 16 × 16 f16 products with f32 sums, by 32-lane
        // subgroups (eight per 256-lane workgroup), on f16 tiles.
        let coop_has = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && adapter.cooperative_matrix_properties().iter().any(|c| {
                (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
                    && c.ab_type == wgpu::CooperativeScalarType::F16
                    && c.cr_type == wgpu::CooperativeScalarType::F32
            })
            && info.subgroup_min_size == 32
            && info.subgroup_max_size == 32
            && adapter.limits().max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES;
        let coop_matrix = resolve("cooperative-matrix", opts.coop_matrix, coop_has)?;
        if coop_matrix && !(f16 && subgroups) && opts.coop_matrix == Some(true) {
            return Err(not_supported(
                "cooperative-matrix kernels need the f16 and subgroup kernels on",
            ));
        }
        let coop_matrix = coop_matrix && f16 && subgroups;
        let timestamps = opts.profiling && features.contains(wgpu::Features::TIMESTAMP_QUERY);
        if opts.profiling && !timestamps {
            return Err(not_supported(
                "profiling needs TIMESTAMP_QUERY, which the adapter lacks",
            ));
        }
        let mut required = wgpu::Features::empty();
        if f16 {
            required |= wgpu::Features::SHADER_F16;
        }
        if subgroups {
            required |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            required |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if coop_matrix {
            required |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let cache_file = match (
            &opts.pipeline_cache_dir,
            wgpu::util::pipeline_cache_key(&info),
        ) {
            (Some(dir), Some(key)) if features.contains(wgpu::Features::PIPELINE_CACHE) => {
                required |= wgpu::Features::PIPELINE_CACHE;
                Some(dir.join(format!("{key}.bin")))
            }
            _ => None,
        };
        // Everything the adapter offers: large weights need its full binding and buffer sizes.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lowbit"),
                required_features: required,
                required_limits: limits.clone(),
                // SAFETY: the only experimental feature requested is cooperative matrices, used by
                // one kernel whose every path is checked against the CPU backend
                // (`coop_prefill_every_format`); wgpu still validates its shaders.
                experimental_features: if coop_matrix {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                ..Default::default()
            })
            .await
            .map_err(|e| not_supported(format!("cannot open a device on {}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(Mutex::new(None));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                tracing::error!("wgpu: {e}");
                if let Ok(mut v) = errors.lock() {
                    v.push(e.to_string());
                }
            }));
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                if let Ok(mut l) = lost.lock() {
                    *l = Some(format!("{reason:?}: {msg}"));
                }
            });
        }
        let pipeline_cache = cache_file.map(|file| DiskPipelineCache::open(&device, file));
        tracing::info!(
            adapter = %info.name,
            backend = ?info.backend,
            f16,
            subgroups,
            coop_matrix,
            "webgpu device opened"
        );
        Ok(GpuDevice {
            device,
            queue,
            info,
            limits,
            adapter_features: features,
            f16,
            subgroups,
            coop_matrix,
            timestamps,
            pipeline_cache,
            checked_shaders: opts.checked_shaders,
            loop_bounding: opts.loop_bounding,
            dispatches_per_submit: opts.dispatches_per_submit,
            errors,
            lost,
        })
    }

    /// The first error reported since the last call (device loss, validation, out of memory),
    /// as a typed error.
    pub fn take_error(&self) -> Result<()> {
        if let Some(l) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(not_supported(format!("the WebGPU device was lost ({l})")));
        }
        let mut errs = match self.errors.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        if errs.is_empty() {
            return Ok(());
        }
        let all = std::mem::take(&mut *errs).join("; ");
        if all.to_ascii_lowercase().contains("out of memory") {
            Err(Error::out_of_memory(format!("WebGPU: {all}")))
        } else {
            Err(not_supported(format!("WebGPU error: {all}")))
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they catch into
    /// typed errors. In a browser the scopes answer asynchronously and nothing may block, so
    /// there errors reach [`GpuDevice::take_error`] through the uncaptured-error handler.
    #[cfg(target_arch = "wasm32")]
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let v = f();
        self.take_error()
            .map_err(|e| Error::new(e.code, format!("{what}: {}", e.message)))?;
        Ok(v)
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they catch into
    /// typed errors.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let v = f();
        let val = pollster::block_on(val.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom {
            return Err(Error::out_of_memory(format!("{what}: {e}")));
        }
        if let Some(e) = val {
            return Err(not_supported(format!("{what}: {e}")));
        }
        Ok(v)
    }

    /// Checks that one buffer of `bytes` fits the device limits.
    pub fn check_buffer_size(&self, bytes: u64, what: &str) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::out_of_memory(format!(
                "{what} needs a buffer of {bytes} bytes; the device allows at most {}",
                self.limits.max_buffer_size
            )));
        }
        Ok(())
    }

    /// The adapter's driver and its version, e.g. `llvmpipe Mesa 23.2.1` or
    /// `NVIDIA 550.54.15`; empty where the platform reports neither.
    pub fn driver(&self) -> String {
        format!("{} {}", self.info.driver, self.info.driver_info)
            .trim()
            .to_owned()
    }

    /// A description such as `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }
}
