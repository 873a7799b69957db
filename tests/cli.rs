//! The `lowbit` binary: help texts, error codes and messages for missing or broken inputs.

mod common;

use std::process::Command;

fn lowbit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

/// The output of a `--json` command that must fail: asserts exit status 1 and error `code` on
/// stdout, and returns the error's message. `what` names the case in failures.
fn json_error(out: std::process::Output, code: &str, what: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{what}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn help_lists_every_subcommand_and_explains_flags() {
    let out = lowbit().arg("--help").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for sub in ["generate", "perplexity", "bench"] {
        assert!(s.contains(sub), "--help lacks {sub}: {s}");
    }
    let out = lowbit().args(["generate", "--help"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model",
        "--prompt",
        "--quant",
        "--group-size",
        "--max-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--backend",
        "--json",
        "--stop",
    ] {
        assert!(s.contains(flag), "generate --help lacks {flag}");
    }
}

#[test]
fn missing_default_model_names_the_fetch_command() {
    let empty = std::env::temp_dir().join(format!("lowbit-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = lowbit()
        .env("LOWBIT_MODELS_DIR", &empty)
        .args(["generate", "--prompt", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MODEL_LOADING_FAILED"), "{err}");
    assert!(err.contains("scripts/fetch-models.sh smollm2"), "{err}");
}

#[test]
fn truncated_model_gives_model_loading_failed_as_json() {
    let src = std::fs::read(common::smollm2()).unwrap();
    let bad = std::env::temp_dir().join(format!("lowbit-trunc-{}.gguf", std::process::id()));
    std::fs::write(&bad, &src[..src.len() / 3]).unwrap();
    let out = lowbit()
        .args(["generate", "--json", "--prompt", "hi", "--model"])
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_file(&bad).ok();
    json_error(out, "MODEL_LOADING_FAILED", "truncated");
}

#[test]
fn bad_flag_values_are_invalid_config() {
    for args in [
        vec!["--quant", "int5"],
        vec!["--temperature=-1"],
        vec!["--top-p", "1.5"],
    ] {
        let mut c = lowbit();
        c.args(["generate", "--json", "--prompt", "hi", "--model"])
            .arg(common::smollm2())
            .args(&args);
        json_error(c.output().unwrap(), "INVALID_CONFIG", &format!("{args:?}"));
    }
}

/// `bench` refuses, before measuring anything, a run with nothing to measure and a test longer
/// than the model's context (which would otherwise allocate until the OS kills it).
#[test]
fn serve_refuses_an_empty_api_key_before_loading() {
    for key in ["", "  "] {
        let out = lowbit()
            .args([
                "serve",
                "--json",
                "--backend",
                "cpu",
                "--port",
                "0",
                "--api-key",
                key,
            ])
            .args(["--model"])
            .arg(common::smollm2())
            .output()
            .unwrap();
        let msg = json_error(out, "INVALID_CONFIG", "empty --api-key");
        assert!(msg.contains("API key is empty"), "{msg}");
    }
}

#[test]
fn bench_refuses_empty_runs_and_tests_past_the_context() {
    for (tokens, ttft, says) in [
        (["0", "0"], false, "nothing to measure"),
        (["9000", "1"], false, "context length of 8192"),
        (["16", "8192"], false, "needs 8193 positions"),
        (["9000", "0"], true, "context length of 8192"),
    ] {
        let mut c = lowbit();
        c.args(["bench", "--json", "--backend", "cpu", "--synthetic"])
            .args([
                "smollm2-135m",
                "--quants",
                "int4",
                "--reps",
                "1",
                "--threads",
                "2",
            ])
            .args(["--prompt-tokens", tokens[0], "--gen-tokens", tokens[1]]);
        if ttft {
            c.arg("--ttft");
        }
        let message = json_error(
            c.output().unwrap(),
            "INVALID_CONFIG",
            &format!("{tokens:?}"),
        );
        assert!(message.contains(says), "{tokens:?}: {message}");
    }
}

/// `perplexity` refuses chunks longer than the model's context (their logits alone would take
/// ctx × vocab × 4 bytes: 19.7 GB for 100,000 tokens of SmolLM2).
#[test]
fn perplexity_refuses_ctx_past_the_context() {
    let mut c = lowbit();
    c.args([
        "perplexity",
        "--json",
        "--backend",
        "cpu",
        "--quant",
        "int4",
    ])
    .args([
        "--threads",
        "2",
        "--ctx",
        "100000",
        "--chunks",
        "1",
        "--model",
    ])
    .arg(common::smollm2())
    .arg("--file")
    .arg(common::brown());
    let message = json_error(c.output().unwrap(), "INVALID_CONFIG", "--ctx 100000");
    assert!(message.contains("context length of 8192"), "{message}");
}

/// A group size the kernels cannot use is auto-corrected by the config validator (not an
/// error), and the correction is reported on stderr with the reason.
#[test]
fn invalid_group_size_is_corrected_and_reported() {
    let out = lowbit()
        .args([
            "generate",
            "--json",
            "-n",
            "2",
            "--prompt",
            "hi",
            "--group-size",
            "48",
            "--model",
        ])
        .arg(common::smollm2())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quantization.group_size = 48 → 32"), "{err}");
}

#[test]
fn generate_json_streams_and_reports_stats() {
    let out = lowbit()
        .args([
            "generate",
            "--json",
            "--quant",
            "int8",
            "-n",
            "8",
            "--threads",
            "2",
        ])
        .args(["--prompt", "The capital of France is", "--model"])
        .arg(common::smollm2())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 8, "{v}");
    assert!(v["stats"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["stats"]["weight_bytes"].as_u64().unwrap() > 100_000_000);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
}

/// `bench` says which backend and kernel paths produced its table, in text and in JSON; the
/// table (printed row by row as each precision is measured) has one header and every row.
#[test]
fn bench_names_its_backend_and_features() {
    let run = |json: bool| {
        let mut c = lowbit();
        c.args(["bench", "--backend", "cpu", "--synthetic", "smollm2-135m"])
            .args([
                "--quants",
                "int4,int8",
                "--prompt-tokens",
                "4",
                "--gen-tokens",
                "2",
            ])
            .args(["--reps", "1", "--threads", "2"]);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("| engine |")).count(),
        1,
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| lowbit |"))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, (precision, test)) in rows.iter().zip([
        ("int4", "pp4"),
        ("int4", "tg2"),
        ("int8", "pp4"),
        ("int8", "tg2"),
    ]) {
        assert!(
            row.contains(&format!("| {precision}-g32-sym |"))
                && row.contains(&format!("| {test} |")),
            "{row}"
        );
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("backend: cpu on "))
        .unwrap_or_else(|| panic!("no backend line: {text}"));
    assert!(line.contains("; features: "), "{line}");
    let v: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(v["backend"]["name"], "cpu", "{v}");
    assert!(v["backend"]["features"].is_array(), "{v}");
}
