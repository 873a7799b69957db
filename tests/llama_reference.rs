//! SmolLM2 on the CPU backend against llama.cpp's outputs on the same F32 weights
//! (references made by scripts/peer-reference.sh: tests/fixtures/llamacpp_greedy.json and
//! tests/fixtures/llamacpp_perplexity.json).

mod common;

use lowbit::core::adapter::TextModel;
use lowbit::core::block_on;
use lowbit::core::generate::{generate, GenerateOptions, SamplingParams};
use lowbit::perplexity::perplexity;

fn load(method: &str) -> Box<dyn TextModel> {
    common::smollm2_plan("cpu", method)
        .load(&mut |_, _, _| {})
        .expect("load SmolLM2")
        .0
}

fn fixture(path: &str) -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn ppl(model: &dyn TextModel, chunks: usize) -> f64 {
    let text = std::fs::read_to_string(common::brown()).unwrap();
    perplexity(model, &text, 512, chunks, &mut |_, _, _| {})
        .unwrap()
        .perplexity
}

#[test]
fn greedy_fp32_matches_llama_cpp_on_at_least_4_of_5_prompts() {
    let model = load("fp32");
    let refs = fixture("tests/fixtures/llamacpp_greedy.json");
    let refs = refs.as_array().unwrap();
    assert_eq!(refs.len(), 5);
    let mut matches = 0;
    for r in refs {
        let prompt = r["prompt"].as_str().unwrap();
        let want: Vec<u32> = r["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want_prompt: Vec<u32> = r["prompt_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = model.tokenizer().encode(prompt, true).unwrap();
        assert_eq!(ids, want_prompt, "prompt tokens of {prompt:?}");
        let mut cache = model.new_cache(256).unwrap();
        let opts = GenerateOptions {
            max_tokens: 16,
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let g = block_on(generate(
            model.as_ref(),
            &mut cache,
            &ids,
            &opts,
            &mut |_, _| {},
        ))
        .unwrap();
        if g.tokens == want[..16] {
            matches += 1;
        } else {
            eprintln!("differs on {prompt:?}: {:?} vs {:?}", g.tokens, want);
        }
    }
    assert!(
        matches >= 4,
        "only {matches}/5 prompts match llama.cpp's greedy tokens"
    );
}

/// lowbit's perplexity at fp32 and llama.cpp's on the F32 GGUF of the same weights, 4 chunks
/// of 512 tokens: the same method and weights, so they differ only by float summation order.
/// The bound is 1%.
#[test]
fn perplexity_fp32_within_1_percent_of_llama_cpp_and_int8_within_half_percent() {
    let peer = fixture("tests/fixtures/llamacpp_perplexity.json");
    let want = peer
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "F32" && r["chunks"] == 4)
        .expect("llama.cpp F32 4-chunk reference")["ppl"]
        .as_f64()
        .unwrap();
    let fp32 = ppl(load("fp32").as_ref(), 4);
    let rel = (fp32 / want - 1.0).abs();
    assert!(
        rel < 0.01,
        "fp32 perplexity {fp32} vs llama.cpp {want}: {:.3}%",
        rel * 100.0
    );
    // int8 (group 32, symmetric): the bound is 0.5% from fp32.
    let int8 = ppl(load("int8").as_ref(), 4);
    let rel8 = (int8 / fp32 - 1.0).abs();
    assert!(
        rel8 < 0.005,
        "int8 perplexity {int8} vs fp32 {fp32}: {:.3}%",
        rel8 * 100.0
    );
}
