//! [`validate`]: checks every key of a merged [`Config`] against the schema, the device's
//! [`Capabilities`] and a [`BrowserProfile`], auto-corrects what it can (each [`Correction`]
//! says key, old value, new value and why) and refuses what it cannot.

use super::schema::{self, Kind, KEYS};
use super::{Config, Source};
use crate::error::{Error, Result};
use crate::profile::BrowserProfile;

/// Whether one backend can be created here.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendAvailability {
    /// Registry name (`webgpu`, `cpu`).
    pub name: String,
    /// Whether it can be created.
    pub available: bool,
    /// The device it would use, or why it is unavailable.
    pub detail: String,
}

/// What the selected WebGPU adapter offers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuCapabilities {
    /// Adapter name.
    pub name: String,
    /// `SHADER_F16`.
    pub shader_f16: bool,
    /// `SUBGROUP`.
    pub subgroups: bool,
    /// `max_compute_workgroup_size_{x,y,z}`.
    pub max_workgroup_size: [u32; 3],
    /// `max_compute_invocations_per_workgroup`.
    pub max_invocations: u32,
    /// `max_storage_buffer_binding_size`.
    pub max_storage_binding: u64,
    /// A software rasteriser (lavapipe, SwiftShader).
    pub software: bool,
}

/// Facts about the model that limit the configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelFacts {
    /// Parameters in weight tensors.
    pub n_params: u64,
    /// Trained context length.
    pub context_length: usize,
    /// Reduction widths of the weight matrices (hidden size, feed-forward size): a group size
    /// must divide each.
    pub widths: Vec<usize>,
}

/// What the machine (and the model, when known) can do.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Capabilities {
    /// Backends in fallback order (most preferred first).
    pub backends: Vec<BackendAvailability>,
    /// The WebGPU adapter `webgpu` would use, if any.
    pub gpu: Option<GpuCapabilities>,
    /// The model named by `model.path`, if it could be read.
    pub model: Option<ModelFacts>,
}

impl Capabilities {
    /// No device or model known: every backend assumed available, device-limit and model rules
    /// skipped (for checking a file on a machine other than the target).
    pub fn unconstrained() -> Self {
        Capabilities {
            backends: ["webgpu", "cpu"]
                .iter()
                .map(|n| BackendAvailability {
                    name: (*n).into(),
                    available: true,
                    detail: "assumed".into(),
                })
                .collect(),
            gpu: None,
            model: None,
        }
    }
}

/// A problem with one key.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Issue {
    /// Dotted key path (or `runtime.backend` for availability).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// One auto-correction.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Correction {
    /// Dotted key path.
    pub key: String,
    /// The value as given (TOML syntax).
    pub old: String,
    /// The value used instead.
    pub new: String,
    /// Why.
    pub reason: String,
}

/// Valid, corrected, or invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationStatus {
    /// Nothing to change.
    Valid,
    /// Runs after the listed corrections.
    Corrected,
    /// Has errors.
    Invalid,
}

/// The validator's answer.
#[derive(Clone, Debug)]
pub struct Validation {
    /// What cannot run.
    pub errors: Vec<Issue>,
    /// What runs but deserves attention.
    pub warnings: Vec<Issue>,
    /// What was changed.
    pub corrections: Vec<Correction>,
    /// The configuration after the corrections (erroneous keys at their defaults).
    pub corrected: Config,
}

impl Validation {
    /// Valid, corrected or invalid.
    pub fn status(&self) -> ValidationStatus {
        if !self.errors.is_empty() {
            ValidationStatus::Invalid
        } else if !self.corrections.is_empty() {
            ValidationStatus::Corrected
        } else {
            ValidationStatus::Valid
        }
    }

    /// The corrected config, or `INVALID_CONFIG` listing every error.
    pub fn into_result(self) -> Result<Config> {
        if self.errors.is_empty() {
            return Ok(self.corrected);
        }
        let list: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("`{}`: {}", e.key, e.message))
            .collect();
        Err(Error::invalid_config(list.join("; ")))
    }
}

struct Checker<'a> {
    v: Validation,
    profile: &'a dyn BrowserProfile,
    caps: &'a Capabilities,
}

