//! lowbit-wgpu: the WebGPU backend. WGSL kernels (`shaders/`, specialised per bit width, group
//! size, workgroup size, f16 and subgroup support) compute directly on the packed 2/3/4/8-bit
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
mod probe;
mod profiling;
mod recorder;
mod shader;
mod tuning;
mod weights;

pub use backend::{KernelPaths, WgpuBackend};
pub use device::{MatvecShape, WgpuOptions};
pub use fusion::{Fused, Group, Plan};
pub use probe::{probe_adapters, AdapterReport};
pub use profiling::KernelTiming;

use lowbit_core::registry::{BackendOptions, BackendRegistration};
use lowbit_core::{Backend, Result};
use std::sync::Arc;

/// The registry constructor: the best adapter the options' tuning allows (see
/// [`WgpuOptions::from_tuning`]).
pub fn create(opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    let mut o = WgpuOptions {
        profiling: opts.profiling,
        ..WgpuOptions::from_tuning(&opts.tuning.webgpu)
    };
    if let Some(p) = &opts.profile {
        o = o.with_profile(p.as_ref());
    }
    Ok(Arc::new(WgpuBackend::new(&o)?))
}

inventory::submit! { BackendRegistration { name: "webgpu", priority: 20, create } }
