//! Operations: `/metrics` in the Prometheus text format with counters that move by what the
//! requests did, `/health/ready` (200 serving, 503 draining), and draining on shutdown, both
//! in-process and for the real `lowbit serve` binary on SIGTERM.
//! Model: SmolLM2 int8 on the CPU backend, greedy.

mod server_common;

use futures::{SinkExt, StreamExt};
use lowbit::server::{serve, ServerConfig};
use serde_json::{json, Value};
use server_common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Every answer must come within this (a hang fails the test).
const REPLY: Duration = Duration::from_secs(60);

/// One metric family of an exposition: its type and its samples (`name{labels}` → value).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: BTreeMap<String, f64>,
}

/// Parses the Prometheus text format strictly: `# HELP` and `# TYPE` before a family's
/// samples, each sample `name{labels} value` or `name value`, names of histogram samples
/// `_bucket`/`_sum`/`_count` of their family, values numbers or `+Inf`.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(!help.trim().is_empty(), "{line}");
            helped.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            let prev = families.insert(
                name.to_owned(),
                Family {
                    kind: kind.to_owned(),
                    ..Family::default()
                },
            );
            assert!(prev.is_none(), "family typed twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad name: {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').expect("label k=v");
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(
                    v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                    "{line}"
                );
            }
        }
        let family = families
            .iter_mut()
            .find(|(f, fam)| {
                name == f.as_str()
                    || (fam.kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.as_str())))
            })
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"))
            .1;
        let prev = family.samples.insert(series.to_owned(), value);
        assert!(prev.is_none(), "sample twice: {line}");
    }
    families
}

fn sample(m: &BTreeMap<String, Family>, series: &str) -> f64 {
    let name = series.split('{').next().unwrap();
    let family = m
        .get(name)
        .or_else(|| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).and_then(|f| m.get(f)))
        })
        .unwrap_or_else(|| panic!("no family for {series}"));
    *family
        .samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}: {:?}", family.samples))
}

async fn scrape(base: &str) -> BTreeMap<String, Family> {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse_exposition(&r.text().await.unwrap())
}

