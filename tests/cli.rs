//! The `lowbit` binary: help texts, error codes and messages for missing or broken inputs.

mod common;

use std::process::Command;

fn lowbit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

/// Runs `c` and asserts it exits 0 (its stderr in the failure); returns its output.
fn succeed(c: &mut Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
    for sub in ["bench", "perplexity", "bench-serve"] {
        let out = lowbit().args([sub, "--help"]).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains("--output <FILE.jsonl>") && s.contains("JSON-lines"),
            "{sub} --help does not explain --output: {s}"
        );
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
        vec!["--quant", "int7"],
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
    let out = succeed(
        lowbit()
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
            .arg(common::smollm2()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quantization.group_size = 48 → 32"), "{err}");
}

#[test]
fn generate_json_streams_and_reports_stats() {
    let out = succeed(
        lowbit()
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
            .arg(common::smollm2()),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 8, "{v}");
    assert!(v["stats"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["stats"]["weight_bytes"].as_u64().unwrap() > 100_000_000);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
}

/// `bench --synthetic --rotate` stores the synthetic model's integer matrices in a rotated
/// basis (the backend rotates the activations), says so in the model's name and in each
/// record's configuration, and measures it.
#[test]
fn bench_synthetic_rotate_runs_a_rotated_model() {
    let out = succeed(
        lowbit()
            .args(["bench", "--json", "--backend", "cpu", "--synthetic"])
            .args(["smollm2-135m", "--rotate", "--quants", "int4"])
            .args(["--prompt-tokens", "4", "--gen-tokens", "2"])
            .args(["--reps", "1", "--threads", "2"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"));
    assert_eq!(rows.len(), 2, "{v}");
    for r in rows {
        assert_eq!(r["model"], "synthetic smollm2-135m +rot", "{r}");
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
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
        let out = succeed(&mut c);
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
            row.contains(&format!("| {precision}-g32-asym |"))
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

/// The commit `lowbit` was built from, as its build script reads it (`unknown` without git).
fn built_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// `bench`, `perplexity` and `bench-serve` with `--output` append one JSON line per measured
/// row to the same file: each names its date, commit, command, device, backend and driver
/// beside the row's configuration, and carries positive, finite figures.
#[test]
fn measuring_commands_write_one_json_line_per_row() {
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("results-{}", std::process::id()))
        .join("rows.jsonl");
    let _ = std::fs::remove_file(&file);
    let common_args = ["--backend", "cpu", "--threads", "2", "--group-size", "32"];
    succeed(
        lowbit()
            .args(["bench", "--quant", "int4", "--prompt-tokens", "8"])
            .args(["--gen-tokens", "4", "--reps", "1", "--copy-bandwidth"])
            .args(common_args)
            .arg("--model")
            .arg(common::smollm2())
            .arg("--output")
            .arg(&file),
    );
    succeed(
        lowbit()
            .args([
                "perplexity",
                "--quant",
                "int8",
                "--ctx",
                "64",
                "--chunks",
                "1",
            ])
            .args(common_args)
            .arg("--model")
            .arg(common::smollm2())
            .arg("--file")
            .arg(common::brown())
            .arg("--output")
            .arg(&file),
    );
    succeed(
        lowbit()
            .args([
                "bench-serve",
                "--quant",
                "int4",
                "--clients",
                "1,2",
                "-n",
                "3",
            ])
            .args(common_args)
            .arg("--model")
            .arg(common::smollm2())
            .arg("--output")
            .arg(&file),
    );

    let text = std::fs::read_to_string(&file).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Which row each line is, in the order they were measured.
    let expected = [
        ("bench", "copy_bandwidth", "int4"),
        ("bench", "pp8", "int4"),
        ("bench", "tg4", "int4"),
        ("perplexity", "perplexity", "int8"),
        ("bench-serve", "serve-c1", "int4"),
        ("bench-serve", "serve-c2", "int4"),
    ];
    assert_eq!(records.len(), expected.len(), "{text}");
    let commit = built_commit();
    let positive = |v: &serde_json::Value, key: &str| {
        let x = v[key].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{key} = {x}: {v}");
        x
    };
    for (r, (command, test, quant)) in records.iter().zip(expected) {
        let date = r["date"].as_str().unwrap_or_default();
        assert!(
            date.len() == 20
                && date.starts_with("20")
                && date.ends_with('Z')
                && date[10..].starts_with('T'),
            "date {date}: {r}"
        );
        assert_eq!(r["commit"], commit.as_str(), "{r}");
        assert!(
            r["command"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("lowbit {command} ")),
            "{r}"
        );
        assert_eq!(r["engine"], "lowbit", "{r}");
        assert_eq!(r["backend"], "cpu", "{r}");
        for key in ["device", "driver"] {
            assert!(
                !r[key].as_str().unwrap_or_default().is_empty(),
                "{key}: {r}"
            );
        }
        assert_eq!(r["test"], test, "{r}");
        let c = &r["config"];
        assert_eq!(c["quant"], quant, "{r}");
        assert_eq!(c["group_size"], 32, "{r}");
        assert_eq!(c["scheme"], "asymmetric", "{r}");
        assert_eq!(c["requested_backend"], "cpu", "{r}");
        assert!(
            c["model_path"]
                .as_str()
                .unwrap_or_default()
                .ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "{r}"
        );
        assert_eq!(c["threads"], 2, "{r}");
        match test {
            "copy_bandwidth" => {
                positive(r, "copy_gb_per_s");
            }
            "serve-c1" | "serve-c2" => {
                assert_eq!(r["ok"], r["clients"], "{r}");
                assert_eq!(r["failed"], 0, "{r}");
                assert_eq!(c["max_tokens"], 3, "{r}");
                positive(r, "tokens_per_s");
                positive(r, "ttft_p50_ms");
            }
            "perplexity" => {
                assert_eq!(c["ctx"], 64, "{r}");
                assert_eq!(r["chunks"], 1, "{r}");
                assert!(positive(r, "perplexity") > 1.0, "{r}");
                positive(r, "perplexity_stderr");
            }
            _ => {
                assert_eq!(c["prompt_tokens"], 8, "{r}");
                assert_eq!(c["gen_tokens"], 4, "{r}");
                assert_eq!(c["reps"], 1, "{r}");
                assert!(
                    c["precision"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(quant),
                    "{r}"
                );
                positive(r, "tokens_per_s");
                positive(c, "bits_per_weight");
                if test == "tg4" {
                    positive(r, "weight_gb_per_s");
                }
            }
        }
    }
    let _ = std::fs::remove_file(&file);
}

/// The greedy tokens `generate --json` produces from `model` with `extra` flags.
fn greedy_tokens(model: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = succeed(
        lowbit()
            .args(["generate", "--json", "-n", "6", "--threads", "2"])
            .args(extra)
            .args(["--prompt", "The capital of France is", "--model"])
            .arg(model),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["tokens"].clone()
}

/// `lowbit quantize` writes a file that loads directly and reproduces quantizing at load
/// (same greedy tokens), records its plan, and any damage to it (truncation, one changed byte
/// in the matrices, a wrong format version) is `MODEL_LOADING_FAILED`, never a panic.
#[test]
fn quantized_model_file_round_trips_and_damage_is_model_loading_failed() {
    let dir = std::env::temp_dir().join(format!("lowbit-qfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("smol-int3.gguf");
    let out = succeed(
        lowbit()
            .args(["quantize", "--json", "--quant", "int3", "--threads", "2"])
            .arg(common::smollm2())
            .arg("-o")
            .arg(&file),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bpw = v["report"]["bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 3.0 && bpw < 8.0, "{v}");
    assert_eq!(
        greedy_tokens(&file, &[]),
        greedy_tokens(&common::smollm2(), &["--quant", "int3"]),
        "the file reproduces quantizing at load"
    );
    let bytes = std::fs::read(&file).unwrap();
    let find = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("key present")
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("truncated", bytes[..bytes.len() * 2 / 3].to_vec()));
    let mut flipped = bytes.clone();
    let at = bytes.len() - bytes.len() / 5; // inside lowbit.weights, the last tensor
    flipped[at] ^= 0x10;
    cases.push(("one byte changed", flipped));
    // lowbit.format_version: key, then type (u32 10 = u64), then the value.
    let mut version = bytes.clone();
    let k = find(b"lowbit.format_version") + "lowbit.format_version".len() + 4;
    version[k..k + 8].copy_from_slice(&99u64.to_le_bytes());
    cases.push(("future version", version));
    for (what, damaged) in cases {
        let bad = dir.join("damaged.gguf");
        std::fs::write(&bad, &damaged).unwrap();
        let out = lowbit()
            .args(["generate", "--json", "-n", "2", "--prompt", "hi", "--model"])
            .arg(&bad)
            .output()
            .unwrap();
        let msg = json_error(out, "MODEL_LOADING_FAILED", what);
        assert!(!msg.is_empty(), "{what}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
