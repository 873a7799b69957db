//! Dynamic plugins: a `cdylib` that registers model adapters and profiles at run time.
//!
//! # The contract
//! A plugin exports one symbol, [`PLUGIN_ENTRY_SYMBOL`] (`lowbit_plugin_entry_v1`), an
//! `extern "C" fn() -> *const PluginEntry` (write it with [`export_plugin!`]). The host reads
//! the entry in two stages:
//!
//! 1. a C-compatible header: `abi_version` (a `u32` at offset 0, so any future layout can be
//!    refused safely) and `build_id`, a C string naming the lowbit-core version, the `rustc`
//!    version, the target and core's enabled features;
//! 2. only if both match the host exactly, the Rust-ABI `register` function, which receives a
//!    `&mut dyn PluginRegistrar` and hands over `Box<dyn ModelAdapter>` / `BrowserProfile`
//!    trait objects.
//!
//! **Why Rust ABI and not a C vtable:** an adapter is a trait object that receives a
//! `&ModelSource`, an `Arc<dyn Backend>` and returns a `Box<dyn TextModel>`; expressing all of
//! that as C vtables would mean re-wrapping the whole Backend and TextModel surface for every
//! call. Rust has no stable ABI, so the contract is *same lowbit-core version, same compiler,
//! same target and features* — and the `build_id` check enforces it instead of trusting it: a
//! mismatched plugin is refused with `INVALID_CONFIG` before any Rust-ABI code runs. Both sides
//! use the system allocator (Rust's default), so boxes may cross the boundary. Loaded
//! libraries are never unloaded (their code backs registered objects until exit).

use crate::adapter::ModelAdapter;
use crate::error::{Error, Result};
use crate::profile::BrowserProfile;
use std::ffi::{c_char, CStr};
use std::path::Path;
use std::sync::Arc;

/// Version of the entry layout. Bumped on any change to [`PluginEntry`] or
/// [`PluginRegistrar`].
pub const PLUGIN_ABI_VERSION: u32 = 1;

/// Name of the entry symbol.
pub const PLUGIN_ENTRY_SYMBOL: &str = "lowbit_plugin_entry_v1";

/// lowbit-core version, compiler, target and features, NUL-terminated: a plugin is accepted
/// only when its copy equals the host's.
pub const BUILD_ID: &str = concat!(env!("LOWBIT_BUILD_ID"), "\0");

/// What a plugin registers through.
pub trait PluginRegistrar {
    /// Adds a model adapter (its name must be unique).
    fn register_adapter(&mut self, adapter: Box<dyn ModelAdapter>);
    /// Adds a profile (its name must be unique).
    fn register_profile(&mut self, profile: Box<dyn BrowserProfile>);
}

/// The registration function of a plugin (Rust ABI; called only after the header matched).
pub type RegisterFn = fn(&mut dyn PluginRegistrar) -> Result<()>;

/// The entry a plugin's [`PLUGIN_ENTRY_SYMBOL`] returns a pointer to.
#[repr(C)]
pub struct PluginEntry {
    /// [`PLUGIN_ABI_VERSION`] of the plugin's build. Always first.
    pub abi_version: u32,
    /// The plugin build's [`BUILD_ID`] (NUL-terminated).
    pub build_id: *const c_char,
    /// Plugin name (NUL-terminated), for messages.
    pub name: *const c_char,
    /// Registers the plugin's adapters and profiles.
    pub register: RegisterFn,
}

// The pointers refer to static strings of the plugin.
unsafe impl Sync for PluginEntry {}

/// Exports `lowbit_plugin_entry_v1` from a `cdylib`:
/// `lowbit_core::export_plugin!("my-plugin", register);` with
/// `fn register(r: &mut dyn PluginRegistrar) -> lowbit_core::Result<()>`.
#[macro_export]
macro_rules! export_plugin {
    ($name:literal, $register:path) => {
        /// The lowbit plugin entry point.
        #[no_mangle]
        pub extern "C" fn lowbit_plugin_entry_v1() -> *const $crate::plugin::PluginEntry {
            static ENTRY: $crate::plugin::PluginEntry = $crate::plugin::PluginEntry {
                abi_version: $crate::plugin::PLUGIN_ABI_VERSION,
                build_id: $crate::plugin::BUILD_ID.as_ptr() as *const ::std::ffi::c_char,
                name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
                register: $register,
            };
            &ENTRY
        }
    };
}

