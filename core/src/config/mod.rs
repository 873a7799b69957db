//! Configuration: the TOML schema of SPEC.md §2 ([`schema`]), layered with a fixed precedence,
//!
//! **CLI flag > environment variable > config file > profile > command default > built-in
//! default**,
//!
//! where every effective value remembers its [`Source`]; then checked and auto-corrected by
//! [`validate()`](validate::validate) against the device's [`Capabilities`] and the chosen
//! profile.
//!
//! Values are kept as raw `toml::Value`s until validation, so a value of the wrong type is
//! reported with its key path instead of failing a deserializer.

pub mod resolve;
pub mod schema;
mod typed;
pub mod validate;

/// The TOML crate the config types are built on (its `Value` appears in their API).
pub use resolve::{resolve_layers, Resolution};
pub use schema::{KeySpec, Kind, KEYS};
pub use toml;
pub use typed::{tuning_from_config, weights_from_config};
pub use validate::{
    validate, BackendAvailability, Capabilities, Correction, GpuCapabilities, Issue, ModelFacts,
    Validation, ValidationStatus,
};

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where an effective value came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Source {
    /// The schema's default.
    Default,
    /// The running command's default (e.g. `lowbit generate` quantizes to int4).
    CommandDefault,
    /// A profile's `[config]` table.
    Profile(String),
    /// A config file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Cli(String),
    /// A library caller's settings (JavaScript's `config` object).
    Api,
    /// Set by the validator's auto-correction.
    Corrected,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::CommandDefault => f.write_str("command default"),
            Source::Profile(p) => write!(f, "profile {p}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Cli(flag) => write!(f, "flag {flag}"),
            Source::Api => f.write_str("api"),
            Source::Corrected => f.write_str("auto-corrected"),
        }
    }
}

/// One effective value and its origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The value (not yet type-checked before validation).
    pub value: toml::Value,
    /// Where it came from.
    pub source: Source,
}

/// A key that is not in the schema, kept so the validator can report it.
#[derive(Clone, Debug, PartialEq)]
pub struct UnknownKey {
    /// Dotted path as written.
    pub path: String,
    /// The value it was given.
    pub value: toml::Value,
    /// Where it was written.
    pub source: Source,
}

/// Values from one origin, as `(dotted path, value)` pairs.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The origin of every value (for env and CLI layers, per value: see [`Layer::sources`]).
    pub source: Source,
    /// Values by dotted path.
    pub values: Vec<(String, toml::Value)>,
    /// Per-value sources where they differ from `source` (env variable and flag names).
    pub sources: Vec<Source>,
}

impl Layer {
    /// An empty layer of `source`.
    pub fn new(source: Source) -> Self {
        Layer {
            source,
            values: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Adds `path = value` from `source`.
    pub fn push(&mut self, path: impl Into<String>, value: toml::Value, source: Source) {
        self.values.push((path.into(), value));
        self.sources.push(source);
    }

    /// The values of a TOML document, flattened to dotted paths. Tables whose path is a known
    /// section are descended into; anything else is one value (so a table given where a value
    /// belongs is a type error, not a set of unknown keys).
    pub fn from_table(table: &toml::Table, source: Source) -> Self {
        let mut layer = Layer::new(source.clone());
        flatten("", table, &mut |p, v| {
            layer.push(p, v.clone(), source.clone())
        });
        layer
    }

    /// Reads and parses a config file. A syntax error is `INVALID_CONFIG` with the line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let table = parse_toml(&text)
            .map_err(|e| Error::invalid_config(format!("{}: {}", path.display(), e.message)))?;
        Ok(Layer::from_table(&table, Source::File(path.to_path_buf())))
    }

    /// The environment variables `LOWBIT_<SECTION>_<KEY>` among `vars`, each parsed per its
    /// key's type (a value that does not parse is kept as a string, for the validator to report).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut layer = Layer::new(Source::Env(String::new()));
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for k in KEYS {
            let name = k.env_var();
            if let Some(text) = vars.get(&name) {
                layer.push(k.path, parse_env_value(k.kind, text), Source::Env(name));
            }
        }
        layer
    }

    /// Environment variables that look like config overrides (`LOWBIT_<SECTION>_...`) but name
    /// no key, each with the nearest valid variable.
    pub fn unknown_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, Option<String>)> {
        let known: Vec<String> = KEYS.iter().map(|k| k.env_var()).collect();
        let prefixes: Vec<String> = schema::sections()
            .iter()
            .filter(|s| !s.contains('.'))
            .map(|s| format!("LOWBIT_{}_", s.to_ascii_uppercase()))
            .collect();
        vars.into_iter()
            .map(|(k, _)| k)
            .filter(|k| prefixes.iter().any(|p| k.starts_with(p)) && !known.contains(k))
            .map(|k| {
                let s = schema::nearest(&k, known.iter().map(String::as_str)).map(str::to_owned);
                (k, s)
            })
            .collect()
    }
}

fn flatten(prefix: &str, table: &toml::Table, f: &mut dyn FnMut(&str, &toml::Value)) {
    let sections = schema::sections();
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if sections.contains(&path.as_str()) => flatten(&path, t, f),
            _ => f(&path, v),
        }
    }
}

