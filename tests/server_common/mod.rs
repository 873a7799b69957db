//! Servers for the end-to-end server tests: the SmolLM2 model loaded once per test binary
//! (int8, CPU backend), and per-test engines and servers on 127.0.0.1 with an OS-assigned port,
//! each on its own thread and runtime so they outlive any one test's runtime.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

use lowbit::core::adapter::TextModel;
use lowbit::server::{serve, ServerConfig};
use lowbit::streaming::{InferenceConfig, StreamingInference};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The model, loaded once.
pub fn model() -> Arc<dyn TextModel> {
    static M: OnceLock<Arc<dyn TextModel>> = OnceLock::new();
    M.get_or_init(|| {
        let (m, _) = test_config()
            .plan
            .load(&mut |_, _, _| {})
            .expect("SmolLM2 loads");
        Arc::from(m)
    })
    .clone()
}

/// Small limits so tests stay quick: context 256, at most 48 new tokens.
pub fn test_config() -> InferenceConfig {
    let mut plan = common::smollm2_plan("cpu", "int8");
    plan.kv_cache.max_seq_len = 256;
    InferenceConfig {
        plan,
        max_prompt_tokens: 200,
        max_new_tokens: 48,
        max_concurrent_requests: 16,
        ..InferenceConfig::default()
    }
}

/// A fresh engine over the shared model.
pub fn engine(config: InferenceConfig) -> Arc<StreamingInference> {
    Arc::new(
        StreamingInference::from_model(model(), "SmolLM2-135M-Instruct.Q4_1".into(), config)
            .expect("engine starts"),
    )
}

/// A running server over `engine`.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The engine behind it.
    pub engine: Arc<StreamingInference>,
}

impl TestServer {
    /// `http://addr`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `ws://addr/ws`.
    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
    /// Polls `/health` until no request is active (or `limit` passes); returns the last count.
    pub async fn wait_idle(&self, limit: Duration) -> u64 {
        let http = reqwest::Client::new();
        let t0 = std::time::Instant::now();
        loop {
            let v: serde_json::Value = http
                .get(format!("{}/health", self.http()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let n = v["active_requests"].as_u64().unwrap();
            if n == 0 || t0.elapsed() > limit {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts a server for `engine` with `config` (port 0 = OS-assigned) on its own thread.
pub fn start(engine: Arc<StreamingInference>, config: ServerConfig) -> TestServer {
    let (tx, rx) = std::sync::mpsc::channel();
    let e = engine.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            serve(l, e, config, std::future::pending()).await.unwrap();
        });
    });
    TestServer {
        addr: rx.recv().unwrap(),
        engine,
    }
}

/// A server with the test limits.
pub fn server() -> TestServer {
    start(
        engine(test_config()),
        ServerConfig {
            port: 0,
            max_frame_bytes: 16 * 1024,
            max_body_bytes: 16 * 1024,
            ..ServerConfig::default()
        },
    )
}

/// The prompt's token count as the tokenizer gives it.
pub fn prompt_tokens(text: &str) -> usize {
    model().tokenizer().encode(text, true).unwrap().len()
}

/// The greedy completion of `prompt` through the library, for comparison.
pub fn greedy_reference(engine: &StreamingInference, prompt: &str, n: usize) -> String {
    let opts = lowbit::core::generate::GenerateOptions {
        max_tokens: n,
        sampling: lowbit::core::generate::SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    engine.generate(prompt, opts, |_, _| {}).unwrap()
}

/// The SmolLM2 file (for engines that load it themselves).
pub fn smollm2_path() -> std::path::PathBuf {
    common::smollm2()
}