/// What a loaded plugin registered.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadedPlugin {
    /// The plugin's name.
    pub name: String,
    /// Path it was loaded from.
    pub path: String,
    /// Names of the adapters it registered.
    pub adapters: Vec<String>,
    /// Names of the profiles it registered.
    pub profiles: Vec<String>,
}

#[derive(Default)]
struct Collected {
    adapters: Vec<Box<dyn ModelAdapter>>,
    profiles: Vec<Box<dyn BrowserProfile>>,
}

impl PluginRegistrar for Collected {
    fn register_adapter(&mut self, adapter: Box<dyn ModelAdapter>) {
        self.adapters.push(adapter);
    }
    fn register_profile(&mut self, profile: Box<dyn BrowserProfile>) {
        self.profiles.push(profile);
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null pointers of a matching header point at NUL-terminated static strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Loads the plugin at `path` and registers what it provides. A missing file, a library
/// without the entry symbol, an ABI or build mismatch, a failing registration, or a name that
/// clashes with a registered adapter or profile are each `INVALID_CONFIG` naming the path;
/// on any error nothing of the plugin is registered.
pub fn load_plugin(path: &Path) -> Result<LoadedPlugin> {
    let shown = path.display().to_string();
    let fail = |msg: String| Error::invalid_config(format!("plugin {shown}: {msg}"));
    if !path.exists() {
        return Err(fail("the file does not exist".into()));
    }
    // SAFETY: loading runs the library's initialisers; plugins are trusted code the user
    // named explicitly (config `plugins` or `--plugin`).
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| fail(format!("cannot be loaded as a shared library: {e}")))?;
    let entry_fn = {
        // SAFETY: the symbol's type is fixed by the contract above; the header is checked
        // before anything else is used.
        let sym: libloading::Symbol<'_, extern "C" fn() -> *const PluginEntry> =
            unsafe { lib.get(PLUGIN_ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
                fail(format!(
                    "no `{PLUGIN_ENTRY_SYMBOL}` symbol: not a lowbit plugin (export one with lowbit_core::export_plugin!)"
                ))
            })?;
        *sym
    };
    let entry = entry_fn();
    if entry.is_null() {
        return Err(fail("the entry returned a null pointer".into()));
    }
    // SAFETY: `abi_version` is a u32 at offset 0 in every ABI version.
    let abi = unsafe { std::ptr::read(entry as *const u32) };
    if abi != PLUGIN_ABI_VERSION {
        return Err(fail(format!(
            "plugin ABI version {abi}, this lowbit needs {PLUGIN_ABI_VERSION}; rebuild the plugin against this lowbit-core"
        )));
    }
    // SAFETY: version 1 layout confirmed.
    let entry = unsafe { &*entry };
    let theirs = cstr(entry.build_id);
    let ours = BUILD_ID.trim_end_matches('\0');
    if theirs != ours {
        return Err(fail(format!(
            "built as `{theirs}`, this lowbit is `{ours}`; plugins must be built with the same lowbit-core, compiler, target and features"
        )));
    }
    let name = cstr(entry.name);
    let mut collected = Collected::default();
    (entry.register)(&mut collected).map_err(|e| fail(format!("registration failed: {e}")))?;
    // Check every name before registering anything, so a clash leaves no partial plugin.
    let adapters = crate::registry::adapter_names();
    let profiles = crate::registry::profile_names();
    for a in &collected.adapters {
        if adapters.iter().any(|n| n == a.name()) {
            return Err(fail(format!(
                "adapter `{}` clashes with a registered adapter of the same name",
                a.name()
            )));
        }
    }
    for p in &collected.profiles {
        if p.name() == "auto" || profiles.iter().any(|n| n == p.name()) {
            return Err(fail(format!(
                "profile `{}` clashes with a registered profile of the same name",
                p.name()
            )));
        }
    }
    let mut loaded = LoadedPlugin {
        name,
        path: shown.clone(),
        ..Default::default()
    };
    for a in collected.adapters {
        loaded.adapters.push(a.name().to_owned());
        crate::registry::register_adapter(a).map_err(|e| fail(e.message))?;
    }
    for p in collected.profiles {
        loaded.profiles.push(p.name().to_owned());
        crate::registry::register_profile(Arc::from(p)).map_err(|e| fail(e.message))?;
    }
    // Registered objects run the library's code until exit: never unload it.
    std::mem::forget(lib);
    tracing::info!(plugin = %loaded.name, path = %shown, "plugin loaded");
    Ok(loaded)
}
