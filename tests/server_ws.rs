//! The WebSocket protocol (SPEC §3) against a running server on loopback: every frame type,
//! both message forms, stop mid-stream, bad input, disconnects, busy, concurrent clients and a
//! seeded fuzz run. Model: SmolLM2 int8 on the CPU backend, greedy.

mod server_common;

use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use server_common::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Every reply must come within this (a hang fails the test).
const REPLY: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let init = recv(&mut ws).await;
    (ws, init)
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(REPLY, ws.next())
            .await
            .expect("no reply in time")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("frames are JSON");
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Reads frames up to the terminal one (`completion` or `error`); returns the token frames
/// and the terminal frame.
async fn until_done(ws: &mut Ws) -> (Vec<Value>, Value) {
    let mut tokens = Vec::new();
    loop {
        let f = recv(ws).await;
        match f["type"].as_str() {
            Some("token") => tokens.push(f),
            Some("completion") | Some("error") => return (tokens, f),
            other => panic!("unexpected frame type {other:?}: {f}"),
        }
    }
}

fn config(prompt: &str, n: usize) -> Value {
    json!({"type": "config", "prompt": prompt, "max_tokens": n, "temperature": 0.0,
           "top_p": 0.9, "options": {"stream": true}})
}

#[tokio::test]
async fn every_frame_type_and_field_with_usage_equal_to_the_tokenizer() {
    let s = server();
    let (mut ws, init) = connect(&s.ws()).await;
    assert_eq!(init["type"], "init");
    assert_eq!(init["model_info"]["name"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(init["model_info"]["quantization"], "int8");
    let prompt = "The capital of France is";
    send(&mut ws, config(prompt, 8)).await;
    let (tokens, done) = until_done(&mut ws).await;
    assert_eq!(done["type"], "completion", "{done}");
    let mut acc = String::new();
    for (i, t) in tokens.iter().enumerate() {
        acc.push_str(t["token"].as_str().unwrap());
        assert!(t["token_id"].is_u64(), "{t}");
        assert_eq!(t["generated_text"].as_str().unwrap(), acc);
        assert_eq!(t["finished"].as_bool().unwrap(), i + 1 == tokens.len());
    }
    assert_eq!(done["generated_text"].as_str().unwrap(), acc);
    assert_eq!(done["finish_reason"], "length");
    let u = &done["usage"];
    assert_eq!(
        u["prompt_tokens"].as_u64().unwrap() as usize,
        prompt_tokens(prompt)
    );
    assert_eq!(
        u["completion_tokens"].as_u64().unwrap() as usize,
        tokens.len()
    );
    assert_eq!(tokens.len(), 8);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 8
    );
    // Greedy: the same text as the library gives.
    assert_eq!(acc, greedy_reference(&s.engine, prompt, 8));
}

#[tokio::test]
async fn the_older_untyped_form_and_non_streaming_option_work() {
    let s = server();
    let (mut ws, _) = connect(&s.ws()).await;
    let prompt = "Once upon a time";
    send(
        &mut ws,
        json!({"prompt": prompt, "maxTokens": 6, "temperature": 0, "precision": "int8"}),
    )
    .await;
    let (tokens, done) = until_done(&mut ws).await;
    assert_eq!(done["type"], "completion", "{done}");
    assert_eq!(tokens.len(), 6);
    let legacy = done["generated_text"].as_str().unwrap().to_owned();
    assert_eq!(legacy, greedy_reference(&s.engine, prompt, 6));
    // options.stream = false: only the completion frame.
    let mut c = config(prompt, 6);
    c["options"]["stream"] = json!(false);
    send(&mut ws, c).await;
    let (tokens, done) = until_done(&mut ws).await;
    assert!(tokens.is_empty());
    assert_eq!(done["generated_text"].as_str().unwrap(), legacy);
}

#[tokio::test]
async fn stop_mid_stream_cancels_and_the_connection_stays_usable() {
    let s = server();
    let (mut ws, _) = connect(&s.ws()).await;
    send(
        &mut ws,
        config("Once upon a time, there was a dragon who", 48),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(recv(&mut ws).await["type"], "token");
    }
    send(&mut ws, json!({"type": "control", "action": "stop"})).await;
    let (more, done) = until_done(&mut ws).await;
    assert_eq!(done["type"], "completion", "{done}");
    assert_eq!(done["finish_reason"], "cancelled");
    // Stops long before the limit. Frames already in flight still arrive: how many depends on
    // how fast this machine decodes while the stop travels, so that bound is loose.
    let n = done["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        n < 48 && more.len() <= 32,
        "{n} tokens, {} after stop",
        more.len()
    );
    send(&mut ws, json!({"type": "control", "action": "stop"})).await;
    let f = recv(&mut ws).await;
    assert_eq!(
        (f["type"].as_str(), f["error"].as_str()),
        (Some("error"), Some("not_running"))
    );
    send(&mut ws, config("Hello", 3)).await;
    assert_eq!(until_done(&mut ws).await.1["type"], "completion");
    assert_eq!(s.wait_idle(Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn bad_input_gets_error_frames_with_stable_codes() {
    let s = server();
    let (mut ws, _) = connect(&s.ws()).await;
    let long_prompt = "word ".repeat(400);
    let cases: Vec<(Value, &str)> = vec![
        (json!("not json {"), "invalid_request"),
        (json!([1, 2, 3]), "invalid_request"),
        (json!({"type": 5}), "invalid_request"),
        (json!({"type": "bogus"}), "invalid_request"),
        (json!({"type": "config"}), "invalid_request"),
        (json!({"type": "config", "prompt": ""}), "invalid_request"),
        (json!({"type": "config", "prompt": 123}), "invalid_request"),
        (
            json!({"type": "config", "prompt": long_prompt}),
            "CONTEXT_OVERFLOW",
        ),
        (
            json!({"type": "config", "prompt": "hi", "max_tokens": -1}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "max_tokens": 1e12}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "max_tokens": 100000}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "max_tokens": "5"}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "temperature": 5.0}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "temperature": -0.1}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "temperature": "hot"}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "top_p": 0}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "options": 3}),
            "invalid_request",
        ),
        (
            json!({"type": "config", "prompt": "hi", "model": "/etc/passwd"}),
            "model_not_found",
        ),
        (
            json!({"type": "config", "prompt": "hi", "precision": "int2"}),
            "invalid_request",
        ),
        (json!({"type": "control", "action": "stop"}), "not_running"),
        (
            json!({"type": "control", "action": "dance"}),
            "invalid_request",
        ),
        (json!({"type": "control"}), "invalid_request"),
    ];
    for (msg, code) in cases {
        let text = match &msg {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        ws.send(Message::Text(text.into())).await.unwrap();
        let f = recv(&mut ws).await;
        assert_eq!(f["type"], "error", "{msg} -> {f}");
        assert_eq!(f["error"], code, "{msg} -> {f}");
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(f["recoverable"], true);
    }
    ws.send(Message::Binary(vec![0, 159, 146, 150].into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["error"], "invalid_request");
    // (An oversized message ends the connection with close code 1009: tests/server_limits.rs.)
    // Still usable.
    send(&mut ws, config("Hello", 2)).await;
    assert_eq!(until_done(&mut ws).await.1["type"], "completion");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_request() {
    let s = server();
    let (mut ws, _) = connect(&s.ws()).await;
    send(&mut ws, config("Once upon a time, in a land far away,", 48)).await;
    assert_eq!(recv(&mut ws).await["type"], "token");
    assert_eq!(s.engine.active_requests(), 1);
    drop(ws);
    assert_eq!(s.wait_idle(Duration::from_secs(10)).await, 0);
    let st = s.engine.performance_stats();
    assert!(st.tokens_generated < 48, "{st:?}");
}

#[tokio::test]
async fn six_concurrent_clients_get_the_single_client_greedy_outputs() {
    // A generous latency target: the batch must not shrink because other tests share the CPU.
    let s = start(
        engine(lowbit::streaming::InferenceConfig {
            target_token_latency: Duration::from_secs(30),
            ..test_config()
        }),
        lowbit::server::ServerConfig {
            port: 0,
            ..Default::default()
        },
    );
    let prompts = [
        "The capital of France is",
        "List three colors:",
        "def fibonacci(n):",
        "The best way to learn is",
        "Water boils at",
        "My favourite animal is",
    ];
    let reference: Vec<String> = prompts
        .iter()
        .map(|p| greedy_reference(&s.engine, p, 16))
        .collect();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let url = s.ws();
            let p = p.to_string();
            tokio::spawn(async move {
                let (mut ws, _) = connect(&url).await;
                send(&mut ws, config(&p, 16)).await;
                let (tokens, done) = until_done(&mut ws).await;
                assert_eq!(
                    tokens.len(),
                    done["usage"]["completion_tokens"].as_u64().unwrap() as usize
                );
                done["generated_text"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    for (t, want) in tasks.into_iter().zip(&reference) {
        assert_eq!(&t.await.unwrap(), want);
    }
    // They ran together: the scheduler kept more than one request per step, and decoded them
    // in one batched forward pass (each weight read once for all of them).
    let st = s.engine.performance_stats();
    assert!(st.max_running_requests >= 2, "{st:?}");
    assert!(st.max_decode_batch >= 2, "{st:?}");
}

#[tokio::test]
async fn over_the_concurrency_limit_is_busy_not_a_hang() {
    let s = start(
        engine(lowbit::streaming::InferenceConfig {
            max_concurrent_requests: 1,
            ..test_config()
        }),
        lowbit::server::ServerConfig {
            port: 0,
            ..Default::default()
        },
    );
    let (mut a, _) = connect(&s.ws()).await;
    send(&mut a, config("Once upon a time, in a land far away,", 48)).await;
    assert_eq!(recv(&mut a).await["type"], "token");
    let (mut b, _) = connect(&s.ws()).await;
    send(&mut b, config("Hello", 4)).await;
    let f = recv(&mut b).await;
    assert_eq!(
        (f["type"].as_str(), f["error"].as_str()),
        (Some("error"), Some("busy"))
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", s.http()))
        .json(&json!({"prompt": "Hello", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    send(&mut a, json!({"type": "control", "action": "stop"})).await;
    until_done(&mut a).await;
    send(&mut b, config("Hello", 2)).await;
    assert_eq!(until_done(&mut b).await.1["type"], "completion");
}

/// A random JSON value of bounded depth.
fn random_value(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen_range(-1e6..1e6)),
        3 => json!(rng.gen_range(-100i64..1000)),
        4 => {
            json!(["", "stop", "config", "control", "hi", "\u{1F600}", "int8"][rng.gen_range(0..7)])
        }
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "type",
                "prompt",
                "max_tokens",
                "maxTokens",
                "temperature",
                "top_p",
                "action",
                "options",
                "model",
                "stop",
                "seed",
                "stream",
                "precision",
            ];
            Value::Object(
                (0..rng.gen_range(0..5))
                    .map(|_| {
                        (
                            keys[rng.gen_range(0..keys.len())].to_owned(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// A valid message, then mutated: a field replaced by a random value, truncated, or a byte
/// changed.
pub fn fuzz_message(rng: &mut rand::rngs::StdRng) -> String {
    let mut v = if rng.gen_bool(0.5) {
        json!({"type": "config", "prompt": "Hi there", "max_tokens": rng.gen_range(1..4),
               "temperature": 0.0})
    } else if rng.gen_bool(0.3) {
        json!({"type": "control", "action": "stop"})
    } else {
        random_value(rng, 0)
    };
    if rng.gen_bool(0.5) {
        if let Some(o) = v.as_object_mut() {
            let keys = [
                "type",
                "prompt",
                "max_tokens",
                "temperature",
                "action",
                "options",
                "top_p",
            ];
            o.insert(
                keys[rng.gen_range(0..keys.len())].into(),
                random_value(rng, 1),
            );
        }
    }
    let mut s = v.to_string();
    match rng.gen_range(0..4) {
        0 if !s.is_empty() => {
            let cut = rng.gen_range(0..s.len());
            s = String::from_utf8_lossy(&s.as_bytes()[..cut]).into_owned();
        }
        1 if !s.is_empty() => {
            let mut b = s.into_bytes();
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen_range(32..127);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        _ => {}
    }
    s
}

#[tokio::test]
async fn seeded_fuzz_every_message_is_answered_and_nothing_hangs() {
    let s = server();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let (mut ws, _) = connect(&s.ws()).await;
    let t0 = std::time::Instant::now();
    let (mut errors, mut completions) = (0, 0);
    for i in 0..300 {
        let m = fuzz_message(&mut rng);
        ws.send(Message::Text(m.clone().into())).await.unwrap();
        let (_, done) = until_done(&mut ws).await;
        match done["type"].as_str() {
            Some("error") => errors += 1,
            Some("completion") => completions += 1,
            _ => panic!("message {i} {m:?} got {done}"),
        }
    }
    assert_eq!(errors + completions, 300);
    assert!(
        errors > 0 && completions > 0,
        "{errors} errors, {completions} completions"
    );
    assert!(t0.elapsed() < Duration::from_secs(240));
    assert_eq!(s.wait_idle(Duration::from_secs(10)).await, 0);
}
