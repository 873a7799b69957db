//! `lowbit bench-serve`: a bounded load test over loopback. Starts the lowbit server in-process
//! (and optionally llama.cpp's `llama-server` as a peer), then runs N concurrent streaming
//! clients on `POST /v1/completions` for each N, reporting aggregate tokens/s, time to first
//! token and per-token latency percentiles. `--chaos` runs the stop-and-disconnect storm of
//! `bench_chaos` instead.

use super::common::ModelArgs;
use clap::Args;
use futures::StreamExt;
use lowbit::core::adapter::TextModel;
use lowbit::core::generate::percentile;
use lowbit::plan::RunPlan;
use lowbit::results::{self, ResultsFile};
use lowbit::server::{serve, ServerConfig};
use lowbit::streaming::{InferenceConfig, StreamingInference};
use lowbit::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `lowbit bench-serve`.
#[derive(Args, Debug)]
pub struct BenchServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concurrent clients per level, comma-separated.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Tokens each request generates (greedy).
    #[arg(long, short = 'n', default_value_t = 32)]
    pub max_tokens: usize,
    /// The prompt of every request.
    #[arg(
        long,
        default_value = "Once upon a time, in a small village by the sea,"
    )]
    pub prompt: String,
    /// Time limit of one level, seconds (requests still running then are counted as failed).
    #[arg(long, default_value_t = 300)]
    pub level_timeout_s: u64,
    /// Upper bound of lowbit's adaptive batch size.
    #[arg(long, default_value_t = 64)]
    pub max_batch_size: usize,
    /// Per-token latency target of lowbit's adaptive batch size, ms.
    #[arg(long, default_value_t = 250)]
    pub target_latency_ms: u64,
    /// Also run llama.cpp's llama-server (this binary) with the same clients.
    #[arg(long)]
    pub peer_server: Option<PathBuf>,
    /// The GGUF llama-server loads (e.g. models/peer/smollm2-q8_0.gguf).
    #[arg(long)]
    pub peer_model: Option<PathBuf>,
    /// Append one JSON object per level (server and client count) to this JSON-lines file,
    /// each written as the level ends: date, commit, command, device, backend, driver, the
    /// full configuration and the level's figures. llama-server's levels are lines of their
    /// own, with "engine": "llama.cpp".
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
    /// Chaos mode: rounds of WebSocket clients of which a share stops or drops the connection
    /// after its second token; every other client must complete with the single-client
    /// greedy text. Starts `lowbit serve` as a child process (or uses --url) and reports its
    /// resident memory before, after and after idle.
    #[arg(long)]
    pub chaos: bool,
    /// Chaos: clients per round.
    #[arg(long, default_value_t = 200)]
    pub chaos_clients: usize,
    /// Chaos: rounds.
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Chaos: share of the clients that quit after their second token (half with a `stop`
    /// message, half by dropping the connection).
    #[arg(long, default_value_t = 0.5)]
    pub quit_share: f64,
    /// Chaos: the WebSocket URL of a running server (instead of starting one).
    #[arg(long)]
    pub url: Option<String>,
    /// Chaos: the process id of the server at --url, for its memory figures.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Chaos: seconds to wait before the after-idle memory reading.
    #[arg(long, default_value_t = 5.0)]
    pub idle_s: f64,
}

impl BenchServeArgs {
    /// `lowbit serve` arguments for the chaos server: this run's model flags and limits that
    /// admit every client at once.
    fn chaos_server_args(&self) -> Vec<String> {
        let m = &self.model;
        let mut v: Vec<String> = Vec::new();
        if let Some(p) = &m.model {
            v.extend(["--model".into(), p.display().to_string()]);
        }
        if let Some(c) = &m.config {
            v.extend(["--config".into(), c.display().to_string()]);
        }
        if let Some(p) = &m.profile {
            v.extend(["--profile".into(), p.clone()]);
        }
        let room = (self.chaos_clients + 8).to_string();
        let optional = [
            ("--quant", m.quant.clone()),
            ("--group-size", m.group_size.map(|g| g.to_string())),
            ("--scheme", m.scheme.clone()),
            ("--backend", m.backend.clone()),
            ("--threads", m.threads.map(|t| t.to_string())),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                v.extend([flag.into(), value]);
            }
        }
        for item in &m.set {
            v.extend(["--set".into(), item.clone()]);
        }
        v.extend([
            "--ctx".into(),
            MAX_CONTEXT.to_string(),
            "--max-concurrent".into(),
            room.clone(),
            "--max-queued".into(),
            room,
            "--max-batch-size".into(),
            self.max_batch_size.to_string(),
            "--target-latency-ms".into(),
            self.target_latency_ms.to_string(),
        ]);
        v
    }
}

