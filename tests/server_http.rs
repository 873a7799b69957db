//! The OpenAI-compatible HTTP API against a running server on loopback: completions and chat
//! completions, whole and as server-sent events ending in `[DONE]`, usage equal to the
//! tokenizer's counts, models/health, API key, bad input, SSE disconnects and a seeded fuzz run.

mod server_common;

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use server_common::*;
use std::time::Duration;

const REPLY: Duration = Duration::from_secs(60);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(REPLY).build().unwrap()
}

async fn post(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", s.http()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The `data:` payloads of an SSE response, in order.
async fn sse(s: &TestServer, path: &str, body: &Value) -> Vec<String> {
    let r = client()
        .post(format!("{}{path}", s.http()))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    // Events are `data: ...` lines separated by blank lines.
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_owned())
        .collect()
}

fn chat_prompt_tokens(msg: &str) -> usize {
    let tok = model();
    let tok = tok.tokenizer();
    let text = tok.apply_chat_template(&[("user", msg)], true).unwrap();
    tok.encode(&text, false).unwrap().len()
}

#[tokio::test]
async fn completions_whole_and_streamed_agree_with_usage_from_the_tokenizer() {
    let s = server();
    let prompt = "The capital of France is";
    let body = json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": prompt,
                      "max_tokens": 8, "temperature": 0});
    let (status, v) = post(&s, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    let text = v["choices"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(text, greedy_reference(&s.engine, prompt, 8));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let u = &v["usage"];
    assert_eq!(
        u["prompt_tokens"].as_u64().unwrap() as usize,
        prompt_tokens(prompt)
    );
    assert_eq!(u["completion_tokens"], 8);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap() as usize,
        prompt_tokens(prompt) + 8
    );

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse(&s, "/v1/completions", &sbody).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(&last["usage"], u);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null() && c["usage"].is_null()));
}

#[tokio::test]
async fn chat_completions_use_the_models_template() {
    let s = server();
    let msg = "What is the capital of France?";
    let body = json!({"messages": [{"role": "user", "content": msg}], "max_tokens": 6,
                      "temperature": 0});
    let (status, v) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!content.is_empty());
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        chat_prompt_tokens(msg)
    );

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse(&s, "/v1/chat/completions", &sbody).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert_eq!(chunks.last().unwrap()["usage"], v["usage"]);
}

#[tokio::test]
async fn models_health_and_unknown_routes() {
    let s = server();
    let v: Value = client()
        .get(format!("{}/v1/models", s.http()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(v["data"][0]["meta"]["quantization"], "int8");
    let v: Value = client()
        .get(format!("{}/health", s.http()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["status"].as_str(), v["active_requests"].as_u64()),
        (Some("ok"), Some(0))
    );
    let r = client()
        .get(format!("{}/v1/nothing", s.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}

#[tokio::test]
async fn bad_input_gets_4xx_with_stable_codes() {
    let s = server();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/completions",
            "{not json".into(),
            400,
            "invalid_request",
        ),
        ("/v1/completions", "[1]".into(), 400, "invalid_request"),
        (
            "/v1/completions",
            json!({}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": 7}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "word ".repeat(300)}).to_string(),
            400,
            "CONTEXT_OVERFLOW",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": -3}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 1u64 << 40}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": 9}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stream": "yes"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": [1, 2]}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "model": "../../etc/passwd"}).to_string(),
            404,
            "model_not_found",
        ),
        (
            "/v1/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "hi"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(20_000)}).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = client()
            .post(format!("{}{path}", s.http()))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body:.80}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path} {body:.80} -> {v}");
    }
    // The server is still fine.
    let (status, _) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn api_key_guards_everything_but_health() {
    let s = start(
        engine(test_config()),
        lowbit::server::ServerConfig {
            port: 0,
            api_key: Some("sekrit".into()),
            ..Default::default()
        },
    );
    let url = format!("{}/v1/models", s.http());
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );
    assert_eq!(
        client()
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client()
            .get(&url)
            .bearer_auth("sekrit")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let h = client()
        .get(format!("{}/health", s.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let ws = tokio_tungstenite::connect_async(s.ws()).await;
    assert!(ws.is_err(), "the WebSocket upgrade needs the key too");
    let ws = tokio_tungstenite::connect_async(format!("{}?api_key=sekrit", s.ws())).await;
    assert!(ws.is_ok());
}

#[tokio::test]
async fn an_sse_client_that_disconnects_frees_its_request() {
    let s = server();
    let r = client()
        .post(format!("{}/v1/completions", s.http()))
        .json(
            &json!({"prompt": "Once upon a time, in a land far away,", "max_tokens": 48,
                      "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(s.engine.active_requests(), 1);
    drop(body);
    assert_eq!(s.wait_idle(Duration::from_secs(10)).await, 0);
    assert!(s.engine.performance_stats().tokens_generated < 48);
}

#[tokio::test]
async fn seeded_fuzz_every_body_is_answered() {
    let s = server();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf022);
    let vals = [
        json!(null),
        json!(-1),
        json!(0),
        json!(3),
        json!(1e30),
        json!("x"),
        json!(""),
        json!([]),
        json!({}),
        json!(true),
        json!(["a"]),
        json!(0.5),
        json!(2.5),
    ];
    let keys = [
        "prompt",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "stop",
        "model",
        "seed",
    ];
    let t0 = std::time::Instant::now();
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..200 {
        let chat = rng.gen_bool(0.3);
        let mut o = if chat {
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        } else {
            json!({"prompt": "Hi there", "max_tokens": 2})
        };
        for _ in 0..rng.gen_range(0..3) {
            let k = keys[rng.gen_range(0..keys.len())];
            o[k] = vals[rng.gen_range(0..vals.len())].clone();
        }
        let mut body = o.to_string().into_bytes();
        if rng.gen_bool(0.25) {
            let cut = rng.gen_range(0..body.len());
            body.truncate(cut);
        } else if rng.gen_bool(0.2) {
            let j = rng.gen_range(0..body.len());
            body[j] = rng.gen();
        }
        let path = if chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let r = client()
            .post(format!("{}{path}", s.http()))
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("body {i} {:?}: {e}", String::from_utf8_lossy(&body)));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert!(text.contains("usage"), "{text}");
            }
            400..=499 => {
                rejected += 1;
                let v: Value = serde_json::from_str(&text).unwrap();
                assert!(v["error"]["code"].is_string(), "{text}");
            }
            _ => panic!(
                "body {i} {:?} -> {status} {text}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    assert!(ok > 0 && rejected > 0, "{ok} ok, {rejected} rejected");
    assert!(t0.elapsed() < Duration::from_secs(240));
    assert_eq!(s.wait_idle(Duration::from_secs(10)).await, 0);
}
