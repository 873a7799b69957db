//! The library API of `StreamingInference` on SmolLM2 (int8, CPU, greedy): UTF-8-safe token
//! text when a character spans several tokens, sync callbacks and async streams agreeing with
//! the engine, cancellation, event callbacks and performance figures.

mod server_common;

use futures::StreamExt;
use lowbit::core::block_on;
use lowbit::core::generate::{generate, FinishReason, GenerateOptions, SamplingParams};
use lowbit::streaming::{InferenceConfig, Prompt, TokenEvent};
use server_common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn multi_byte_characters_spanning_tokens_stream_as_whole_characters() {
    let e = engine(test_config());
    let prompt = Prompt::Chat(vec![(
        "user".into(),
        "Translate into Chinese: I love my family and my friends.".into(),
    )]);
    let mut pieces = Vec::new();
    let c = e
        .generate_completion(prompt, greedy(40), |t, _| pieces.push(t.to_owned()))
        .unwrap();
    let tok = model();
    let tok = tok.tokenizer();
    // Some generated token is only part of a character: its bytes alone are not UTF-8.
    let split = c
        .tokens
        .iter()
        .filter(|&&id| std::str::from_utf8(&tok.token_bytes(id)).is_err())
        .count();
    assert!(split > 0, "no character spanned tokens in {:?}", c.text);
    assert!(c.text.chars().any(|ch| ch.len_utf8() > 1), "{:?}", c.text);
    assert!(!c.text.contains('\u{FFFD}'), "{:?}", c.text);
    // Every piece is whole characters (a `String`), and together they are the text.
    assert_eq!(pieces.concat(), c.text);
    assert!(
        pieces.iter().any(|p| p.is_empty()),
        "a pending partial character gives an empty piece"
    );
    assert_eq!(c.text, tok.decode(&c.tokens));
}

#[tokio::test]
async fn async_stream_matches_the_sync_callback_and_the_engine() {
    let e = engine(test_config());
    let prompt = "The three primary colors are";
    let mut calls = Vec::new();
    let text = e
        .generate(prompt, greedy(12), |t, last| {
            calls.push((t.to_owned(), last))
        })
        .unwrap();
    assert_eq!(calls.iter().filter(|c| c.1).count(), 1);
    assert!(calls.last().unwrap().1);
    assert_eq!(calls.iter().map(|c| c.0.as_str()).collect::<String>(), text);
    // The engine's own generate() on a fresh cache gives the same greedy text.
    let m = model();
    let ids = m.tokenizer().encode(prompt, true).unwrap();
    let mut cache = m.new_cache(256).unwrap();
    let g = block_on(generate(
        m.as_ref(),
        &mut cache,
        &ids,
        &greedy(12),
        &mut |_, _| {},
    ))
    .unwrap();
    assert_eq!(g.text, text);

    let mut s = e.generate_async(prompt, greedy(12)).unwrap();
    assert_eq!(s.prompt_tokens(), ids.len());
    let mut streamed = String::new();
    let mut done = None;
    while let Some(ev) = s.next().await {
        match ev {
            TokenEvent::Token { text, .. } => streamed.push_str(&text),
            TokenEvent::Done(c) => done = Some(c),
            TokenEvent::Error(err) => panic!("{err}"),
        }
    }
    let c = done.unwrap();
    assert_eq!(
        (streamed.as_str(), c.text.as_str()),
        (text.as_str(), text.as_str())
    );
    assert_eq!(c.usage.prompt_tokens, ids.len());
    assert_eq!(c.usage.completion_tokens, g.tokens.len());
}

#[tokio::test]
async fn cancel_stops_within_a_token_and_frees_the_request() {
    let e = engine(test_config());
    let mut s = e
        .generate_async("Once upon a time, in a land far away,", greedy(48))
        .unwrap();
    let mut n = 0;
    while n < 2 {
        if let Some(TokenEvent::Token { .. }) = s.next().await {
            n += 1;
        }
    }
    s.cancel_handle().cancel();
    let mut after = 0;
    let c = loop {
        match s.next().await.unwrap() {
            TokenEvent::Token { .. } => after += 1,
            TokenEvent::Done(c) => break c,
            TokenEvent::Error(err) => panic!("{err}"),
        }
    };
    assert_eq!(c.finish_reason, FinishReason::Cancelled);
    assert!(after <= 2, "{after} tokens after cancel");
    // The scheduler thread frees the request and its cache after sending `Done`: wait for both
    // (bounded, 10 s) before asserting.
    for _ in 0..500 {
        if e.active_requests() == 0 && e.performance_stats().kv_cache_bytes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.active_requests(), 0);
    assert_eq!(e.performance_stats().kv_cache_bytes, 0);
}