/// Runs the chaos mode.
fn run_chaos(a: &BenchServeArgs) -> Result<()> {
    let settings = super::bench_chaos::ChaosSettings {
        clients: a.chaos_clients.max(1),
        rounds: a.rounds.max(1),
        quit_share: a.quit_share,
        max_tokens: a.max_tokens,
        prompt: a.prompt.clone(),
        idle_s: a.idle_s.max(0.0),
        round_timeout: Duration::from_secs(a.level_timeout_s),
    };
    let server = match &a.url {
        Some(_) => None,
        None => Some(super::bench_chaos::ServerProcess::start(
            &a.chaos_server_args(),
        )?),
    };
    let (url, pid) = match (&server, &a.url) {
        (Some(s), _) => (s.ws_url.clone(), Some(s.pid())),
        (None, Some(u)) => (u.clone(), a.pid),
        (None, None) => return Err(Error::invalid_config("no server to run against")),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid_config(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(super::bench_chaos::run(&url, pid, &settings, a.model.json))
}

/// Figures of one level.
#[derive(Serialize, Debug)]
struct LevelResult {
    server: String,
    clients: usize,
    ok: usize,
    failed: usize,
    tokens: usize,
    wall_s: f64,
    tokens_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p95_ms: f64,
    token_latency_p50_ms: f64,
    token_latency_p95_ms: f64,
}

/// What one client saw.
struct ClientRun {
    ok: bool,
    ttft_ms: f64,
    latencies: Vec<f64>,
    tokens: usize,
}

async fn one_client(http: reqwest::Client, url: String, prompt: String, n: usize) -> ClientRun {
    let mut run = ClientRun {
        ok: false,
        ttft_ms: 0.0,
        latencies: Vec::new(),
        tokens: 0,
    };
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": n, "temperature": 0.0, "stream": true,
        "ignore_eos": true, "cache_prompt": false,
    });
    let t0 = Instant::now();
    let Ok(resp) = http.post(&url).json(&body).send().await else {
        return run;
    };
    if !resp.status().is_success() {
        return run;
    }
    let mut bytes = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut last: Option<Instant> = None;
    while let Some(Ok(chunk)) = bytes.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                run.ok = true;
                return run;
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            let text = v["choices"][0]["text"].as_str().unwrap_or("");
            if text.is_empty() {
                continue;
            }
            let now = Instant::now();
            match last {
                None => run.ttft_ms = now.duration_since(t0).as_secs_f64() * 1e3,
                Some(p) => run
                    .latencies
                    .push(now.duration_since(p).as_secs_f64() * 1e3),
            }
            last = Some(now);
            run.tokens += 1;
        }
    }
    run
}

async fn level(server: &str, base: &str, a: &BenchServeArgs, clients: usize) -> LevelResult {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/completions");
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(one_client(
                http.clone(),
                url.clone(),
                a.prompt.clone(),
                a.max_tokens,
            ))
        })
        .collect();
    let all = futures::future::join_all(tasks);
    let runs: Vec<ClientRun> =
        match tokio::time::timeout(Duration::from_secs(a.level_timeout_s), all).await {
            Ok(r) => r.into_iter().filter_map(|r| r.ok()).collect(),
            Err(_) => Vec::new(),
        };
    let wall_s = t0.elapsed().as_secs_f64();
    let ok: Vec<&ClientRun> = runs.iter().filter(|r| r.ok).collect();
    let tokens: usize = ok.iter().map(|r| r.tokens).sum();
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft_ms).collect();
    let lat: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    LevelResult {
        server: server.to_owned(),
        clients,
        ok: ok.len(),
        failed: clients - ok.len(),
        tokens,
        wall_s,
        tokens_per_s: tokens as f64 / wall_s.max(1e-9),
        ttft_p50_ms: percentile(&ttft, 50.0),
        ttft_p95_ms: percentile(&ttft, 95.0),
        token_latency_p50_ms: percentile(&lat, 50.0),
        token_latency_p95_ms: percentile(&lat, 95.0),
    }
}

/// Appends a level's record: lowbit's with `config`, the peer's with its own engine name (its
/// device and backend are not reported by llama-server, so they are null).
fn record_level(
    out: &mut Option<ResultsFile>,
    r: &LevelResult,
    config: &Map<String, Value>,
) -> Result<()> {
    let Some(out) = out else {
        return Ok(());
    };
    let mut rec = serde_json::to_value(r).map_err(|e| Error::invalid_config(e.to_string()))?;
    rec["test"] = format!("serve-c{}", r.clients).into();
    rec["config"] = config.clone().into();
    if r.server != "lowbit" {
        rec["engine"] = "llama.cpp".into();
        rec["device"] = Value::Null;
        rec["backend"] = Value::Null;
        rec["driver"] = Value::Null;
        rec["features"] = serde_json::json!([]);
    }
    out.write(rec)
}

/// Kills the peer server when the benchmark ends, however it ends.
struct PeerProcess(Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::invalid_config(format!("no free loopback port: {e}")))
}

