//! Dynamic plugins: the example plugin (examples/plugin-adapter) is built and loaded; a missing
//! file, a library without the entry symbol, an ABI version mismatch, a build mismatch and a
//! name clash are each a clear `INVALID_CONFIG` error. One test: the registry is process-wide.

use lowbit::core::config::{validate, Capabilities, Config, Layer, Source};
use lowbit::core::plugin::load_plugin;
use lowbit::core::registry::{adapter_names, find_profile, profile_names};
use lowbit::ErrorCode;
use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Builds the example plugin with the same profile as this test, so the build ids match.
fn build_example() -> PathBuf {
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "lowbit-plugin-adapter"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo");
    assert!(status.success(), "building the example plugin failed");
    let lib = format!(
        "{}lowbit_plugin_adapter{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join(lib)
}

/// Compiles a dependency-free `cdylib` from `source` with the same rustc.
fn tiny_cdylib(name: &str, source: &str) -> PathBuf {
    let dir = target_dir().join("plugin-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.rs"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--crate-type", "cdylib", "--edition", "2021", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running rustc");
    assert!(status.success());
    out
}

#[test]
fn plugins_load_and_fail_clearly() {
    // The example: an adapter and a profile, usable by the validator like built-ins.
    let path = build_example();
    let loaded = load_plugin(&path).unwrap();
    assert_eq!(loaded.adapters, vec!["tinyllama-alias"]);
    assert_eq!(loaded.profiles, vec!["demo-kiosk"]);
    assert!(adapter_names().contains(&"tinyllama-alias".to_string()));
    assert!(profile_names().contains(&"demo-kiosk".to_string()));
    let kiosk = find_profile("demo-kiosk").unwrap();
    assert_eq!(kiosk.supported_bits(), &[4, 8]);
    assert!(!kiosk.allow_subgroups());
    let file = Layer::from_table(
        &"[quantization]\nmethod = \"int3\"".parse().unwrap(),
        Source::File("t.toml".into()),
    );
    let v = validate(
        &Config::from_layers([&file]),
        &Capabilities::unconstrained(),
        kiosk.as_ref(),
    );
    assert_eq!(v.corrected.str("quantization.method"), "int4");

    // Loading it again: its adapter clashes with the one now registered.
    let e = load_plugin(&path).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("clashes"), "{e}");

    let e = load_plugin(Path::new("/nonexistent/libnothing.so")).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("does not exist"), "{e}");

    let no_symbol = tiny_cdylib("no_symbol", "#[no_mangle] pub extern \"C\" fn other() {}");
    let e = load_plugin(&no_symbol).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("lowbit_plugin_entry_v1"), "{e}");

    let abi = tiny_cdylib(
        "abi_999",
        "static V: u32 = 999;\n#[no_mangle] pub extern \"C\" fn lowbit_plugin_entry_v1() -> *const u32 { &V }",
    );
    let e = load_plugin(&abi).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("ABI version 999"), "{e}");

    // ABI 1 header with another build id: refused before the Rust-ABI field is touched (it
    // is a null function pointer here, which would crash if called).
    let build = tiny_cdylib(
        "other_build",
        r#"#[repr(C)] pub struct E { abi: u32, id: *const u8, name: *const u8, reg: usize }
unsafe impl Sync for E {}
static ENTRY: E = E { abi: 1, id: b"lowbit-core 0.0.0; rustc 0.0\0".as_ptr(), name: b"x\0".as_ptr(), reg: 0 };
#[no_mangle] pub extern "C" fn lowbit_plugin_entry_v1() -> *const E { &ENTRY }"#,
    );
    let e = load_plugin(&build).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.contains("same lowbit-core, compiler"), "{e}");

    // A plugin profile clashing with a built-in name is refused by the registry.
    let e = lowbit::core::registry::register_profile(find_profile("safari").unwrap()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig);
}
