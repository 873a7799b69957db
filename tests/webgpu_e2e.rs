//! SmolLM2 end to end on the WebGPU backend (lavapipe in CI: `scripts/test.sh` installs
//! mesa-vulkan-drivers) against the CPU backend: the same weights (int8, group 32) must give the
//! same greedy tokens (through the narrow and the wide decode matvec), and perplexity at fp32,
//! int8 and int4 must agree within 0.5% with the CPU backend's reference mode (f32 activations
//! on the same quantized weights).

mod common;

use lowbit::core::adapter::Logits;
use lowbit::core::block_on;
use lowbit::core::generate::{argmax, generate, GenerateOptions};
use lowbit::core::registry::{BackendTuning, MatvecShape};
use lowbit::perplexity::perplexity;

/// Loads SmolLM2 at `quant` on `backend` with `tuning` (which lets the WebGPU backend take a
/// software adapter: CI has no GPU).
fn load(
    backend: &str,
    quant: &str,
    tuning: &BackendTuning,
) -> Box<dyn lowbit::core::adapter::TextModel> {
    load_with(backend, quant, tuning, false)
}

/// [`load`], quantized in a rotated basis when `rotation` is set (`quantization.rotation`).
fn load_with(
    backend: &str,
    quant: &str,
    tuning: &BackendTuning,
    rotation: bool,
) -> Box<dyn lowbit::core::adapter::TextModel> {
    let mut plan = common::smollm2_plan(backend, quant);
    plan.methods.rotation = rotation;
    plan.backend.tuning = tuning.clone();
    plan.backend.tuning.webgpu.allow_software_adapter = true;
    plan.load(&mut |_, _, _| {})
        .unwrap_or_else(|e| panic!("load {quant} on {backend}: {e}"))
        .0
}

fn greedy(backend: &str, prompt: &str, tuning: &BackendTuning) -> Vec<u32> {
    let model = load(backend, "int8", tuning);
    greedy_on(model.as_ref(), backend, prompt)
}

/// 16 greedy tokens after `prompt`, through `decode_greedy` and checked against forward +
/// argmax step by step and an early stop.
fn greedy_on(
    model: &dyn lowbit::core::adapter::TextModel,
    backend: &str,
    prompt: &str,
) -> Vec<u32> {
    let ids = model.tokenizer().encode(prompt, true).unwrap();
    let mut cache = model.new_cache(64).unwrap();
    let opts = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let tokens = block_on(generate(model, &mut cache, &ids, &opts, &mut |_, _| {}))
        .unwrap()
        .tokens;
    // `generate` selects greedy tokens on the device with the next step queued ahead
    // (`decode_greedy`); step by step with host argmax must give the same tokens.
    let mut cache = model.new_cache(64).unwrap();
    let mut logits = block_on(model.forward(&mut cache, &ids, Logits::Last)).unwrap();
    let mut stepwise = Vec::new();
    for _ in 0..16 {
        let t = argmax(&logits);
        stepwise.push(t);
        logits = block_on(model.forward(&mut cache, &[t], Logits::Last)).unwrap();
    }
    assert_eq!(
        tokens, stepwise,
        "{backend}: decode_greedy differs from forward + argmax"
    );
    // Refusing a token stops decoding with only the accepted tokens fed to the cache.
    let mut cache = model.new_cache(64).unwrap();
    block_on(model.forward(&mut cache, &ids, Logits::Last)).unwrap();
    let mut got = Vec::new();
    let mut keep = |t| {
        got.push(t);
        got.len() < 5
    };
    block_on(model.decode_greedy(&mut cache, stepwise[0], 16, &mut keep)).unwrap();
    assert_eq!(got, stepwise[1..6], "{backend}: early stop");
    assert_eq!(
        cache.pos,
        ids.len() + 5,
        "{backend}: cache position after the stop"
    );
    tokens
}

/// Perplexity of SmolLM2 on the first two 64-token chunks of the Brown corpus (32 scored
/// tokens each; small because lavapipe runs every kernel on the CPU).
fn ppl(backend: &str, quant: &str, text: &str, tuning: &BackendTuning) -> f64 {
    ppl_with(backend, quant, text, tuning, false)
}

/// [`ppl`], quantized in a rotated basis when `rotation` is set.
fn ppl_with(backend: &str, quant: &str, text: &str, tuning: &BackendTuning, rotation: bool) -> f64 {
    let model = load_with(backend, quant, tuning, rotation);
    perplexity(model.as_ref(), text, 64, 2, &mut |_, _, _| {})
        .unwrap_or_else(|e| panic!("perplexity {quant} (rotation {rotation}) on {backend}: {e}"))
        .perplexity
}