#[tokio::test]
async fn a_cancelled_or_dropped_request_frees_its_place_at_once() {
    // One place: a second request is busy until the first lets go of it.
    let e = engine(InferenceConfig {
        max_concurrent_requests: 1,
        ..test_config()
    });
    let prompt = "Once upon a time, in a land far away,";
    let mut first = e.generate_async(prompt, greedy(48)).unwrap();
    assert!(matches!(first.next().await, Some(TokenEvent::Token { .. })));
    let busy = e.generate_async("Hello", greedy(2)).err().expect("busy");
    assert_eq!(busy.code(), "busy");
    // Cancelling frees the place before the scheduler's next step has even seen it.
    first.cancel_handle().cancel();
    assert_eq!(e.active_requests(), 0);
    let second = e
        .generate_async(prompt, greedy(48))
        .expect("the place is free");
    // So does dropping the stream (a client gone).
    drop(second);
    assert_eq!(e.active_requests(), 0);
    let mut third = e
        .generate_async("Hello", greedy(2))
        .expect("the place is free");
    loop {
        match third.next().await {
            Some(TokenEvent::Done(c)) => {
                assert_eq!(c.finish_reason, FinishReason::Length);
                break;
            }
            Some(TokenEvent::Token { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn timeout_and_memory_pressure_fire_their_callbacks() {
    // Timeout: a zero limit ends every request with `timeout`.
    let e = engine(InferenceConfig {
        request_timeout: Duration::ZERO,
        ..test_config()
    });
    let (timeouts, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let t = timeouts.clone();
    e.on_timeout(move |ev| {
        assert_eq!(ev.limit_ms, 0);
        t.fetch_add(1, Ordering::SeqCst);
    });
    let er = errors.clone();
    e.on_error(move |_, err| {
        assert_eq!(err.code(), "timeout");
        er.fetch_add(1, Ordering::SeqCst);
    });
    let err = e.generate("Hello", greedy(4), |_, _| {}).unwrap_err();
    assert_eq!(err.code(), "timeout");
    assert_eq!(
        (
            timeouts.load(Ordering::SeqCst),
            errors.load(Ordering::SeqCst)
        ),
        (1, 1)
    );

    // Memory pressure: a KV budget that holds one request (~45 tokens) but not two.
    let budget = model().new_cache(60).unwrap().bytes();
    let e = Arc::new(
        lowbit::streaming::StreamingInference::from_model(
            model(),
            "smollm2".into(),
            InferenceConfig {
                kv_budget_bytes: budget,
                ..test_config()
            },
        )
        .unwrap(),
    );
    let pressure = Arc::new(AtomicUsize::new(0));
    let p = pressure.clone();
    e.on_memory_pressure(move |m| {
        assert!(m.budget_bytes == budget && !m.action.is_empty());
        p.fetch_add(1, Ordering::SeqCst);
    });
    let handles: Vec<_> = ["The sky is", "Water is"]
        .into_iter()
        .map(|p| {
            let e = e.clone();
            std::thread::spawn(move || e.generate(p, greedy(40), |_, _| {}).unwrap())
        })
        .collect();
    for h in handles {
        assert!(!h.join().unwrap().is_empty());
    }
    assert!(pressure.load(Ordering::SeqCst) >= 1);
    let st = e.performance_stats();
    assert_eq!(
        st.max_running_requests, 1,
        "the budget let only one run at a time"
    );
    assert!(st
        .batch_size_history
        .iter()
        .any(|c| c.reason == "memory_pressure"));
}

#[test]
fn performance_stats_report_latency_throughput_memory_and_batch_history() {
    let e = engine(test_config());
    for p in ["One", "Two", "Three"] {
        e.generate(p, greedy(8), |_, _| {}).unwrap();
    }
    let s = e.performance_stats();
    assert_eq!(s.requests_completed, 3);
    assert!(s.tokens_generated >= 3);
    assert!(s.time_to_first_token_ms > 0.0 && s.tokens_per_second > 0.0);
    assert!(s.token_latency_p95_ms >= s.token_latency_p50_ms && s.token_latency_p50_ms > 0.0);
    assert!(s.weight_bytes > 100_000_000 && s.kv_cache_peak_bytes > 0);
    assert_eq!(s.batch_size_history[0].reason, "initial");
}

#[test]
fn a_toml_config_file_sets_up_the_engine() {
    let dir = std::env::temp_dir().join(format!("lowbit-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("engine.toml");
    std::fs::write(
        &file,
        format!(
            "[model]\npath = {:?}\n\n[quantization]\nmethod = \"int8\"\ngroup_size = 32\n\n\
             [runtime]\nbackend = \"cpu\"\n\n[kv_cache]\nmax_seq_len = 300\n\n\
             [performance]\nmax_batch_size = 3\nadaptive_batch_size = false\n\
             optimize_for_latency = true\n",
            smollm2_path().display().to_string()
        ),
    )
    .unwrap();
    let cfg = InferenceConfig::from_file(&file).unwrap();
    assert_eq!(
        cfg.plan.model,
        lowbit::plan::ModelChoice::File(smollm2_path())
    );
    assert_eq!(cfg.plan.weights.method(), "int8");
    assert_eq!(cfg.plan.weights.label(), "int8-g32-asym");
    assert_eq!(cfg.plan.backend.name, "cpu");
    assert_eq!(
        (cfg.plan.kv_cache.max_seq_len, cfg.max_batch_size),
        (300, 3)
    );
    assert!(!cfg.adaptive_batch_size && cfg.optimize_for_latency);
    // A value the validator rejects is an INVALID_CONFIG error, not a silent default.
    std::fs::write(&file, "[runtime]\nbackend = \"webgpu\"\nfallback = 7\n").unwrap();
    let e = InferenceConfig::from_file(&file).unwrap_err();
    assert_eq!(e.code.as_str(), "INVALID_CONFIG", "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn optimize_for_browser_reloads_the_model_under_the_profile() {
    let mut cfg = test_config();
    cfg.plan.weights = lowbit::core::adapter::QuantPlan::for_method(
        "int2",
        32,
        lowbit::core::quant::Scheme::Symmetric,
    )
    .unwrap();
    let e = lowbit::streaming::StreamingInference::new(smollm2_path(), cfg).unwrap();
    assert!(e.generate("Hi", greedy(2), |_, _| {}).is_ok());
    // Safari has no 2-bit kernels: the profile's validation moves the weights to 4 bits.
    let e = e.optimize_for_browser("safari").unwrap();
    assert_eq!(e.config().plan.weights.method(), "int4");
    assert_eq!(e.model().plan().method(), "int4");
    assert_eq!(e.config().plan.backend.profile.as_deref(), Some("safari"));
    assert!(!e.generate("Hi", greedy(4), |_, _| {}).unwrap().is_empty());
    let err = e.optimize_for_browser("netscape").map(|_| ()).unwrap_err();
    assert_eq!(err.code(), "INVALID_CONFIG", "{err}");
    // An engine over an already loaded model has no file to reload.
    let e = lowbit::streaming::StreamingInference::from_model(model(), "m".into(), test_config())
        .unwrap();
    let err = e.optimize_for_browser("chrome").map(|_| ()).unwrap_err();
    assert_eq!(err.code(), "INVALID_CONFIG", "{err}");
}

#[test]
fn latency_mode_shrinks_the_batch_that_normal_mode_keeps() {
    let run = |latency: bool| {
        // A target no step reaches: only latency mode can shrink the batch.
        let e = engine(InferenceConfig {
            target_token_latency: Duration::from_secs(60),
            initial_batch_size: 4,
            ..test_config()
        });
        if latency {
            e.optimize_for_latency();
        }
        // One request alone first: the yardstick of latency mode.
        e.generate("Hello", greedy(4), |_, _| {}).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let e = e.clone();
                std::thread::spawn(move || {
                    e.generate(format!("Story number {i}:"), greedy(12), |_, _| {})
                        .unwrap()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        e.performance_stats().batch_size_history
    };
    let normal = run(false);
    assert!(
        normal.iter().all(|c| c.reason != "latency_over_target"),
        "{normal:?}"
    );
    let fast = run(true);
    assert!(
        fast.iter().any(|c| c.reason == "latency_over_target"),
        "{fast:?}"
    );
}
