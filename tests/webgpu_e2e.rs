//! SmolLM2 end to end on the WebGPU backend (lavapipe in CI: `scripts/test.sh` installs
//! mesa-vulkan-drivers) against the CPU backend: the same weights (int8, group 32) must give the
//! same greedy tokens.

mod common;

use lowbit::core::generate::{generate, GenerateOptions};
use lowbit::load::{load_text_model, LoadOptions, QuantMethod};

fn greedy(backend: &str, prompt: &str) -> Vec<u32> {
    let opts = LoadOptions {
        model: Some(common::smollm2()),
        quant: QuantMethod::Int8,
        backend: backend.into(),
        ..Default::default()
    };
    let model = load_text_model(&opts, &mut |_, _, _| {})
        .unwrap_or_else(|e| panic!("load on {backend}: {e}"));
    let ids = model.tokenizer().encode(prompt, true).unwrap();
    let mut cache = model.new_cache(64).unwrap();
    let opts = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    generate(model.as_ref(), &mut cache, &ids, &opts, &mut |_, _| {})
        .unwrap()
        .tokens
}

#[test]
fn greedy_tokens_on_webgpu_equal_the_cpu_backend() {
    // The only test in this binary: setting the variable cannot race another test. It lets the
    // registry use a software adapter (CI has no GPU).
    std::env::set_var("LOWBIT_ALLOW_SOFTWARE_ADAPTER", "1");
    let prompt = "The capital of France is";
    let cpu = greedy("cpu", prompt);
    let gpu = greedy("webgpu", prompt);
    assert_eq!(cpu.len(), 16);
    assert_eq!(
        gpu, cpu,
        "webgpu greedy tokens differ from the CPU backend's"
    );
}