fn show(v: &toml::Value) -> String {
    v.to_string()
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

impl Checker<'_> {
    fn check_backend_switches(&mut self) {
        let key = "backend.webgpu.matvec_shape";
        let shape = self.v.corrected.str(key);
        if !shape.trim().is_empty() && crate::registry::MatvecShape::parse(&shape).is_none() {
            self.error(
                key,
                format!(
                    "\"{shape}\" is not LANESxROWS or LANESxROWSxUNROLL (UNROLL 1, 2 or 4), \
                     e.g. \"128x8\"; empty = the tuning's shape"
                ),
            );
            self.reset(key);
        }
        let c = &self.v.corrected;
        if c.int("kv_cache.bits") < 16
            && c.str("kv_cache.key_grouping") == "channel"
            && c.int("kv_cache.recent_window") < c.int("kv_cache.group_size")
        {
            self.warn(
                "kv_cache.key_grouping",
                "keys per channel need kv_cache.recent_window >= kv_cache.group_size: \
                 they are quantized per token",
            );
        }
        if self.v.corrected.int("kv_cache.bits") < 16
            && self.v.corrected.str("runtime.backend") != "cpu"
        {
            self.warn(
                "kv_cache.bits",
                "a quantized KV cache runs on the CPU backend only so far: the WebGPU backend \
                 refuses it (UNSUPPORTED_MODEL); set runtime.backend = \"cpu\" or kv_cache.bits = 16",
            );
        }
        if self.v.corrected.int("kv_cache.sliding_window") > 0
            && self.v.corrected.str("runtime.backend") != "cpu"
        {
            self.warn(
                "kv_cache.sliding_window",
                "a sliding-window KV cache runs on the CPU backend only so far: the WebGPU \
                 backend refuses it (UNSUPPORTED_MODEL); set runtime.backend = \"cpu\"",
            );
        }
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.v.errors.push(Issue {
            key: key.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.v.warnings.push(Issue {
            key: key.into(),
            message: message.into(),
        });
    }

    fn correct(&mut self, key: &str, new: toml::Value, reason: impl Into<String>) {
        let old = self.v.corrected.value(key);
        if old == new {
            return;
        }
        self.v.corrections.push(Correction {
            key: key.into(),
            old: show(&old),
            new: show(&new),
            reason: reason.into(),
        });
        self.v.corrected.set(key, new, Source::Corrected);
    }

    /// Replaces an erroneous value by its default, so `corrected` stays well-typed.
    fn reset(&mut self, key: &str) {
        if let Some(k) = schema::key(key) {
            self.v
                .corrected
                .set(key, k.default_value(), Source::Default);
        }
    }

    fn check_types(&mut self) {
        for k in KEYS {
            let Some(s) = self.v.corrected.setting(k.path).cloned() else {
                continue;
            };
            let v = &s.value;
            let bad_type = |c: &mut Self| {
                c.error(
                    k.path,
                    format!(
                        "must be {}, got {} {} (from {})",
                        k.kind.describe(),
                        type_name(v),
                        show(v),
                        s.source
                    ),
                );
                c.reset(k.path);
            };
            match (k.kind, v) {
                (Kind::Bool, toml::Value::Boolean(_)) => {}
                (Kind::Int { min, max }, toml::Value::Integer(i)) => {
                    if *i < min || *i > max {
                        let c = (*i).clamp(min, max);
                        self.correct(
                            k.path,
                            toml::Value::Integer(c),
                            format!("out of range {min}..={max}"),
                        );
                    }
                }
                (Kind::IntOneOf(set), toml::Value::Integer(i)) => {
                    if !set.contains(i) {
                        // Nearest allowed value, the larger on a tie (more precision).
                        let n = set
                            .iter()
                            .copied()
                            .min_by_key(|s| ((s - i).abs(), -s))
                            .unwrap_or(*i);
                        self.correct(
                            k.path,
                            toml::Value::Integer(n),
                            format!("{i} is not {}; nearest allowed", k.kind.describe()),
                        );
                    }
                }
                (Kind::Float { min, max }, toml::Value::Float(_) | toml::Value::Integer(_)) => {
                    let f = v
                        .as_float()
                        .or(v.as_integer().map(|i| i as f64))
                        .unwrap_or(0.0);
                    if f.is_nan() {
                        bad_type(self);
                    } else if f < min || f > max {
                        self.correct(
                            k.path,
                            toml::Value::Float(f.clamp(min, max)),
                            format!("out of range {min}..={max}"),
                        );
                    }
                }
                (Kind::Choice(choices), toml::Value::String(text)) => {
                    if !choices.contains(&text.as_str()) {
                        let lower = text.to_ascii_lowercase();
                        let (new, why) = if choices.contains(&lower.as_str()) {
                            (lower, "values are lower case".to_string())
                        } else if let Some(n) = schema::nearest(&lower, choices.iter().copied()) {
                            (n.to_string(), format!("unknown value; did you mean `{n}`?"))
                        } else {
                            let d = k.default_value().as_str().unwrap_or_default().to_string();
                            (
                                d,
                                format!(
                                    "unknown value (expected {}); using the default",
                                    k.kind.describe()
                                ),
                            )
                        };
                        self.correct(k.path, toml::Value::String(new), why);
                    }
                }
                (Kind::Text, toml::Value::String(_)) => {}
                (Kind::Triple, toml::Value::Array(a)) => {
                    if a.len() != 3
                        || !a
                            .iter()
                            .all(|x| x.as_integer().is_some_and(|i| (1..=1 << 16).contains(&i)))
                    {
                        bad_type(self);
                    }
                }
                (Kind::TextList, toml::Value::Array(a)) => {
                    if !a.iter().all(toml::Value::is_str) {
                        bad_type(self);
                    }
                }
                _ => bad_type(self),
            }
        }
    }

    fn check_unknown(&mut self) {
        for u in self.v.corrected.unknown.clone() {
            let hint = match schema::nearest_key(&u.path) {
                Some(k) => format!("; did you mean `{k}`?"),
                None => String::new(),
            };
            self.error(&u.path, format!("unknown key (from {}){hint}", u.source));
        }
        self.v.corrected.unknown.clear();
    }

    /// The smallest supported width at or above `bits` that packs evenly into 32-bit words
    /// (2, 4, 8), else the nearest supported one.
    fn supported_bits(&self, bits: u8) -> Option<u8> {
        let sup = self.profile.supported_bits();
        if sup.contains(&bits) {
            return None;
        }
        let mut s: Vec<u8> = sup.to_vec();
        s.sort_unstable();
        s.iter()
            .copied()
            .find(|b| *b >= bits && b.is_power_of_two())
            .or_else(|| s.iter().copied().find(|b| *b >= bits))
            .or_else(|| s.last().copied())
    }

    fn check_bits(&mut self) {
        let pname = self.profile.name().to_owned();
        let method = self.v.corrected.str("quantization.method");
        if let Some(bits) = method
            .strip_prefix("int")
            .and_then(|b| b.parse::<u8>().ok())
        {
            if let Some(n) = self.supported_bits(bits) {
                self.correct(
                    "quantization.method",
                    toml::Value::String(format!("int{n}")),
                    format!(
                        "profile `{pname}` does not run {bits}-bit weights; {n}-bit is the nearest supported width that packs evenly into 32-bit words"
                    ),
                );
            }
        }
        let mut keys = vec!["kv_cache.bits"];
        keys.extend(super::schema::ROLE_KEYS.iter().map(|(k, _)| *k));
        if method == "mixed" {
            keys.extend([
                "quantization.layers.embedding",
                "quantization.layers.attention",
                "quantization.layers.feedforward",
                "quantization.layers.lm_head",
            ]);
        }
        for key in keys {
            let b = self.v.corrected.int(key);
            if (2..=8).contains(&b) {
                if let Some(n) = self.supported_bits(b as u8) {
                    self.correct(
                        key,
                        toml::Value::Integer(n.into()),
                        format!("profile `{pname}` does not run {b}-bit values"),
                    );
                }
            }
        }
    }

    fn check_workgroup(&mut self) {
        let key = "performance.workgroup_size";
        let wg = self.v.corrected.triple(key);
        let profile_wg = self
            .profile
            .config_defaults()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| {
                let (x, y) = self.profile.matmul_workgroup();
                toml::Value::Array(vec![
                    toml::Value::Integer((x * y).into()),
                    1.into(),
                    1.into(),
                ])
            });
        let total: u64 = wg.iter().map(|&d| u64::from(d)).product();
        let pname = self.profile.name().to_owned();
        let mut reason = None;
        if let Some(g) = &self.caps.gpu {
            if wg.iter().zip(g.max_workgroup_size).any(|(a, b)| *a > b) {
                reason = Some(format!(
                    "exceeds the device's max_compute_workgroup_size {:?}",
                    g.max_workgroup_size
                ));
            } else if total > u64::from(g.max_invocations) {
                reason = Some(format!(
                    "{total} invocations exceed the device's max_compute_invocations_per_workgroup {}",
                    g.max_invocations
                ));
            }
        }
        if reason.is_none() && total > u64::from(self.profile.max_workgroup_invocations()) {
            reason = Some(format!(
                "{total} invocations exceed profile `{pname}`'s limit of {}",
                self.profile.max_workgroup_invocations()
            ));
        }
        if let Some(r) = reason {
            self.correct(
                key,
                profile_wg,
                format!("{r}; using the profile's workgroup"),
            );
        } else if !total.is_power_of_two() {
            let p = 1u64 << (63 - total.leading_zeros());
            self.correct(
                key,
                toml::Value::Array(vec![toml::Value::Integer(p as i64), 1.into(), 1.into()]),
                "the kernels reduce over power-of-two workgroups; rounded down",
            );
        }
    }

    fn check_group_sizes(&mut self) {
        let widths = self
            .caps
            .model
            .as_ref()
            .map(|m| m.widths.clone())
            .unwrap_or_default();
        for (key, model_bound) in [
            ("quantization.group_size", true),
            ("kv_cache.group_size", false),
        ] {
            let g = self.v.corrected.int(key);
            if g % 32 != 0 || g <= 0 {
                // Kernels read 32-value blocks: the nearest multiple of 32 (ties go down).
                let b = ((g + 15) / 32 * 32).max(32);
                self.correct(
                    key,
                    toml::Value::Integer(b),
                    format!("{g} is not a multiple of 32 (the kernels read 32-value blocks); nearest valid"),
                );
                continue;
            }
            let uneven: Vec<usize> = widths
                .iter()
                .copied()
                .filter(|w| model_bound && *w as i64 % g != 0)
                .collect();
            if !uneven.is_empty() {
                self.warn(
                    key,
                    format!(
                        "{g} does not divide the model's widths {uneven:?}: the last group of \
                         each such row is shorter (supported; its scale covers fewer values)"
                    ),
                );
            }
        }
    }

    fn check_kv(&mut self) {
        if let Some(m) = &self.caps.model {
            let ctx = m.context_length as i64;
            let n = self.v.corrected.int("kv_cache.max_seq_len");
            if ctx > 0 && n > ctx {
                self.correct(
                    "kv_cache.max_seq_len",
                    toml::Value::Integer(ctx),
                    format!("larger than the model's context of {ctx} tokens; clamped"),
                );
            }
        }
        let n = self.v.corrected.int("kv_cache.max_seq_len");
        for key in ["kv_cache.sliding_window", "kv_cache.recent_window"] {
            let w = self.v.corrected.int(key);
            if w > n {
                self.correct(
                    key,
                    toml::Value::Integer(n),
                    format!("larger than kv_cache.max_seq_len = {n}; clamped"),
                );
            }
        }
    }

    fn check_features(&mut self) {
        let pname = self.profile.name().to_owned();
        for (key, feature, allowed, has) in [
            (
                "runtime.f16",
                "shader-f16",
                self.profile.allow_f16(),
                self.caps.gpu.as_ref().map(|g| g.shader_f16),
            ),
            (
                "runtime.subgroups",
                "subgroups",
                self.profile.allow_subgroups(),
                self.caps.gpu.as_ref().map(|g| g.subgroups),
            ),
        ] {
            if self.v.corrected.str(key) != "on" {
                continue;
            }
            if !allowed {
                self.correct(
                    key,
                    "off".into(),
                    format!("profile `{pname}` does not allow {feature}; f32 / workgroup-memory kernels instead"),
                );
            } else if has == Some(false) {
                self.correct(
                    key,
                    "off".into(),
                    format!("the adapter lacks {feature}; f32 / workgroup-memory kernels instead"),
                );
            }
        }
    }

    fn check_backend(&mut self) {
        let key = "runtime.backend";
        let want = self.v.corrected.str(key);
        let chain = &self.caps.backends;
        let available: Vec<&str> = chain
            .iter()
            .filter(|b| b.available)
            .map(|b| b.name.as_str())
            .collect();
        if available.is_empty() {
            self.error(key, "no backend is available on this machine");
            return;
        }
        if want == "auto" || available.contains(&want.as_str()) {
            return;
        }
        let why = chain
            .iter()
            .find(|b| b.name == want)
            .map_or("not registered".to_string(), |b| b.detail.clone());
        if !self.v.corrected.bool("runtime.fallback") {
            self.error(
                key,
                format!("backend `{want}` is unavailable ({why}) and runtime.fallback = false"),
            );
            return;
        }
        let pos = chain.iter().position(|b| b.name == want).unwrap_or(0);
        let next = chain[pos..]
            .iter()
            .chain(chain[..pos].iter())
            .find(|b| b.available)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        self.correct(
            key,
            toml::Value::String(next.clone()),
            format!("backend `{want}` is unavailable ({why}); falling back to `{next}`"),
        );
    }

    fn check_memory(&mut self) {
        let Some(m) = self.caps.model.clone() else {
            return;
        };
        let budget = self
            .v
            .corrected
            .int("quantization.adaptive.memory_budget_mb") as f64;
        let group = self.v.corrected.int("quantization.group_size").max(32) as f64;
        let asym = self.v.corrected.str("quantization.scheme") == "asymmetric";
        let mb = |method: &str| -> Option<f64> {
            let bits = match method {
                "fp32" => 32.0,
                "fp16" => 16.0,
                m => {
                    let b: f64 = m.strip_prefix("int")?.parse().ok()?;
                    // f16 scale (and offset) per group: real bits per weight.
                    b + if asym { 32.0 } else { 16.0 } / group
                }
            };
            Some(m.n_params as f64 * bits / 8.0 / 1e6)
        };
        let method = self.v.corrected.str("quantization.method");
        let Some(need) = mb(&method) else {
            return;
        };
        if need <= budget {
            return;
        }
        if !self.v.corrected.bool("quantization.adaptive.enabled") {
            self.warn(
                "quantization.adaptive.memory_budget_mb",
                format!("{method} weights need about {need:.0} MB, over the {budget:.0} MB budget (adaptive precision is off)"),
            );
            return;
        }
        let sup = self.profile.supported_bits().to_vec();
        let lower = ["int8", "int4", "int3", "int2"]
            .into_iter()
            .filter(|c| {
                let b: u8 = c[3..].parse().unwrap_or(0);
                sup.contains(&b)
            })
            .filter_map(|c| mb(c).map(|n| (c, n)))
            .find(|(_, n)| *n <= budget && *n < need);
        match lower {
            Some((c, n)) => self.correct(
                "quantization.method",
                toml::Value::String(c.into()),
                format!(
                    "{method} needs about {need:.0} MB for {} parameters, over the {budget:.0} MB budget; {c} needs {n:.0} MB",
                    m.n_params
                ),
            ),
            None => self.error(
                "quantization.adaptive.memory_budget_mb",
                format!(
                    "the model ({} parameters) does not fit {budget:.0} MB at any width profile `{}` supports",
                    m.n_params,
                    self.profile.name()
                ),
            ),
        }
    }

    fn check_names(&mut self) {
        let key = "runtime.profile";
        let p = self.v.corrected.str(key);
        let names = crate::registry::profile_names();
        if p != "auto" && !names.contains(&p) {
            let (new, why) = match schema::nearest(&p, names.iter().map(String::as_str)) {
                Some(n) => (
                    n.to_string(),
                    format!("unknown profile; did you mean `{n}`?"),
                ),
                None => (
                    "auto".to_string(),
                    format!(
                        "unknown profile (known: auto, {}); using auto",
                        names.join(", ")
                    ),
                ),
            };
            self.correct(key, toml::Value::String(new), why);
        }
        for path in self.v.corrected.strings("plugins") {
            if !std::path::Path::new(&path).exists() {
                self.error("plugins", format!("plugin library {path} does not exist"));
            }
        }
    }
}

/// Checks `config` against the schema, `caps` and `profile`; corrects what can be corrected.
/// Never panics on any input: wrong types are errors naming the key path and where the value
/// came from.
pub fn validate(config: &Config, caps: &Capabilities, profile: &dyn BrowserProfile) -> Validation {
    let mut c = Checker {
        v: Validation {
            errors: Vec::new(),
            warnings: Vec::new(),
            corrections: Vec::new(),
            corrected: config.clone(),
        },
        profile,
        caps,
    };
    c.check_unknown();
    c.check_types();
    c.check_names();
    c.check_backend();
    c.check_features();
    c.check_bits();
    c.check_group_sizes();
    c.check_workgroup();
    c.check_kv();
    c.check_memory();
    c.check_backend_switches();
    c.v
}
