//! Example lowbit plugin. Registers:
//! - `tinyllama-alias`: a model adapter for the made-up architecture name `tinyllama`
//!   (GGUF `general.architecture = "tinyllama"`), which reads the file's hyper-parameters
//!   under that prefix and otherwise loads it exactly like the built-in LLaMA adapter;
//! - `demo-kiosk`: a profile (TOML data, like `profiles/*.toml`) for a locked-down kiosk
//!   browser: 4-bit and 8-bit only, no subgroups.
//!
//! Build: `cargo build --release -p lowbit-plugin-adapter`, then
//! `lowbit generate --plugin target/release/liblowbit_plugin_adapter.so ...` or
//! `plugins = ["target/release/liblowbit_plugin_adapter.so"]` in a config file.

use lowbit_core::adapter::{LoadedModel, ModelAdapter, ModelSource, ProgressFn, QuantPlan};
use lowbit_core::plugin::PluginRegistrar;
use lowbit_core::profile::ProfileData;
use lowbit_core::{Backend, Result};
use lowbit_models::LlamaAdapter;
use std::sync::Arc;

/// The made-up architecture name this adapter recognises.
const ARCH: &str = "tinyllama";

/// `tinyllama` files through the LLaMA adapter.
struct TinyLlamaAlias;

impl ModelAdapter for TinyLlamaAlias {
    fn name(&self) -> &'static str {
        "tinyllama-alias"
    }

    fn supports(&self, source: &ModelSource) -> bool {
        source.architecture().as_deref() == Some(ARCH)
    }

    fn load(
        &self,
        source: &ModelSource,
        plan: &QuantPlan,
        backend: Arc<dyn Backend>,
        progress: &mut ProgressFn<'_>,
    ) -> Result<LoadedModel> {
        LlamaAdapter.load(source, plan, backend, progress)
    }
}

const KIOSK: &str = r#"
name = "demo-kiosk"
description = "Example plugin profile: a locked-down kiosk browser"
[features]
f16 = true
subgroups = false
[limits]
max_storage_binding = 134217728
[bits]
supported = [4, 8]
[workgroups]
matmul = [8, 8]
"#;

fn register(r: &mut dyn PluginRegistrar) -> Result<()> {
    r.register_adapter(Box::new(TinyLlamaAlias));
    r.register_profile(Box::new(ProfileData::from_toml(KIOSK)?));
    Ok(())
}

lowbit_core::export_plugin!("lowbit-plugin-adapter", register);
