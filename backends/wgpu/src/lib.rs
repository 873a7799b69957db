//! lowbit-wgpu: the WebGPU backend. WGSL kernels (`shaders/`, specialised per bit width, group
//! size, workgroup size, f16 and subgroup support) compute directly on the packed 2- to 8-bit
//! weights uploaded once; every operation is recorded into one command encoder, so a decode step
//! is one submission whose only readback is the logits.
//!
//! Registered as `webgpu` (priority 20). Selection takes hardware adapters only; a software
//! adapter such as Mesa's lavapipe is used with `backend.webgpu.allow_software_adapter` or when built
//! explicitly with [`WgpuOptions::software`], so `auto` never prefers it over the CPU backend.

mod backend;
mod buffers;
mod device;
mod fusion;
mod ops;
mod pipelines;
#[cfg(not(target_arch = "wasm32"))]
mod probe;
mod profiling;
mod recorder;
mod shader;
mod tuning;
mod weights;

pub use backend::{AdapterDetails, KernelPaths, WgpuBackend};
pub use device::{MatvecShape, WgpuOptions};
pub use fusion::{Fused, Group, Plan};
#[cfg(not(target_arch = "wasm32"))]
pub use probe::{probe_adapters, AdapterReport};
pub use profiling::KernelTiming;

use lowbit_core::registry::{BackendOptions, BackendRegistration};
use lowbit_core::{Backend, Result};
use std::sync::Arc;

/// The registry constructor: the best adapter the options' tuning allows (see
/// [`WgpuOptions::from_tuning`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn create(opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(WgpuBackend::new(&options(opts))?))
}

/// The registry constructor in a browser: an error, because a browser opens its device
/// asynchronously and nothing there may block; use [`options`] with
/// [`WgpuBackend::new_async`].
#[cfg(target_arch = "wasm32")]
pub fn create(_: &BackendOptions) -> Result<Arc<dyn Backend>> {
    Err(lowbit_core::Error::new(
        lowbit_core::ErrorCode::WebgpuNotSupported,
        "in a browser the WebGPU backend is opened with WgpuBackend::new_async",
    ))
}

/// The device options of the registry's backend options: the tuning's switches, profiling, and
/// the profile's limits and workgroup sizes.
pub fn options(opts: &BackendOptions) -> WgpuOptions {
    let o = WgpuOptions {
        profiling: opts.profiling,
        ..WgpuOptions::from_tuning(&opts.tuning.webgpu)
    };
    match &opts.profile {
        Some(p) => o.with_profile(p.as_ref()),
        None => o,
    }
}

inventory::submit! { BackendRegistration { name: "webgpu", priority: 20, create } }
