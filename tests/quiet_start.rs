//! The default path prints no driver noise: `lowbit generate` with no flags, outside a desktop
//! session (no `XDG_RUNTIME_DIR`, as on servers and CI), writes no `error:` line while it probes
//! the Vulkan adapters (lavapipe is installed by the test command, so the probe does run).

mod common;

use std::process::Command;

#[test]
fn default_generate_prints_no_error_lines() {
    let models = common::smollm2();
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args([
            "generate",
            "--prompt",
            "The capital of France is",
            "-n",
            "4",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("LOWBIT_LOG")
        .env_remove("RUST_LOG")
        .env_remove("NODEVICE_SELECT")
        .env("LOWBIT_MODELS_DIR", models.parent().unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let noise: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert!(
        noise.is_empty(),
        "error lines on the default path: {noise:?}"
    );
    // The adapters were probed: `doctor` (the same probe) lists at least one.
    let doctor = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(["doctor", "--json"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert!(
        !v["adapters"].as_array().unwrap().is_empty(),
        "no Vulkan adapter was probed (is lavapipe installed?): {v}"
    );
    assert!(String::from_utf8_lossy(&doctor.stderr)
        .lines()
        .all(|l| !l.contains("error:")));
}
