//! The wasm-bindgen exports the worker (`web/js/worker.js`) calls. Values cross as JSON text
//! (configurations, parameters, reports) or plain numbers and strings; errors cross as JS
//! `Error`s with the stable `.code` of [`lowbit_core::ErrorCode`].

use crate::settings::{self, WebPlan};
use js_sys::{Function, Promise, Reflect};
use lowbit_core::adapter::{compile_kernels, LoadContext, Logits, ModelSource, TextModel};
use lowbit_core::config::validate::{BackendAvailability, Capabilities, GpuCapabilities};
use lowbit_core::formats::GgufFile;
use lowbit_core::generate::{FinishReason, GenerateOptions, SamplingParams, Sequence};
use lowbit_core::quant::WeightStore;
use lowbit_core::registry::{adapter_names, find_adapter};
use lowbit_core::{Backend, Error, ErrorCode, Result};
use lowbit_wgpu::{AdapterDetails, WgpuBackend};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

unsafe extern "C" {
    /// The linker's constructor list: runs the `inventory` registrations (backends, adapters,
    /// profiles), which a wasm reactor module does not run by itself.
    fn __wasm_call_ctors();
}

/// Runs once when the module is instantiated: registrations, and panics to the console.
#[wasm_bindgen(start)]
pub fn start() {
    // SAFETY: called once, at instantiation, before any other export; `inventory`'s
    // constructors are idempotent should the linker also call them.
    unsafe { __wasm_call_ctors() };
    // wasm-ld keeps only the objects something references, so a registration in a crate the
    // module names nowhere else is dropped (seen: the LLaMA adapter's). Name the built-ins.
    if find_adapter_by_name("llama").is_none() {
        let _ = lowbit_core::registry::register_adapter(Box::new(lowbit_models::LlamaAdapter));
    }
    if find_adapter_by_name("gemma3").is_none() {
        let _ = lowbit_core::registry::register_adapter(Box::new(lowbit_models::Gemma3Adapter));
    }
    std::panic::set_hook(Box::new(|info| {
        console_error(&format!("lowbit panicked: {info}"))
    }));
}

fn find_adapter_by_name(name: &str) -> Option<String> {
    adapter_names().into_iter().find(|n| n == name)
}

/// A JS `Error` carrying `code` (`MODEL_LOADING_FAILED`, …).
fn js_error(e: &Error) -> JsValue {
    let err = js_sys::Error::new(&e.message);
    let _ = Reflect::set(&err, &"code".into(), &e.code.as_str().into());
    err.into()
}

fn js<T>(r: Result<T>) -> std::result::Result<T, JsValue> {
    r.map_err(|e| js_error(&e))
}

fn to_text(v: &Value) -> String {
    v.to_string()
}

/// The registered adapters, backends and profiles: what `inventory` collected in this module
/// (a page checks that static registration works in its browser).
#[wasm_bindgen(js_name = registrations)]
pub fn registrations() -> String {
    to_text(&json!({
        "adapters": lowbit_core::registry::adapter_names(),
        "backends": lowbit_core::registry::backend_names(),
        "profiles": lowbit_core::registry::profile_names(),
    }))
}

