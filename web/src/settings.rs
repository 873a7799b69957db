//! The page's configuration: a JavaScript `config` object (the TOML keys of SPEC §2, nested as
//! sections or dotted) merged over the schema's defaults and the browser's profile, validated
//! against what the page's adapter offers, and turned into a plan. Pure Rust, so the rules are
//! tested natively; the bindings only move JSON across.

use lowbit_core::adapter::QuantPlan;
use lowbit_core::config::toml;
use lowbit_core::config::{
    resolve_layers, tuning_from_config, weights_from_config, Capabilities, Config, Layer,
    Resolution, Source, Validation,
};
use lowbit_core::profile::profile_for_browser;
use lowbit_core::registry::{find_profile, BackendOptions, BackendTuning};
use lowbit_core::{Error, Result};
use serde_json::{json, Map, Value};

/// Converts a JSON value into TOML. `null` has no TOML form: `Ok(None)` (the key is left at its
/// lower layers' value).
fn to_toml(path: &str, v: &Value) -> Result<Option<toml::Value>> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(
            a.iter()
                .enumerate()
                .filter_map(|(i, x)| to_toml(&format!("{path}[{i}]"), x).transpose())
                .collect::<Result<_>>()?,
        ),
        Value::Object(o) => toml::Value::Table(to_table(path, o)?),
    }))
}

fn to_table(path: &str, o: &Map<String, Value>) -> Result<toml::Table> {
    let mut t = toml::Table::new();
    for (k, v) in o {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if let Some(v) = to_toml(&p, v)? {
            t.insert(k.clone(), v);
        }
    }
    Ok(t)
}

/// The layer of a page's `config` object: `{"quantization": {"method": "int2"}}` and
/// `{"quantization.method": "int2"}` say the same.
///
/// Errors: `INVALID_CONFIG` when `config` is not an object (or is not JSON).
pub fn api_layer(config_json: &str) -> Result<Layer> {
    let text = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("config is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(Error::invalid_config(
            "config must be an object of configuration keys (SPEC §2)",
        ));
    };
    Ok(Layer::from_table(&to_table("", &o)?, Source::Api))
}

/// Merges the page's layer under the profile of `browser` (a name or a user agent; an explicit
/// `runtime.profile` wins) and validates it against `caps`.
///
/// Errors: `INVALID_CONFIG` for a config that is not an object.
pub fn resolve(config_json: &str, browser: &str, caps: &Capabilities) -> Result<Resolution> {
    let layer = api_layer(config_json)?;
    let (profile, reason) = profile_for_browser(browser);
    resolve_layers(
        &Layer::new(Source::CommandDefault),
        &[&layer],
        profile,
        &reason,
        caps,
    )
}

/// [`resolve`] without device limits (none is open yet), and the plan of the result.
///
/// Errors: `INVALID_CONFIG` for a config that is not an object or does not validate.
pub fn plan_unconstrained(config_json: &str, browser: &str) -> Result<(Resolution, WebPlan)> {
    let r = resolve(config_json, browser, &Capabilities::unconstrained())?;
    let plan = WebPlan::from_resolution(&r)?;
    Ok((r, plan))
}

/// A configuration as a JSON object of sections (`{"quantization": {"method": "int4", …}, …}`).
pub fn config_json(c: &Config) -> Value {
    let mut root = Map::new();
    for (path, setting) in c.settings() {
        let value = serde_json::to_value(&setting.value).unwrap_or(Value::Null);
        match path.split_once('.') {
            Some((section, rest)) => {
                let entry = root
                    .entry(section.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(rest.to_owned(), value);
                }
            }
            None => {
                root.insert(path.to_owned(), value);
            }
        }
    }
    Value::Object(root)
}

/// What `validateConfiguration` answers: status, errors, warnings, corrections (key, old, new,
/// reason) and the corrected configuration, plus the profile and why.
pub fn validation_json(r: &Resolution) -> Value {
    let v: &Validation = &r.validation;
    json!({
        "status": v.status(),
        "valid": v.errors.is_empty(),
        "errors": v.errors,
        "warnings": v.warnings,
        "corrections": v.corrections,
        "corrected": config_json(&v.corrected),
        "profile": r.profile.name(),
        "profileReason": r.profile_reason,
    })
}

