//! The generation engine on the real SmolLM2 model (CPU backend, int8): callbacks, stop
//! conditions, seeds, context limits.

mod common;

use lowbit::core::adapter::TextModel;
use lowbit::core::generate::{generate, FinishReason, GenerateOptions, SamplingParams};
use lowbit::core::{block_on, ErrorCode};

fn model() -> Box<dyn TextModel> {
    common::smollm2_plan("cpu", "int8")
        .load(&mut |_, _, _| {})
        .unwrap()
        .0
}

fn run(
    m: &dyn TextModel,
    prompt: &str,
    opts: &GenerateOptions,
) -> (
    lowbit::core::Result<lowbit::core::generate::Generation>,
    Vec<(String, bool)>,
) {
    let ids = m.tokenizer().encode(prompt, true).unwrap();
    let mut cache = m.new_cache(128).unwrap();
    let mut calls = Vec::new();
    let g = block_on(generate(m, &mut cache, &ids, opts, &mut |t, last| {
        calls.push((t.to_owned(), last))
    }));
    (g, calls)
}

#[test]
fn callback_fires_per_token_and_is_last_exactly_once() {
    let m = model();
    let opts = GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let (g, calls) = run(m.as_ref(), "Once upon a time", &opts);
    let g = g.unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.tokens.len(), 12);
    assert_eq!(calls.len(), 12);
    assert_eq!(calls.iter().filter(|c| c.1).count(), 1);
    assert!(calls.last().unwrap().1);
    let streamed: String = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, m.tokenizer().decode(&g.tokens));
    assert_eq!(g.stats.generated_tokens, 12);
    assert!(g.stats.time_to_first_token_ms > 0.0 && g.stats.decode_tokens_per_s > 0.0);
    assert!(g.stats.token_latency_p95_ms >= g.stats.token_latency_p50_ms);
}

#[test]
fn stop_string_ends_generation_and_is_not_emitted() {
    let m = model();
    // Greedy continuation of this prompt is " Paris.\n\nThe answer ..." (see the llama.cpp
    // fixture): stopping at "." must leave exactly " Paris".
    let opts = GenerateOptions {
        max_tokens: 16,
        stop: vec![".".into()],
        ..Default::default()
    };
    let (g, calls) = run(m.as_ref(), "The capital of France is", &opts);
    let g = g.unwrap();
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, " Paris");
    let streamed: String = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(streamed, " Paris");
}

#[test]
fn seeded_sampling_is_reproducible_and_differs_across_seeds() {
    let m = model();
    let opts = |seed| GenerateOptions {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
        },
        ..Default::default()
    };
    let a = run(m.as_ref(), "My favourite food is", &opts(1))
        .0
        .unwrap()
        .tokens;
    let b = run(m.as_ref(), "My favourite food is", &opts(1))
        .0
        .unwrap()
        .tokens;
    assert_eq!(a, b);
    let others: Vec<_> = (2..6)
        .map(|s| {
            run(m.as_ref(), "My favourite food is", &opts(s))
                .0
                .unwrap()
                .tokens
        })
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "4 other seeds all gave the same 16 tokens"
    );
}

#[test]
fn prompt_longer_than_context_is_context_overflow_and_empty_prompt_is_rejected() {
    let m = model();
    let ids = m.tokenizer().encode(&"word ".repeat(200), true).unwrap();
    let mut cache = m.new_cache(64).unwrap();
    let e = block_on(generate(
        m.as_ref(),
        &mut cache,
        &ids,
        &GenerateOptions::default(),
        &mut |_, _| {},
    ))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::ContextOverflow);
    let e = block_on(generate(
        m.as_ref(),
        &mut cache,
        &[],
        &GenerateOptions::default(),
        &mut |_, _| {},
    ))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
}

#[test]
fn generation_stops_at_the_context_limit() {
    let m = model();
    let ids = m
        .tokenizer()
        .encode("Count: one, two, three,", true)
        .unwrap();
    let mut cache = m.new_cache(ids.len() + 5).unwrap();
    let opts = GenerateOptions {
        max_tokens: 100,
        ..Default::default()
    };
    let g = block_on(generate(
        m.as_ref(),
        &mut cache,
        &ids,
        &opts,
        &mut |_, _| {},
    ))
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert!(g.tokens.len() <= 5);
}