fn parse_env_value(kind: Kind, text: &str) -> toml::Value {
    let t = text.trim();
    let parsed = match kind {
        Kind::Bool => match t.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(toml::Value::Boolean(true)),
            "0" | "false" | "no" | "off" => Some(toml::Value::Boolean(false)),
            _ => None,
        },
        Kind::Int { .. } | Kind::IntOneOf(_) => t.parse::<i64>().ok().map(toml::Value::Integer),
        Kind::Float { .. } => t.parse::<f64>().ok().map(toml::Value::Float),
        Kind::Triple => {
            let inner = t.trim_start_matches('[').trim_end_matches(']');
            let parts: Option<Vec<toml::Value>> = inner
                .split(',')
                .map(|p| p.trim().parse::<i64>().ok().map(toml::Value::Integer))
                .collect();
            parts.map(toml::Value::Array)
        }
        Kind::TextList => Some(toml::Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        )),
        Kind::Choice(_) | Kind::Text => None,
    };
    parsed.unwrap_or_else(|| toml::Value::String(text.into()))
}

/// A TOML syntax error.
#[derive(Clone, Debug)]
pub struct SyntaxError {
    /// Message with line and column.
    pub message: String,
}

/// Parses a TOML document into a table.
pub fn parse_toml(text: &str) -> std::result::Result<toml::Table, SyntaxError> {
    text.parse::<toml::Table>().map_err(|e| SyntaxError {
        message: format!("TOML syntax error: {}", e.to_string().trim()),
    })
}

/// The effective configuration: a value and its source for every schema key, plus the unknown
/// keys found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    values: BTreeMap<&'static str, Setting>,
    /// Keys not in the schema (reported by the validator).
    pub unknown: Vec<UnknownKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            values: KEYS
                .iter()
                .map(|k| {
                    (
                        k.path,
                        Setting {
                            value: k.default_value(),
                            source: Source::Default,
                        },
                    )
                })
                .collect(),
            unknown: Vec::new(),
        }
    }
}

impl Config {
    /// Merges layers given lowest precedence first (defaults are below them all).
    pub fn from_layers<'a>(layers: impl IntoIterator<Item = &'a Layer>) -> Self {
        let mut c = Config::default();
        for l in layers {
            c.apply(l);
        }
        c
    }

    /// Applies one layer over the current values.
    pub fn apply(&mut self, layer: &Layer) {
        for (i, (path, value)) in layer.values.iter().enumerate() {
            let source = layer
                .sources
                .get(i)
                .cloned()
                .unwrap_or(layer.source.clone());
            match schema::key(path) {
                Some(k) => {
                    self.values.insert(
                        k.path,
                        Setting {
                            value: value.clone(),
                            source,
                        },
                    );
                }
                None => {
                    self.unknown.retain(|u| &u.path != path);
                    self.unknown.push(UnknownKey {
                        path: path.clone(),
                        value: value.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// The setting of a schema key.
    pub fn setting(&self, path: &str) -> Option<&Setting> {
        self.values.get(path)
    }

    /// Every schema key with its setting, in schema order.
    pub fn settings(&self) -> impl Iterator<Item = (&'static str, &Setting)> {
        KEYS.iter()
            .filter_map(|k| self.values.get(k.path).map(|s| (k.path, s)))
    }

    /// Sets a schema key (unknown paths are ignored: callers pass schema paths).
    pub fn set(&mut self, path: &str, value: toml::Value, source: Source) {
        if let Some(k) = schema::key(path) {
            self.values.insert(k.path, Setting { value, source });
        }
    }

    /// The value of `path`, or the schema default when unset.
    pub fn value(&self, path: &str) -> toml::Value {
        self.values
            .get(path)
            .map(|s| s.value.clone())
            .or_else(|| schema::key(path).map(KeySpec::default_value))
            .unwrap_or(toml::Value::Boolean(false))
    }

    /// A string value (after validation every `Choice`/`Text` key holds one).
    pub fn str(&self, path: &str) -> String {
        match self.value(path) {
            toml::Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// An integer value (0 when the value is not an integer; validated configs always are).
    pub fn int(&self, path: &str) -> i64 {
        match self.value(path) {
            toml::Value::Integer(i) => i,
            toml::Value::Float(f) => f as i64,
            _ => 0,
        }
    }

    /// A number.
    pub fn float(&self, path: &str) -> f64 {
        match self.value(path) {
            toml::Value::Integer(i) => i as f64,
            toml::Value::Float(f) => f,
            _ => 0.0,
        }
    }

    /// A boolean.
    pub fn bool(&self, path: &str) -> bool {
        matches!(self.value(path), toml::Value::Boolean(true))
    }

    /// A list of strings.
    pub fn strings(&self, path: &str) -> Vec<String> {
        match self.value(path) {
            toml::Value::Array(a) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A `[x, y, z]` triple.
    pub fn triple(&self, path: &str) -> [u32; 3] {
        let mut out = [1u32; 3];
        if let toml::Value::Array(a) = self.value(path) {
            for (o, v) in out.iter_mut().zip(a) {
                *o = v
                    .as_integer()
                    .map_or(1, |i| i.clamp(0, u32::MAX as i64) as u32);
            }
        }
        out
    }

    /// The settings whose source satisfies `keep`, as a nested TOML document in schema order.
    pub fn to_toml_where(&self, keep: impl Fn(&Source) -> bool) -> String {
        let mut root = toml::Table::new();
        for (path, s) in self.settings() {
            if !keep(&s.source) {
                continue;
            }
            let mut parts: Vec<&str> = path.split('.').collect();
            let last = parts.pop().unwrap_or(path);
            let mut t = &mut root;
            for p in parts {
                let entry = t
                    .entry(p.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !entry.is_table() {
                    *entry = toml::Value::Table(toml::Table::new());
                }
                match entry {
                    toml::Value::Table(inner) => t = inner,
                    _ => unreachable!("just made a table"),
                }
            }
            t.insert(last.to_string(), s.value.clone());
        }
        toml::to_string(&root).unwrap_or_default()
    }

    /// The whole effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        self.to_toml_where(|_| true)
    }
}

#[cfg(test)]
mod tests;
