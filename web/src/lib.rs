//! lowbit-web: lowbit compiled to `wasm32-unknown-unknown` for web pages. The engine (core,
//! the LLaMA-family adapters, the WebGPU backend on the page's `navigator.gpu` and the
//! WASM-SIMD CPU backend) runs in a dedicated Web Worker; `web/js/lowbit.js` is the page's
//! API (`WebGPUStreamingInference`) and talks to it by messages.
//!
//! [`settings`] holds the configuration rules (pure Rust, tested natively); the wasm-bindgen
//! exports live in `bindings` (wasm32 only): `Engine` (create, load, generate, stop),
//! `validateConfiguration`, `detectCapabilities` and `runConformance`.

pub mod settings;

#[cfg(target_arch = "wasm32")]
mod bindings;

// Link the built-in backends and adapters so their `inventory` registrations are present.
pub use lowbit_cpu;
pub use lowbit_models;
pub use lowbit_wgpu;
