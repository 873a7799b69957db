//! Shared paths for the end-to-end tests. The models are fetched by `scripts/fetch-models.sh`
//! (the test command runs it first); a missing file fails the test with that hint.

#![allow(dead_code)]

use std::path::PathBuf;

/// The models folder (`$LOWBIT_MODELS_DIR` or `models/` at the repository root).
pub fn models_dir() -> PathBuf {
    std::env::var_os("LOWBIT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// A file in the models folder; panics with the fetch command when it is missing.
pub fn model_file(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

/// The default model, SmolLM2-135M-Instruct (Q4_1 GGUF).
pub fn smollm2() -> PathBuf {
    model_file("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M (Q4_K_M GGUF).
pub fn gemma3() -> PathBuf {
    model_file("gemma-3-270m-q4_k_m.gguf")
}

/// The Brown corpus as running text.
pub fn brown() -> PathBuf {
    model_file("brown.txt")
}

/// A run plan of SmolLM2 on `backend` at `method` (`fp32` … `int2`), groups of 32, symmetric:
/// the precision the tests' tolerances were measured with.
pub fn smollm2_plan(backend: &str, method: &str) -> lowbit::plan::RunPlan {
    model_plan(smollm2(), backend, method)
}

/// A run plan of the model file `path` on `backend` at `method`, groups of 32, symmetric.
pub fn model_plan(path: PathBuf, backend: &str, method: &str) -> lowbit::plan::RunPlan {
    let defaults = lowbit::plan::RunPlan::default();
    lowbit::plan::RunPlan {
        model: lowbit::plan::ModelChoice::File(path),
        weights: lowbit::core::adapter::QuantPlan::for_method(
            method,
            32,
            lowbit::core::quant::Scheme::Symmetric,
        )
        .expect("a uniform method"),
        backend: lowbit::plan::BackendPlan {
            name: backend.into(),
            ..defaults.backend.clone()
        },
        ..defaults
    }
}
