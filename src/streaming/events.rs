//! Engine-level event callbacks: errors, memory pressure, timeouts.

use super::error::InferenceError;
use serde::Serialize;
use std::sync::Mutex;

/// The KV-cache budget was reached; says what the scheduler did about it.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryPressure {
    /// KV-cache bytes held by running requests.
    pub kv_cache_bytes: usize,
    /// The configured budget.
    pub budget_bytes: usize,
    /// What was done (e.g. the batch size reduced, requests kept waiting).
    pub action: String,
}

/// A request ran past the configured time limit and was ended.
#[derive(Clone, Debug, Serialize)]
pub struct TimeoutEvent {
    /// The request.
    pub request_id: u64,
    /// How long it had run, ms.
    pub elapsed_ms: f64,
    /// The limit, ms.
    pub limit_ms: u64,
}

type Handler<T> = Box<dyn Fn(&T) + Send + Sync>;

/// Registered callbacks; they run on the scheduler thread, so they should return quickly.
#[derive(Default)]
pub(crate) struct EventHandlers {
    error: Mutex<Vec<Handler<(u64, InferenceError)>>>,
    memory_pressure: Mutex<Vec<Handler<MemoryPressure>>>,
    timeout: Mutex<Vec<Handler<TimeoutEvent>>>,
}

fn call<T>(list: &Mutex<Vec<Handler<T>>>, v: &T) {
    for h in list.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        h(v);
    }
}

fn add<T>(list: &Mutex<Vec<Handler<T>>>, h: Handler<T>) {
    list.lock().unwrap_or_else(|p| p.into_inner()).push(h);
}

impl EventHandlers {
    pub(crate) fn on_error(&self, h: Handler<(u64, InferenceError)>) {
        add(&self.error, h)
    }
    pub(crate) fn on_memory_pressure(&self, h: Handler<MemoryPressure>) {
        add(&self.memory_pressure, h)
    }
    pub(crate) fn on_timeout(&self, h: Handler<TimeoutEvent>) {
        add(&self.timeout, h)
    }
    pub(crate) fn error(&self, request_id: u64, e: &InferenceError) {
        tracing::warn!(request_id, code = e.code(), "request failed: {e}");
        call(&self.error, &(request_id, e.clone()));
    }
    pub(crate) fn memory_pressure(&self, m: &MemoryPressure) {
        tracing::info!("memory pressure: {}", m.action);
        call(&self.memory_pressure, m);
    }
    pub(crate) fn timeout(&self, t: &TimeoutEvent) {
        call(&self.timeout, t);
    }
}
