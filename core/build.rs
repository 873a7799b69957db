//! Records the compiler version and enabled features into `LOWBIT_BUILD_ID`: plugins compare it
//! with the host's before calling any Rust-ABI function (see `plugin.rs`).

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "rustc unknown".into());
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(str::to_lowercase))
        // `default` only names other features; which of those are on is what matters, and
        // whether `default` itself shows depends on how cargo unified the build.
        .filter(|f| f != "default")
        // `conformance` only adds a module (the op suite) and changes no type a plugin
        // shares, so a plugin built without it (as plugins are) still fits a host with it.
        .filter(|f| f != "conformance")
        .collect();
    features.sort();
    let profile_layout = std::env::var("TARGET").unwrap_or_default();
    println!(
        "cargo:rustc-env=LOWBIT_BUILD_ID=lowbit-core {}; {version}; {profile_layout}; features [{}]",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        features.join(",")
    );
    println!("cargo:rerun-if-changed=build.rs");
}
