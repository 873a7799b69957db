//! lowbit-cpu: the CPU backend. Weights stay in their packed low-bit form; matmul quantizes the
//! activations to int8 blocks of 32 and runs integer dot products on the codes with SIMD
//! kernels (AVX2/FMA on x86-64, `simd128` on wasm32, portable scalar elsewhere), spread over a
//! private pool of `BackendOptions::threads` workers that spin between operations (`pool.rs`).
//!
//! Registered as backend `cpu` (priority 10) through [`lowbit_core::registry`].

mod backend;
mod buffers;
mod info;
mod kernels;
mod matmul;
mod ops;
mod pool;
mod run;

pub use backend::CpuBackend;
pub use kernels::Isa;

use lowbit_core::backend::Backend;
use lowbit_core::error::Result;
use lowbit_core::registry::{BackendOptions, BackendRegistration};
use std::sync::Arc;

/// The registry constructor (`cpu`): [`CpuBackend`] with the options' threads and switches.
pub fn create(opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    let isa = match opts.tuning.cpu.kernels.as_deref() {
        None => Isa::detect(),
        Some(name) => Isa::parse(name).ok_or_else(|| {
            lowbit_core::Error::invalid_config(format!(
                "backend.cpu.kernels = \"{name}\": expected auto, scalar, avx2 or simd128"
            ))
        })?,
    };
    Ok(Arc::new(
        CpuBackend::with_isa(opts.threads, isa)?
            .exact_activations(opts.tuning.cpu.exact_activations),
    ))
}

inventory::submit! {
    BackendRegistration { name: "cpu", priority: 10, create }
}