/// `validateConfiguration(config, { browser })`: the validator's answer for `config_json` under
/// the profile of `browser` (a name or a user agent), without any device (limits unknown).
#[wasm_bindgen(js_name = validateConfiguration)]
pub fn validate_configuration(
    config_json: &str,
    browser: &str,
) -> std::result::Result<String, JsValue> {
    let r = js(settings::resolve(
        config_json,
        browser,
        &Capabilities::unconstrained(),
    ))?;
    Ok(to_text(&settings::validation_json(&r)))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A loaded model and its description.
struct Loaded {
    model: Box<dyn TextModel>,
    info: Value,
}

/// The engine of one worker: a backend, the plan, and at most one loaded model.
#[wasm_bindgen]
pub struct Engine {
    backend: Arc<dyn Backend>,
    plan: WebPlan,
    capabilities: Value,
    validation: Value,
    model: RefCell<Option<Rc<Loaded>>>,
    /// A model file being received.
    staged: RefCell<Vec<u8>>,
    /// FNV-1a of the bytes received (the weight store's key, with their length).
    hash: Cell<u64>,
    /// Matrices quantized on an earlier load of the same file and plan, then what a load made.
    store: RefCell<WeightStore>,
    cancel: Arc<AtomicBool>,
    busy: Cell<bool>,
}

/// A backend, why it was chosen, and its adapter when it is WebGPU.
struct Opened {
    backend: Arc<dyn Backend>,
    why: String,
    adapter: Option<AdapterDetails>,
}

/// Opens the backend the plan asks for: WebGPU on the page's adapter unless `runtime.backend`
/// is `cpu`, the CPU backend when WebGPU is missing or fails and fallback is allowed.
/// Returns it with why it was chosen.
// `Backend` is shared as an `Arc` (as natively); in a page everything runs on one thread.
#[allow(clippy::arc_with_non_send_sync)]
async fn open_backend(plan: &WebPlan) -> Result<Opened> {
    let cpu = |why: String| -> Result<Opened> {
        Ok(Opened {
            backend: lowbit_cpu::create(&plan.options)?,
            why,
            adapter: None,
        })
    };
    if plan.backend == "cpu" {
        return cpu("runtime.backend = \"cpu\"".into());
    }
    let mut options = plan.options.clone();
    // A page cannot choose among adapters: the browser's one is used even when it is its
    // software fallback (reported as `isFallbackAdapter`).
    options.tuning.webgpu.allow_software_adapter = true;
    match WgpuBackend::new_async(&lowbit_wgpu::options(&options)).await {
        Ok(b) => Ok(Opened {
            why: format!(
                "runtime.backend = \"{}\": the page's WebGPU adapter",
                plan.backend
            ),
            adapter: Some(b.adapter_details()),
            backend: Arc::new(b),
        }),
        Err(e) if plan.fallback => cpu(format!(
            "WebGPU unavailable ({}: {}); runtime.fallback = true",
            e.code.as_str(),
            e.message
        )),
        Err(e) => Err(e),
    }
}

/// What the page and its chosen backend offer.
fn capabilities_json(o: &Opened, r: &lowbit_core::config::Resolution) -> Value {
    let info = o.backend.info();
    json!({
        "backend": info.name,
        "backendReason": o.why,
        "device": info.device,
        "driver": info.driver,
        "kernelFeatures": info.features,
        "profile": r.profile.name(),
        "profileReason": r.profile_reason,
        "adapter": o.adapter.as_ref().map(|a| json!({
            "name": a.name,
            "driver": a.driver,
            "backend": a.backend,
            "deviceType": a.device_type,
            "isFallbackAdapter": a.software,
            "features": a.features,
            "limits": a.limits.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })),
        "simd": if cfg!(target_feature = "simd128") { "simd128" } else { "scalar" },
        "cpuThreads": 1,
        "cpuThreadsReason": "wasm threads need a std built with atomics (nightly -Zbuild-std); \
                             this build is single-threaded",
    })
}

fn gpu_capabilities(a: &AdapterDetails) -> GpuCapabilities {
    let limit = |k: &str| {
        a.limits
            .iter()
            .find(|(n, _)| *n == k)
            .map_or(0, |(_, v)| *v)
    };
    let has = |f: &str| a.features.iter().any(|x| x == f);
    GpuCapabilities {
        name: a.name.clone(),
        shader_f16: has("SHADER_F16"),
        subgroups: has("SUBGROUP"),
        max_workgroup_size: [limit("maxComputeWorkgroupSizeX") as u32, 1, 1],
        max_invocations: limit("maxComputeInvocationsPerWorkgroup") as u32,
        max_storage_binding: limit("maxStorageBufferBindingSize"),
        software: a.software,
    }
}

/// Waits for what a JS callback returned when it is a promise (the worker yields to its event
/// loop there, so a `stop` message can arrive between tokens).
async fn settle(v: JsValue) -> std::result::Result<JsValue, JsValue> {
    match v.dyn_into::<Promise>() {
        Ok(p) => JsFuture::from(p).await,
        Err(v) => Ok(v),
    }
}

#[wasm_bindgen]
impl Engine {
    /// Resolves `config_json` under the browser `user_agent`'s profile, opens the backend and
    /// validates again against what its adapter offers.
    pub async fn create(
        config_json: String,
        user_agent: String,
    ) -> std::result::Result<Engine, JsValue> {
        let (_, plan0) = js(settings::plan_unconstrained(&config_json, &user_agent))?;
        let opened = js(open_backend(&plan0).await)?;
        let info = opened.backend.info();
        let caps = Capabilities {
            backends: vec![BackendAvailability {
                name: info.name,
                available: true,
                detail: info.device,
            }],
            gpu: opened.adapter.as_ref().map(gpu_capabilities),
            model: None,
        };
        let r = js(settings::resolve(&config_json, &user_agent, &caps))?;
        let plan = js(WebPlan::from_resolution(&r))?;
        Ok(Engine {
            capabilities: capabilities_json(&opened, &r),
            validation: settings::validation_json(&r),
            backend: opened.backend,
            plan,
            model: RefCell::new(None),
            staged: RefCell::new(Vec::new()),
            hash: Cell::new(FNV_OFFSET),
            store: RefCell::new(WeightStore::recording()),
            cancel: Arc::new(AtomicBool::new(false)),
            busy: Cell::new(false),
        })
    }

    /// `detectCapabilities()`: adapter, features, limits, the chosen backend and profile, and why.
    pub fn capabilities(&self) -> String {
        to_text(&self.capabilities)
    }

    /// The validator's answer for the configuration this engine runs.
    pub fn validation(&self) -> String {
        to_text(&self.validation)
    }

    /// Starts receiving a model file of `total` bytes (0 = unknown), dropping the loaded model.
    /// The bytes arrive in chunks ([`Engine::push_bytes`]) straight into wasm memory, so the
    /// page never holds the whole file in one `ArrayBuffer`.
    pub fn begin_load(&self, total: f64) -> std::result::Result<(), JsValue> {
        if self.busy.get() {
            return Err(js_error(&Error::invalid_config(
                "the engine is busy generating",
            )));
        }
        *self.model.borrow_mut() = None;
        self.hash.set(FNV_OFFSET);
        *self.store.borrow_mut() = WeightStore::recording();
        let mut staged = self.staged.borrow_mut();
        *staged = Vec::new();
        if total > 0.0 {
            staged.try_reserve_exact(total as usize).map_err(|_| {
                js_error(&Error::out_of_memory(format!(
                    "the model file has {total} bytes; this page's wasm memory cannot hold them"
                )))
            })?;
        }
        Ok(())
    }

    /// Appends a chunk of the model file.
    pub fn push_bytes(&self, chunk: &[u8]) -> std::result::Result<(), JsValue> {
        let mut staged = self.staged.borrow_mut();
        staged.try_reserve(chunk.len()).map_err(|_| {
            js_error(&Error::out_of_memory(format!(
                "{} bytes of the model received; wasm memory cannot hold {} more",
                staged.len(),
                chunk.len()
            )))
        })?;
        staged.extend_from_slice(chunk);
        let mut h = self.hash.get();
        for &b in chunk {
            h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self.hash.set(h);
        Ok(())
    }

    /// The key of the received file and this engine's weight plan, under which its quantized
    /// weights are stored: `<fnv64 hex>-<bytes>/<plan>`.
    pub fn weights_key(&self) -> String {
        format!(
            "{:016x}-{}/{}",
            self.hash.get(),
            self.staged.borrow().len(),
            self.plan.weights.label().replace([' ', ','], "")
        )
    }

    /// Hands over matrices an earlier load stored (its [`Engine::take_weights`]); a damaged
    /// blob is refused with its error (the load then quantizes).
    pub fn provide_weights(&self, bytes: &[u8]) -> std::result::Result<(), JsValue> {
        let mut store = js(WeightStore::from_bytes(bytes))?;
        store.record = true;
        *self.store.borrow_mut() = store;
        Ok(())
    }

    /// The weights the last load quantized, to be stored for the next one (`undefined` when
    /// it quantized nothing).
    pub fn take_weights(&self) -> Option<Vec<u8>> {
        let store = std::mem::take(&mut *self.store.borrow_mut());
        store.changed().then(|| store.to_bytes())
    }

    /// Loads the GGUF model received: quantizes per the plan (`progress(done, total, tensor)`
    /// per tensor), uploads, and compiles every kernel. Returns the model's description.
    pub async fn finish_load(&self, progress: Function) -> std::result::Result<String, JsValue> {
        if self.busy.get() {
            return Err(js_error(&Error::invalid_config(
                "the engine is busy generating",
            )));
        }
        let bytes = std::mem::take(&mut *self.staged.borrow_mut());
        let g = js(GgufFile::from_bytes(bytes))?;
        let source = ModelSource::Gguf(Arc::new(g));
        let adapter = js(find_adapter(&source))?;
        let mut ctx = LoadContext {
            store: std::mem::take(&mut *self.store.borrow_mut()),
            ..Default::default()
        };
        ctx.store.record = true;
        let mut report = |done: usize, total: usize, name: &str| {
            let _ = progress.call3(
                &JsValue::NULL,
                &(done as f64).into(),
                &(total as f64).into(),
                &name.into(),
            );
        };
        let model = js(adapter
            .load_with(
                &source,
                &self.plan.weights,
                self.backend.clone(),
                &mut report,
                &mut ctx,
            )
            .and_then(|m| m.into_text()))?;
        drop(source);
        let (from_store, quantized) = (ctx.store.hits, ctx.store.misses);
        *self.store.borrow_mut() = ctx.store;
        report(0, 1, "compiling kernels");
        js(compile_kernels(model.as_ref()).await)?;
        report(1, 1, "compiling kernels");
        let c = model.config();
        let info = json!({
            "name": c.name,
            "architecture": c.architecture,
            "layers": c.n_layers,
            "contextLength": c.context_length,
            "vocabSize": c.vocab_size,
            "parameters": c.n_params,
            "quantization": self.plan.weights.method(),
            "weights": self.plan.weights.label(),
            "weightBytes": self.backend.weight_bytes(),
            "backend": self.backend.info().name,
            "matricesFromCache": from_store,
            "matricesQuantized": quantized,
        });
        *self.model.borrow_mut() = Some(Rc::new(Loaded {
            model,
            info: info.clone(),
        }));
        Ok(to_text(&info))
    }

    /// Teacher-forced agreement with a reference continuation: runs `prompt` followed by
    /// `tokens_json` (token ids) in one pass and, for each reference token, answers this
    /// engine's own choice there and how far (in logits) the reference token is below it
    /// (`[{argmax, gap}]`; gap 0 where they agree). Compares engines across machines without
    /// letting one near-tie flip every later token.
    pub async fn score(
        &self,
        prompt: String,
        tokens_json: String,
    ) -> std::result::Result<String, JsValue> {
        let loaded = self.loaded()?;
        let reference: Vec<u32> = serde_json::from_str(&tokens_json)
            .map_err(|e| js_error(&Error::invalid_config(format!("tokens: {e}"))))?;
        let model = loaded.model.as_ref();
        let mut ids = js(model.tokenizer().encode(&prompt, true))?;
        let n_prompt = ids.len();
        if n_prompt == 0 {
            return Err(js_error(&Error::invalid_config(
                "the prompt is empty (no tokens)",
            )));
        }
        ids.extend_from_slice(&reference);
        let mut cache = js(model.new_cache(ids.len() + 1))?;
        let logits = js(model.forward(&mut cache, &ids, Logits::All).await)?;
        let vocab = model.config().vocab_size;
        let rows: Vec<Value> = reference
            .iter()
            .enumerate()
            .map(|(i, &want)| {
                let row = &logits[(n_prompt + i - 1) * vocab..(n_prompt + i) * vocab];
                let best = lowbit_core::generate::argmax(row);
                let gap = row[best as usize]
                    - row.get(want as usize).copied().unwrap_or(f32::NEG_INFINITY);
                json!({ "argmax": best, "gap": gap })
            })
            .collect();
        Ok(to_text(&Value::Array(rows)))
    }

    /// The loaded model, shared with a generation that is running.
    fn loaded(&self) -> std::result::Result<Rc<Loaded>, JsValue> {
        self.model
            .borrow()
            .clone()
            .ok_or_else(|| js_error(&Error::invalid_config("no model is loaded")))
    }

    /// Ends the running generation within one token (its promise resolves with
    /// `finishReason: "cancelled"`).
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Generates from `prompt`. `params_json`: `maxTokens`, `temperature`, `topP`, `topK`,
    /// `seed`, `stop` (strings), `chat` (wrap the prompt in the model's chat template); absent
    /// ones take the config's `generation.*`. `on_token(text, isLast, tokenId)` fires per token;
    /// when it returns a promise, generation waits for it. Resolves with the text, tokens,
    /// finish reason and statistics.
    pub async fn generate(
        &self,
        prompt: String,
        params_json: String,
        on_token: Function,
    ) -> std::result::Result<String, JsValue> {
        let loaded = self.loaded()?;
        if self.busy.replace(true) {
            return Err(js_error(&Error::invalid_config(
                "a generation is already running",
            )));
        }
        self.cancel.store(false, Ordering::Relaxed);
        let out = self.run(&loaded, &prompt, &params_json, &on_token).await;
        self.busy.set(false);
        out.map(|v| to_text(&v))
    }

    async fn run(
        &self,
        loaded: &Loaded,
        prompt: &str,
        params_json: &str,
        on_token: &Function,
    ) -> std::result::Result<Value, JsValue> {
        let p: Value = serde_json::from_str(if params_json.is_empty() {
            "{}"
        } else {
            params_json
        })
        .map_err(|e| js_error(&Error::invalid_config(format!("generate parameters: {e}"))))?;
        let plan = &self.plan;
        let num = |k: &str| p.get(k).and_then(Value::as_f64);
        let opts = GenerateOptions {
            max_tokens: num("maxTokens").map_or(plan.max_tokens, |v| v.max(1.0) as usize),
            sampling: SamplingParams {
                temperature: num("temperature").map_or(plan.temperature, |v| v as f32),
                top_p: num("topP").map_or(plan.top_p, |v| v as f32),
                top_k: num("topK").map_or(plan.top_k, |v| v.max(0.0) as usize),
                seed: num("seed").map_or(0, |v| v as u64),
            },
            stop: p
                .get("stop")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            cancel: Some(self.cancel.clone()),
        };
        let model = loaded.model.as_ref();
        let tok = model.tokenizer();
        let ids = js(if p.get("chat").and_then(Value::as_bool).unwrap_or(false) {
            tok.encode_chat(&[("user", prompt)], true)
        } else {
            tok.encode(prompt, true)
        })?;
        let max_seq = plan.max_seq_len.min(model.config().context_length.max(2));
        let mut cache = js(model.new_cache(max_seq))?;
        let mut seq = js(Sequence::new(&cache, ids, opts))?;
        loop {
            let out = match seq.step(model, &mut cache).await {
                Ok(out) => out,
                Err(e) if e.code == ErrorCode::Cancelled => seq.cancel(),
                Err(e) => return Err(js_error(&e)),
            };
            let last = out.finished.is_some();
            let id = out.token.map_or(JsValue::NULL, |t| JsValue::from(t as f64));
            let r = on_token.call3(&JsValue::NULL, &out.text.as_str().into(), &last.into(), &id)?;
            settle(r).await?;
            if last {
                break;
            }
        }
        let g = seq.generation(model, &cache);
        Ok(json!({
            "text": g.text,
            "tokens": g.tokens,
            "promptTokens": seq.prompt().len(),
            "finishReason": g.finish_reason,
            "cancelled": g.finish_reason == FinishReason::Cancelled,
            "stats": g.stats,
            "model": loaded.info,
        }))
    }
}

/// `runConformance(config, userAgent, filter)`: the op conformance suite on the backend
/// `config` selects (`runtime.backend = "webgpu"` or `"cpu"`; no fallback), on cases whose
/// op, shape or format contains `filter` (empty = all). Resolves with one result per case.
#[cfg(feature = "conformance")]
#[wasm_bindgen(js_name = runConformance)]
pub async fn run_conformance(
    config_json: String,
    user_agent: String,
    filter: String,
) -> std::result::Result<String, JsValue> {
    let (r, mut plan) = js(settings::plan_unconstrained(&config_json, &user_agent))?;
    plan.fallback = false;
    let b = js(open_backend(&plan).await)?.backend;
    let mut rows = Vec::new();
    for case in lowbit_core::conformance::cases() {
        if !filter.is_empty() && !case.matches(&filter) {
            continue;
        }
        rows.push(lowbit_core::conformance::run_case(b.as_ref(), &case).await);
    }
    Ok(to_text(&json!({
        "backend": { "name": b.info().name, "device": b.info().device, "features": b.info().features },
        "profile": r.profile.name(),
        "results": rows,
    })))
}
