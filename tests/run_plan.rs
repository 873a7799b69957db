//! One typed run plan on every path: a config file with `quantization.method = "mixed"`
//! (attention 4 bits, feed-forward 2) loads exactly that plan through `lowbit generate
//! --config`, `lowbit serve --config` (named in the WebSocket `init` frame) and
//! `InferenceConfig::from_file` (the library), and the bits per weight each reports agree.
//! Also: the former environment switches are config keys that `config show` lists with their
//! sources.

mod common;

use futures::StreamExt;
use lowbit::streaming::{InferenceConfig, StreamingInference};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lowbit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

/// A config file selecting the mixed plan on the CPU backend.
fn mixed_config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("mixed.toml");
    std::fs::write(
        &file,
        format!(
            "[model]\npath = {:?}\n\n[runtime]\nbackend = \"cpu\"\n\n\
             [quantization]\nmethod = \"mixed\"\ngroup_size = 32\n\n\
             [quantization.layers]\nattention = 4\nfeedforward = 2\nembedding = 8\nlm_head = 8\n",
            common::smollm2().display().to_string()
        ),
    )
    .unwrap();
    file
}

const MIXED_LABEL: &str = "attn int4-g32-asym, ffn int2-g32-asym";

/// `lowbit generate --config`: (method, label, bits/weight) from its JSON.
fn via_generate(file: &std::path::Path) -> (String, String, f64) {
    let out = lowbit()
        .args([
            "generate",
            "--prompt",
            "Hello",
            "--max-tokens",
            "2",
            "--json",
        ])
        .arg("--config")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["method"].as_str().unwrap().to_owned(),
        v["precision"].as_str().unwrap().to_owned(),
        v["bits_per_weight"].as_f64().unwrap(),
    )
}

/// `lowbit serve --config`: (quantization, weights, bits/weight) of the `init` frame.
fn via_serve(file: &std::path::Path) -> (String, String, f64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = lowbit()
        .args(["serve", "--port", &port.to_string()])
        .arg("--config")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server says where it serves once it listens.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let t0 = Instant::now();
    let listening = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("serving") => break true,
            Some(Ok(_)) => continue,
            _ => break false,
        }
    };
    assert!(listening, "lowbit serve exited before listening");
    assert!(t0.elapsed() < Duration::from_secs(300));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let init = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .unwrap();
        let msg = ws.next().await.unwrap().unwrap();
        serde_json::from_str::<serde_json::Value>(msg.to_text().unwrap()).unwrap()
    });
    child.kill().ok();
    child.wait().ok();
    assert_eq!(init["type"], "init", "{init}");
    let m = &init["model_info"];
    (
        m["quantization"].as_str().unwrap().to_owned(),
        m["weights"].as_str().unwrap().to_owned(),
        m["bits_per_weight"].as_f64().unwrap(),
    )
}

#[test]
fn a_mixed_plan_loads_the_same_on_cli_server_and_library() {
    let dir = std::env::temp_dir().join(format!("lowbit-plan-{}", std::process::id()));
    let file = mixed_config(&dir);

    let cfg = InferenceConfig::from_file(&file).unwrap();
    assert_eq!(cfg.plan.weights.method(), "mixed");
    assert_eq!(cfg.plan.weights.label(), MIXED_LABEL);
    let engine = StreamingInference::load(cfg).unwrap();
    let lib_bits = engine.model().bits_per_weight();
    assert_eq!(engine.model().plan().label(), MIXED_LABEL);
    drop(engine);

    let (method, label, cli_bits) = via_generate(&file);
    assert_eq!((method.as_str(), label.as_str()), ("mixed", MIXED_LABEL));
    let (quant, weights, serve_bits) = via_serve(&file);
    assert_eq!((quant.as_str(), weights.as_str()), ("mixed", MIXED_LABEL));

    eprintln!("bits/weight: library {lib_bits:.4}, generate {cli_bits:.4}, serve {serve_bits:.4}");
    assert_eq!(lib_bits, cli_bits);
    assert_eq!(lib_bits, serve_bits);
    // Feed-forward matrices at 2 bits: fewer bits per weight than uniform int4 (4.5 with the
    // asymmetric groups' scales and offsets, 8-bit embedding and output projection), more
    // than uniform int2.
    let uniform = |method: &str| {
        let mut p = common::smollm2_plan("cpu", method);
        p.weights = lowbit::core::adapter::QuantPlan::for_method(
            method,
            32,
            lowbit::core::quant::Scheme::Asymmetric,
        )
        .unwrap();
        p.load(&mut |_, _, _| {}).unwrap().0.bits_per_weight()
    };
    let (int4, int2) = (uniform("int4"), uniform("int2"));
    assert!(
        int2 < lib_bits && lib_bits < int4,
        "{int2} < {lib_bits} < {int4}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_show_lists_the_backend_switches_with_their_sources() {
    let out = lowbit()
        .args(["config", "show", "--json"])
        .env("LOWBIT_BACKEND_WEBGPU_WIDE_MATVEC", "0")
        .env("LOWBIT_BACKEND_CPU_EXACT_ACTIVATIONS", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |key: &str| {
        v["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("config show lacks {key}: {v}"))
            .clone()
    };
    let wide = row("backend.webgpu.wide_matvec");
    assert_eq!(
        (wide["value"].as_str(), wide["source"].as_str()),
        (Some("false"), Some("env LOWBIT_BACKEND_WEBGPU_WIDE_MATVEC"))
    );
    let exact = row("backend.cpu.exact_activations");
    assert_eq!(exact["value"], "true");
    for key in [
        "backend.webgpu.allow_software_adapter",
        "backend.webgpu.fused_norm",
        "backend.webgpu.int_prefill",
        "backend.webgpu.cooperative_matrix",
        "backend.webgpu.matvec_shape",
        "backend.webgpu.checked_shaders",
        "backend.webgpu.dispatches_per_submit",
    ] {
        assert_eq!(row(key)["source"], "default", "{key}");
    }
    // The precision defaults are the ones `generate` runs with.
    assert_eq!(row("quantization.method")["value"], "\"int4\"");
    assert_eq!(row("quantization.group_size")["value"], "32");
    assert_eq!(row("quantization.scheme")["value"], "\"asymmetric\"");
}

#[test]
fn a_malformed_switch_is_invalid_config() {
    let out = lowbit()
        .args(["generate", "--prompt", "hi", "--backend", "cpu", "--json"])
        .args(["--set", "backend.webgpu.matvec_shape=12x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "INVALID_CONFIG", "{v}");
    let out = lowbit()
        .args(["generate", "--prompt", "hi", "--json"])
        .args(["--set", "backend.webgpu.wide_matvek=false"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "INVALID_CONFIG", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("backend.webgpu.wide_matvec"), "{msg}");
}
