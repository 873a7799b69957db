//! One registry for built-in backends, model adapters and profiles. Built-ins register with
//! `inventory::submit!` in their own crates; lookups go through the functions here.

use crate::adapter::{ModelAdapter, ModelSource};
use crate::backend::Backend;
use crate::error::{Error, ErrorCode, Result};
use std::sync::Arc;

/// Options passed to backend constructors.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Worker threads for CPU work; 0 = all cores.
    pub threads: usize,
}

/// A backend constructor registered with `inventory`.
pub struct BackendRegistration {
    /// `cpu`, `webgpu`, ...
    pub name: &'static str,
    /// Higher is preferred by `auto`.
    pub priority: u32,
    /// Builds the backend, or says why it is unavailable.
    pub create: fn(&BackendOptions) -> Result<Arc<dyn Backend>>,
}
inventory::collect!(BackendRegistration);

/// A model adapter registered with `inventory`.
pub struct AdapterRegistration(pub &'static dyn ModelAdapter);
inventory::collect!(AdapterRegistration);

/// Names of the registered backends, most preferred first.
pub fn backend_names() -> Vec<&'static str> {
    let mut v: Vec<_> = inventory::iter::<BackendRegistration>.into_iter().collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.priority));
    v.into_iter().map(|r| r.name).collect()
}

/// Creates the backend `name`, or with `auto` the most preferred one that is available.
pub fn create_backend(name: &str, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    let mut regs: Vec<_> = inventory::iter::<BackendRegistration>.into_iter().collect();
    regs.sort_by_key(|r| std::cmp::Reverse(r.priority));
    if name == "auto" {
        let mut last = None;
        for r in regs {
            match (r.create)(opts) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| {
            Error::new(ErrorCode::WebgpuNotSupported, "no backend is registered")
        }));
    }
    match regs.iter().find(|r| r.name == name) {
        Some(r) => (r.create)(opts),
        None => Err(Error::invalid_config(format!(
            "unknown backend `{name}`; available: auto, {}",
            backend_names().join(", ")
        ))),
    }
}

/// The registered adapter that supports `source`.
pub fn find_adapter(source: &ModelSource) -> Result<&'static dyn ModelAdapter> {
    for r in inventory::iter::<AdapterRegistration> {
        if r.0.supports(source) {
            return Ok(r.0);
        }
    }
    Err(Error::unsupported(format!(
        "no model adapter supports architecture `{}`",
        source.architecture().unwrap_or_else(|| "unknown".into())
    )))
}