async fn wait_healthy(base: &str, limit: Duration) -> bool {
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Context positions per request, on lowbit's side and per slot of llama-server's.
const MAX_CONTEXT: usize = 512;

/// The configuration of lowbit's levels and of the peer's, for `--output` records.
fn record_configs(
    a: &BenchServeArgs,
    plan: &RunPlan,
    model: &dyn TextModel,
    threads: usize,
    max_clients: usize,
) -> (Map<String, Value>, Map<String, Value>) {
    let shared: [(&str, Value); 5] = [
        ("max_tokens", a.max_tokens.into()),
        ("prompt", a.prompt.clone().into()),
        ("max_context", MAX_CONTEXT.into()),
        ("level_timeout_s", a.level_timeout_s.into()),
        ("threads", threads.into()),
    ];
    let mut own = results::load_config(plan);
    own.insert("model".into(), model.config().name.clone().into());
    own.insert("precision".into(), model.plan().label().into());
    own.insert("max_batch_size".into(), a.max_batch_size.into());
    own.insert("target_latency_ms".into(), a.target_latency_ms.into());
    let mut peer = Map::new();
    peer.insert(
        "model_path".into(),
        a.peer_model
            .as_ref()
            .map(|p| p.display().to_string())
            .into(),
    );
    peer.insert("parallel".into(), max_clients.into());
    for (k, v) in shared {
        own.insert(k.into(), v.clone());
        peer.insert(k.into(), v);
    }
    (own, peer)
}

/// Runs `lowbit bench-serve`.
pub fn run(a: &BenchServeArgs) -> Result<()> {
    if a.chaos {
        return run_chaos(a);
    }
    let mut plan = a.model.plan(None)?;
    let threads = plan.backend.threads;
    let path = plan.model_path()?.unwrap_or_default();
    let (model, backend) = a.model.load(&plan)?;
    plan.kv_cache.max_seq_len = MAX_CONTEXT;
    let record_plan = plan.clone();
    let max_clients = a.clients.iter().copied().max().unwrap_or(1);
    let config = InferenceConfig {
        plan,
        max_concurrent_requests: max_clients,
        max_queued_requests: max_clients,
        max_batch_size: a.max_batch_size,
        target_token_latency: Duration::from_millis(a.target_latency_ms),
        ..InferenceConfig::default()
    };
    let mut out = results::open_output(a.output.as_deref())?;
    if let Some(out) = &mut out {
        out.set_backend(&backend.info());
    }
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (record_config, peer_config) =
        record_configs(a, &record_plan, model.as_ref(), threads, max_clients);
    let id = lowbit::plan::model_id(Some(&path), model.as_ref());
    let engine = Arc::new(
        StreamingInference::from_model(Arc::from(model), id, config)
            .map_err(|e| Error::invalid_config(e.to_string()))?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid_config(format!("cannot start the async runtime: {e}")))?;
    let results = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::invalid_config(format!("cannot listen on loopback: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::invalid_config(e.to_string()))?;
        let server = ServerConfig {
            port: addr.port(),
            ..ServerConfig::default()
        };
        tokio::spawn(serve(
            listener,
            engine.clone(),
            server,
            std::future::pending(),
        ));
        let base = format!("http://{addr}");
        let mut results = Vec::new();
        for &n in &a.clients {
            let r = level("lowbit", &base, a, n).await;
            eprintln!("{r:?}");
            record_level(&mut out, &r, &record_config)?;
            results.push(r);
        }
        if let (Some(bin), Some(gguf)) = (&a.peer_server, &a.peer_model) {
            let port = free_port()?;
            let child = Command::new(bin)
                .args(["-m", &gguf.to_string_lossy(), "--host", "127.0.0.1"])
                .args(["--port", &port.to_string(), "-t", &threads.to_string()])
                .args(["-np", &max_clients.to_string()])
                .args(["-c", &(MAX_CONTEXT * max_clients).to_string(), "--no-webui"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    Error::invalid_config(format!("cannot start {}: {e}", bin.display()))
                })?;
            let _peer = PeerProcess(child);
            let base = format!("http://127.0.0.1:{port}");
            if !wait_healthy(&base, Duration::from_secs(120)).await {
                return Err(Error::invalid_config("llama-server did not become healthy"));
            }
            for &n in &a.clients {
                let r = level("llama-server", &base, a, n).await;
                eprintln!("{r:?}");
                record_level(&mut out, &r, &peer_config)?;
                results.push(r);
            }
        }
        Ok::<_, Error>(results)
    })?;
    let stats = engine.performance_stats();
    if a.model.json {
        let v = serde_json::json!({"levels": results, "lowbit_stats": stats});
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:<13} {:>7} {:>5} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "server",
        "clients",
        "ok",
        "tokens",
        "wall s",
        "tok/s",
        "ttft p50",
        "ttft p95",
        "tok p50 ms",
        "tok p95 ms"
    );
    for r in &results {
        println!(
            "{:<13} {:>7} {:>5} {:>7} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1}",
            r.server,
            r.clients,
            r.ok,
            r.tokens,
            r.wall_s,
            r.tokens_per_s,
            r.ttft_p50_ms,
            r.ttft_p95_ms,
            r.token_latency_p50_ms,
            r.token_latency_p95_ms
        );
    }
    let hist: Vec<String> = stats
        .batch_size_history
        .iter()
        .map(|c| format!("{}@{:.0}ms({})", c.batch_size, c.at_ms, c.reason))
        .collect();
    println!("lowbit batch-size history: {}", hist.join(" "));
    Ok(())
}