/// What a page's engine runs: weights, backend switches, profile, cache length.
#[derive(Clone, Debug)]
pub struct WebPlan {
    /// Weight precision per role.
    pub weights: QuantPlan,
    /// `auto`, `webgpu` or `cpu`.
    pub backend: String,
    /// May fall back from WebGPU to the CPU (`runtime.fallback`).
    pub fallback: bool,
    /// Backend options (profile applied unless `native`).
    pub options: BackendOptions,
    /// Tokens one generation's cache holds (`kv_cache.max_seq_len`, before the model's
    /// context caps it).
    pub max_seq_len: usize,
    /// Generation defaults (`generation.*`).
    pub max_tokens: usize,
    /// `generation.temperature`.
    pub temperature: f32,
    /// `generation.top_p`.
    pub top_p: f32,
    /// `generation.top_k`.
    pub top_k: usize,
}

impl WebPlan {
    /// The plan of a resolution whose validation passed (corrections applied).
    ///
    /// Errors: `INVALID_CONFIG` listing every validation error.
    pub fn from_resolution(r: &Resolution) -> Result<Self> {
        let c = r.validation.clone().into_result()?;
        let tuning: BackendTuning = tuning_from_config(&c)?;
        let profile = (r.profile.name() != "native")
            .then(|| find_profile(r.profile.name()))
            .transpose()?;
        Ok(WebPlan {
            weights: weights_from_config(&c)?,
            backend: c.str("runtime.backend"),
            fallback: c.bool("runtime.fallback"),
            options: BackendOptions {
                // One thread: wasm threads need a std built with atomics (nightly
                // `-Zbuild-std`), which this stable toolchain cannot make.
                threads: 1,
                profiling: false,
                profile,
                tuning,
            },
            max_seq_len: c.int("kv_cache.max_seq_len").max(2) as usize,
            max_tokens: c.int("generation.max_tokens").max(1) as usize,
            temperature: c.float("generation.temperature") as f32,
            top_p: c.float("generation.top_p") as f32,
            top_k: c.int("generation.top_k").max(0) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 \
                          (KHTML, like Gecko) Version/18.1 Safari/605.1.15";

    #[test]
    fn two_bit_under_safari_is_corrected_with_a_reason() {
        let r = resolve(
            r#"{"quantization": {"method": "int2"}}"#,
            SAFARI,
            &Capabilities::unconstrained(),
        )
        .unwrap();
        let v = validation_json(&r);
        assert_eq!(v["profile"], "safari");
        assert_eq!(v["status"], "corrected");
        let c = v["corrections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == "quantization.method")
            .expect("a correction of quantization.method");
        assert_eq!(c["old"], "\"int2\"");
        assert_eq!(c["new"], "\"int4\"");
        assert!(c["reason"].as_str().unwrap().contains("safari"));
        assert_eq!(v["corrected"]["quantization"]["method"], "int4");
        let plan = WebPlan::from_resolution(&r).unwrap();
        assert_eq!(plan.weights.feedforward.bits(), 4);
    }

    #[test]
    fn dotted_and_nested_keys_are_the_same() {
        let caps = Capabilities::unconstrained();
        let a = resolve(r#"{"runtime.backend": "cpu"}"#, "chrome", &caps).unwrap();
        let b = resolve(r#"{"runtime": {"backend": "cpu"}}"#, "chrome", &caps).unwrap();
        assert_eq!(a.merged.str("runtime.backend"), "cpu");
        assert_eq!(b.merged.str("runtime.backend"), "cpu");
        assert_eq!(a.profile.name(), "chrome");
    }

    #[test]
    fn bad_values_are_invalid_config_errors() {
        let caps = Capabilities::unconstrained();
        let r = resolve(r#"{"runtime": {"threads": "many"}}"#, "chrome", &caps).unwrap();
        assert!(!r.validation.errors.is_empty());
        let e = WebPlan::from_resolution(&r).unwrap_err();
        assert_eq!(e.code, lowbit_core::ErrorCode::InvalidConfig);
        for bad in ["[1, 2]", "not json", "3"] {
            let e = resolve(bad, "chrome", &caps).err().expect(bad);
            assert_eq!(e.code, lowbit_core::ErrorCode::InvalidConfig, "{bad}");
        }
    }
}