/// Reads an SSE response to its end; returns the `data:` payloads.
async fn sse_events(r: reqwest::Response) -> Vec<String> {
    let body = tokio::time::timeout(REPLY, r.text())
        .await
        .expect("the stream ends in time")
        .unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_tokens_and_latencies() {
    let s = server();
    let base = s.http();
    let http = reqwest::Client::new();
    let before = scrape(&base).await;
    for outcome in [
        "completed",
        "stopped",
        "cancelled",
        "timeout",
        "refused_busy",
    ] {
        let series = format!("lowbit_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&before, &series), 0.0, "{series}");
    }
    assert!(sample(&before, "lowbit_weight_bytes") > 1e7);
    assert_eq!(sample(&before, "lowbit_ready"), 1.0);

    // Three whole completions and one streamed chat, each cut by max_tokens (so every
    // generated token reaches the client and the latency counts are exact).
    let (mut prompt_in, mut tokens_out, mut gaps) = (0.0, 0.0, 0.0);
    for (i, n) in [5usize, 7, 9].into_iter().enumerate() {
        let v: Value = http
            .post(format!("{base}/v1/completions"))
            .json(&json!({"prompt": format!("Count to {i}:"), "max_tokens": n, "temperature": 0}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
        assert_eq!(v["usage"]["completion_tokens"], n, "{v}");
        prompt_in += v["usage"]["prompt_tokens"].as_f64().unwrap();
        tokens_out += n as f64;
        gaps += (n - 1) as f64;
    }
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 6, "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    assert_eq!(last["usage"]["completion_tokens"], 6);
    prompt_in += last["usage"]["prompt_tokens"].as_f64().unwrap();
    tokens_out += 6.0;
    gaps += 5.0;

    // A WebSocket client stops its generation after the first token.
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws()).await.unwrap();
    ws.next().await.unwrap().unwrap(); // init
    let config = json!({"type": "config", "prompt": "Once upon a time", "max_tokens": 40,
        "temperature": 0});
    ws.send(Message::Text(config.to_string().into()))
        .await
        .unwrap();
    let mut stopped_usage = None;
    let mut sent_stop = false;
    while let Some(Ok(Message::Text(t))) = tokio::time::timeout(REPLY, ws.next()).await.unwrap() {
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("token") if !sent_stop => {
                sent_stop = true;
                let stop = json!({"type": "control", "action": "stop"});
                ws.send(Message::Text(stop.to_string().into()))
                    .await
                    .unwrap();
            }
            Some("completion") => {
                assert_eq!(v["finish_reason"], "cancelled", "{v}");
                stopped_usage = Some(v["usage"].clone());
                break;
            }
            _ => {}
        }
    }
    let stopped = stopped_usage.expect("a completion frame after the stop");
    prompt_in += stopped["prompt_tokens"].as_f64().unwrap();
    let stopped_tokens = stopped["completion_tokens"].as_f64().unwrap();
    assert!((1.0..40.0).contains(&stopped_tokens), "{stopped}");
    tokens_out += stopped_tokens;

    // A prompt over the limit is refused with its code.
    let long = "word ".repeat(400);
    let r = http
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": long, "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(s.wait_idle(REPLY).await, 0);

    let m = scrape(&base).await;
    let count = |o: &str| sample(&m, &format!("lowbit_requests_total{{outcome=\"{o}\"}}"));
    assert_eq!(count("completed"), 4.0);
    assert_eq!(count("stopped"), 1.0);
    assert_eq!(count("cancelled"), 0.0);
    assert_eq!(count("refused_busy"), 0.0);
    assert_eq!(
        sample(
            &m,
            "lowbit_requests_total{outcome=\"error\",code=\"CONTEXT_OVERFLOW\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "lowbit_prompt_tokens_total"), prompt_in);
    assert_eq!(sample(&m, "lowbit_completion_tokens_total"), tokens_out);
    // Five requests produced a first token; every later token is one latency sample.
    assert_eq!(sample(&m, "lowbit_time_to_first_token_seconds_count"), 5.0);
    assert_eq!(
        sample(&m, "lowbit_time_to_first_token_seconds_bucket{le=\"+Inf\"}"),
        5.0
    );
    assert!(sample(&m, "lowbit_time_to_first_token_seconds_sum") > 0.0);
    assert_eq!(
        sample(&m, "lowbit_token_latency_seconds_count"),
        gaps + stopped_tokens - 1.0
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = m["lowbit_token_latency_seconds"]
        .samples
        .iter()
        .filter(|(k, _)| k.contains("_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 5);
    assert!(buckets.iter().all(|&b| b <= gaps + stopped_tokens - 1.0));
    for g in ["lowbit_queue_length", "lowbit_active_requests"] {
        assert_eq!(sample(&m, g), 0.0, "{g}");
    }
    assert!(sample(&m, "lowbit_batch_size") >= 1.0);
    assert_eq!(m["lowbit_kv_cache_bytes"].kind, "gauge");
    assert_eq!(m["lowbit_requests_total"].kind, "counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_counts_as_cancelled() {
    let s = server();
    let base = s.http();
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 48, "stream": true}))
        .send()
        .await
        .unwrap();
    tokio::time::timeout(REPLY, r.chunk())
        .await
        .unwrap()
        .unwrap()
        .expect("a first chunk");
    drop(r);
    assert_eq!(s.wait_idle(REPLY).await, 0);
    // The server sees the disconnect when it next writes: wait for the count.
    let t0 = std::time::Instant::now();
    loop {
        let m = scrape(&base).await;
        if sample(&m, "lowbit_requests_total{outcome=\"cancelled\"}") == 1.0 {
            assert_eq!(
                sample(&m, "lowbit_requests_total{outcome=\"completed\"}"),
                0.0
            );
            break;
        }
        assert!(t0.elapsed() < REPLY, "the cancel was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that drains when `stop` fires; `done` receives serve's result.
fn start_stoppable(
    config: ServerConfig,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    std::sync::mpsc::Receiver<std::io::Result<()>>,
) {
    let engine = engine(test_config());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(l.local_addr().unwrap()).unwrap();
            let stop = async {
                let _ = stop_rx.await;
            };
            let _ = done_tx.send(serve(l, engine, config, stop).await);
        });
    });
    (
        format!("http://{}", addr_rx.recv().unwrap()),
        stop_tx,
        done_rx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_running_requests_and_refuses_new_ones() {
    let (base, stop, done) = start_stoppable(ServerConfig {
        port: 0,
        ..ServerConfig::default()
    });
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");

    // An idle WebSocket session and a running stream.
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // init
    let mut r = http
        .post(format!("{base}/v1/completions"))
        .json(
            &json!({"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
            "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(REPLY, r.chunk())
        .await
        .unwrap()
        .unwrap()
        .expect("a first chunk");
    stop.send(()).unwrap();

    // Draining: not ready, new work refused, liveness still fine.
    let t0 = std::time::Instant::now();
    let not_ready = loop {
        let r = http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break r;
        }
        assert!(t0.elapsed() < REPLY, "readiness never went 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        not_ready.json::<Value>().await.unwrap()["status"],
        "draining"
    );
    let refused = http
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "draining"
    );
    let live = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let m = scrape(&base).await;
    assert_eq!(sample(&m, "lowbit_ready"), 0.0);

    // The idle session is told and closed with 1001.
    let mut closed = None;
    while let Some(msg) = tokio::time::timeout(REPLY, ws.next()).await.unwrap() {
        match msg.unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["error"], "draining", "{v}");
            }
            Message::Close(f) => {
                closed = f.map(|f| f.code);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(closed, Some(CloseCode::Away));

    // The running stream finishes whole.
    let mut body = String::from_utf8(first.to_vec()).unwrap();
    while let Some(c) = tokio::time::timeout(REPLY, r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        body.push_str(std::str::from_utf8(&c).unwrap());
    }
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let last: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 40, "{last}");

    // Then the server stops by itself.
    let result = tokio::task::spawn_blocking(move || done.recv_timeout(REPLY))
        .await
        .unwrap()
        .expect("serve returns after the drain");
    result.unwrap();
}

/// Kills the server if the test fails before it exited (after a clean exit the signal
/// finds no process).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_real_binary_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args([
            "serve",
            "--backend",
            "cpu",
            "--threads",
            "1",
            "--quant",
            "int8",
        ])
        .args(["--port", "0", "--ctx", "256", "--max-new-tokens", "64"])
        .arg("--model")
        .arg(smollm2_path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let stderr = child.stderr.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let base = loop {
        let line = line_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server starts");
        if let Some(rest) = line.split(" on http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    let http = reqwest::Client::new();
    let mut r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 32, "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(REPLY, r.chunk())
        .await
        .unwrap()
        .unwrap()
        .expect("a first chunk");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut body = String::from_utf8(first.to_vec()).unwrap();
    while let Some(c) = tokio::time::timeout(REPLY, r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        body.push_str(std::str::from_utf8(&c).unwrap());
    }
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let last: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 32, "{last}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let log: Vec<String> = line_rx.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("draining")),
        "no drain in the log: {log:?}"
    );
}