#[test]
fn webgpu_matches_the_cpu_backend_end_to_end() {
    let text: String = std::fs::read_to_string(common::brown())
        .expect("brown.txt")
        .chars()
        .take(4000)
        .collect();
    // The CPU reference multiplies the same quantized weights with f32 activations (its
    // default kernels quantize activations to int8 blocks, which alone moves perplexity by
    // ~3% on chunks this short; the WebGPU prefill this perplexity runs through keeps
    // activations in f16/f32 — its decode matvec quantizes them as the CPU kernels do).
    let mut exact = BackendTuning::default();
    exact.cpu.exact_activations = true;
    let default = BackendTuning::default();
    for quant in ["fp32", "int8", "int4"] {
        let cpu = ppl("cpu", quant, &text, &exact);
        let gpu = ppl("webgpu", quant, &text, &default);
        let rel = (gpu - cpu).abs() / cpu;
        eprintln!(
            "{quant}: perplexity cpu {cpu:.4}, webgpu {gpu:.4} ({:.3}%)",
            rel * 100.0
        );
        assert!(
            cpu.is_finite() && cpu > 1.0,
            "{quant}: cpu perplexity {cpu}"
        );
        assert!(
            rel < 0.005,
            "{quant}: webgpu perplexity {gpu} differs from the CPU backend's {cpu} by {:.3}%",
            rel * 100.0
        );
    }
    // Greedy tokens against the CPU backend's default (int8-activation) kernels.
    let prompt = "The capital of France is";
    let cpu = greedy("cpu", prompt, &default);
    let gpu = greedy("webgpu", prompt, &default);
    assert_eq!(cpu.len(), 16);
    assert_eq!(
        gpu, cpu,
        "webgpu greedy tokens differ from the CPU backend's"
    );
    // The wide decode matvec on SmolLM2's 576-value rows (16 lanes per workgroup make them
    // wide enough): 8-bit activations, the SwiGLU in the gate|up epilogue and every RMSNorm
    // but the first prepared by the residual add before it (`Backend::expect_norm`).
    let mut wide_16 = BackendTuning::default();
    wide_16.webgpu.matvec_shape = MatvecShape::parse("16x4");
    let wide = greedy("webgpu", prompt, &wide_16);
    assert_eq!(
        wide, cpu,
        "webgpu greedy tokens through the wide matvec differ from the CPU backend's"
    );
}

/// SmolLM2 quantized in a rotated basis (`quantization.rotation`: every matrix's input
/// dimension in randomized-Hadamard blocks of 64 and 128, the tied embedding table too) runs
/// on the WebGPU backend as on the CPU backend: int4 perplexity within 0.5% of the CPU
/// reference mode, and the same int8 greedy tokens as the CPU backend's default kernels, on the
/// narrow and on the wide decode matvec.
#[test]
fn rotated_weights_match_the_cpu_backend_end_to_end() {
    let text: String = std::fs::read_to_string(common::brown())
        .expect("brown.txt")
        .chars()
        .take(4000)
        .collect();
    let mut exact = BackendTuning::default();
    exact.cpu.exact_activations = true;
    let default = BackendTuning::default();
    let cpu = ppl_with("cpu", "int4", &text, &exact, true);
    let gpu = ppl_with("webgpu", "int4", &text, &default, true);
    let rel = (gpu - cpu).abs() / cpu;
    eprintln!(
        "int4 rotated: perplexity cpu {cpu:.4}, webgpu {gpu:.4} ({:.3}%)",
        rel * 100.0
    );
    assert!(cpu.is_finite() && cpu > 1.0, "cpu perplexity {cpu}");
    assert!(
        rel < 0.005,
        "rotated: webgpu perplexity {gpu} differs from the CPU backend's {cpu} by {:.3}%",
        rel * 100.0
    );
    let prompt = "The capital of France is";
    let cpu = greedy_on(
        load_with("cpu", "int8", &default, true).as_ref(),
        "cpu",
        prompt,
    );
    assert_eq!(cpu.len(), 16);
    let mut wide_16 = BackendTuning::default();
    wide_16.webgpu.matvec_shape = MatvecShape::parse("16x4");
    for (what, tuning) in [("narrow", &default), ("wide", &wide_16)] {
        let gpu = greedy_on(
            load_with("webgpu", "int8", tuning, true).as_ref(),
            "webgpu",
            prompt,
        );
        assert_eq!(
            gpu, cpu,
            "rotated: webgpu greedy tokens ({what} matvec) differ from the CPU backend's"
        );
    }
}
