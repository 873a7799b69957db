//! lowbit: ultra-low-precision (2- to 8-bit) quantized transformer inference on WebGPU and a
//! SIMD CPU backend, streaming output token by token.
//!
//! This facade re-exports the core crate and adds what applications use directly: loading a
//! model per a typed run plan ([`plan`]), built from the validated configuration
//! ([`selection`]), evaluation ([`perplexity`]) and the records measuring commands write
//! ([`results`]).
//!
//! ```no_run
//! use lowbit::plan::RunPlan;
//! use lowbit::core::block_on;
//! use lowbit::core::generate::{generate, GenerateOptions};
//!
//! // The schema's defaults (int4, groups of 32, asymmetric; the default model in ./models).
//! let (model, _backend) = RunPlan::default().load(&mut |_, _, _| {})?;
//! let prompt = model.tokenizer().encode("The capital of France is", true)?;
//! let mut cache = model.new_cache(2048)?;
//! // Model calls are futures (a browser cannot block on the device); native code waits for
//! // them at its top level.
//! let out = block_on(generate(model.as_ref(), &mut cache, &prompt, &GenerateOptions::default(),
//!     &mut |text, _last| print!("{text}")))?;
//! println!("\n{:.1} tokens/s", out.stats.decode_tokens_per_s);
//! # Ok::<(), lowbit::core::Error>(())
//! ```

pub mod calibrate;
pub mod passkey;
pub mod perplexity;
pub mod plan;
pub mod quantize;
pub mod results;
pub mod selection;
pub mod server;
pub mod streaming;

pub use lowbit_core as core;
pub use lowbit_core::{Error, ErrorCode, Result};

// Link the built-in backends and adapters so their `inventory` registrations are present.
pub use lowbit_cpu;
pub use lowbit_models;
pub use lowbit_wgpu;
