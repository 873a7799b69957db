//! The [`BrowserProfile`] trait: a named set of constraints and tuning for the WebGPU backend,
//! and [`ProfileData`], a profile read from a TOML file (`profiles/*.toml`).
//!
//! The built-in profiles are the TOML files of `profiles/`, embedded with `include_str!` and
//! registered with `inventory`; plugins add more at run time (see [`crate::registry`]).

use crate::error::{Error, Result};

/// Workgroup sizes (invocations) and tiles of each kernel family. The WebGPU backend's tuning
/// takes them as upper bounds and fits them to the device (powers of two, device limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelWorkgroups {
    /// Matmul workgroup `(x, y)` as the profile states it; the matvec kernel runs `x·y` lanes.
    pub matmul: (u32, u32),
    /// Output rows per matvec workgroup.
    pub matvec_rows: u32,
    /// Token rows × output rows of a tiled (prefill) matmul workgroup, multiples of 16.
    pub tile: (u32, u32),
    /// Lanes of a norm workgroup.
    pub norm: u32,
    /// Lanes of elementwise, RoPE and embedding kernels.
    pub elementwise: u32,
    /// Lanes of the attention kernels.
    pub attention: u32,
    /// Workgroup of audio kernels (`[x, y, z]`).
    pub audio: [u32; 3],
}

impl Default for KernelWorkgroups {
    fn default() -> Self {
        KernelWorkgroups {
            matmul: (8, 8),
            matvec_rows: 4,
            tile: (32, 64),
            norm: 256,
            elementwise: 256,
            attention: 64,
            audio: [256, 1, 1],
        }
    }
}

/// Constraints and tuning of one target (a browser, a device class, or native).
pub trait BrowserProfile: Send + Sync {
    /// Name: `chrome`, `edge`, `firefox`, `safari`, `mobile`, `native`, or a plugin's.
    fn name(&self) -> &str;
    /// One line saying what the profile is for.
    fn description(&self) -> &str {
        ""
    }
    /// Workgroup size of the matmul kernels `(x, y)`.
    fn matmul_workgroup(&self) -> (u32, u32);
    /// Workgroup sizes of every kernel family.
    fn workgroups(&self) -> KernelWorkgroups {
        KernelWorkgroups {
            matmul: self.matmul_workgroup(),
            ..KernelWorkgroups::default()
        }
    }
    /// Weight bit widths this target can run.
    fn supported_bits(&self) -> &[u8];
    /// Whether f16 shader arithmetic may be used.
    fn allow_f16(&self) -> bool;
    /// Whether subgroup operations may be used.
    fn allow_subgroups(&self) -> bool;
    /// Whether cooperative matrices (tensor cores; a native-only wgpu feature that no browser's
    /// WebGPU has yet) may be used. Off unless the profile says so, so a browser profile run
    /// natively measures what the browser could run.
    fn allow_cooperative_matrix(&self) -> bool {
        false
    }
    /// Largest storage-buffer binding, bytes.
    fn max_storage_binding(&self) -> u64;
    /// Largest uniform-buffer binding, bytes.
    fn max_uniform_binding(&self) -> u64 {
        64 << 10
    }
    /// Most invocations in one workgroup.
    fn max_workgroup_invocations(&self) -> u32 {
        256
    }
    /// Loop unroll factor the kernels are tuned for (1 = none).
    fn unroll(&self) -> u32 {
        1
    }
    /// Config values this profile sets (between the built-in defaults and a config file), as
    /// `(dotted key, value)`.
    fn config_defaults(&self) -> Vec<(String, toml::Value)> {
        Vec::new()
    }
}

/// A profile read from TOML (the format of `profiles/*.toml`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileData {
    name: String,
    description: String,
    workgroups: KernelWorkgroups,
    supported_bits: Vec<u8>,
    f16: bool,
    subgroups: bool,
    cooperative_matrix: bool,
    max_storage_binding: u64,
    max_uniform_binding: u64,
    max_workgroup_invocations: u32,
    unroll: u32,
    config: Vec<(String, toml::Value)>,
}

fn field<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut cur = t;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let v = cur.get(p)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        cur = v.as_table()?;
    }
    None
}

impl ProfileData {
    /// Parses a profile. Every field is checked; a wrong type or missing required field is
    /// `INVALID_CONFIG` naming the field.
    pub fn from_toml(text: &str) -> Result<Self> {
        let t: toml::Table = text
            .parse()
            .map_err(|e| Error::invalid_config(format!("profile TOML: {e}")))?;
        let name_hint = t
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned();
        let err = |f: &str, want: &str| {
            Error::invalid_config(format!("profile `{name_hint}`: `{f}` must be {want}"))
        };
        let uint = |f: &str, default: u64| -> Result<u64> {
            match field(&t, f) {
                None => Ok(default),
                Some(v) => v
                    .as_integer()
                    .filter(|i| *i > 0)
                    .map(|i| i as u64)
                    .ok_or_else(|| err(f, "a positive integer")),
            }
        };
        let boolean = |f: &str, default: bool| -> Result<bool> {
            match field(&t, f) {
                None => Ok(default),
                Some(v) => v.as_bool().ok_or_else(|| err(f, "a boolean")),
            }
        };
        let ints = |f: &str, n: usize| -> Result<Option<Vec<u32>>> {
            match field(&t, f) {
                None => Ok(None),
                Some(v) => {
                    let a = v.as_array().ok_or_else(|| err(f, "an array of integers"))?;
                    let out: Option<Vec<u32>> = a
                        .iter()
                        .map(|x| x.as_integer().filter(|i| *i > 0).map(|i| i as u32))
                        .collect();
                    match out {
                        Some(o) if n == 0 || o.len() == n => Ok(Some(o)),
                        _ => Err(err(f, &format!("{n} positive integers"))),
                    }
                }
            }
        };
        let name = match field(&t, "name") {
            Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(err("name", "a non-empty string")),
        };
        let d = KernelWorkgroups::default();
        let matmul = ints("workgroups.matmul", 2)?.map_or(d.matmul, |v| (v[0], v[1]));
        let tile = ints("workgroups.tile", 2)?.map_or(d.tile, |v| (v[0], v[1]));
        if tile.0 % 16 != 0 || tile.1 % 16 != 0 {
            return Err(err("workgroups.tile", "two multiples of 16"));
        }
        let audio = ints("workgroups.audio", 3)?.map_or(d.audio, |v| [v[0], v[1], v[2]]);
        let workgroups = KernelWorkgroups {
            matmul,
            matvec_rows: uint("workgroups.matvec_rows", d.matvec_rows.into())? as u32,
            tile,
            norm: uint("workgroups.norm", d.norm.into())? as u32,
            elementwise: uint("workgroups.elementwise", d.elementwise.into())? as u32,
            attention: uint("workgroups.attention", d.attention.into())? as u32,
            audio,
        };
        let supported_bits = ints("bits.supported", 0)?
            .unwrap_or_else(|| vec![2, 3, 4, 8])
            .into_iter()
            .map(|b| b as u8)
            .collect::<Vec<_>>();
        if let Some(b) = supported_bits.iter().find(|b| !matches!(b, 2..=6 | 8)) {
            return Err(err(
                "bits.supported",
                &format!("a subset of 2, 3, 4, 5, 6, 8 (got {b})"),
            ));
        }
        let mut config = Vec::new();
        if let Some(v) = t.get("config") {
            let table = v.as_table().ok_or_else(|| err("config", "a table"))?;
            let layer = crate::config::Layer::from_table(
                table,
                crate::config::Source::Profile(name.clone()),
            );
            config = layer.values;
        }
        Ok(ProfileData {
            description: field(&t, "description")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            name,
            workgroups,
            supported_bits,
            f16: boolean("features.f16", true)?,
            subgroups: boolean("features.subgroups", true)?,
            cooperative_matrix: boolean("features.cooperative_matrix", false)?,
            max_storage_binding: uint("limits.max_storage_binding", 1 << 30)?,
            max_uniform_binding: uint("limits.max_uniform_binding", 64 << 10)?,
            max_workgroup_invocations: uint("limits.max_workgroup_invocations", 256)? as u32,
            unroll: uint("tuning.unroll", 1)? as u32,
            config,
        })
    }
}

impl BrowserProfile for ProfileData {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn matmul_workgroup(&self) -> (u32, u32) {
        self.workgroups.matmul
    }
    fn workgroups(&self) -> KernelWorkgroups {
        self.workgroups
    }
    fn supported_bits(&self) -> &[u8] {
        &self.supported_bits
    }
    fn allow_f16(&self) -> bool {
        self.f16
    }
    fn allow_subgroups(&self) -> bool {
        self.subgroups
    }
    fn allow_cooperative_matrix(&self) -> bool {
        self.cooperative_matrix
    }
    fn max_storage_binding(&self) -> u64 {
        self.max_storage_binding
    }
    fn max_uniform_binding(&self) -> u64 {
        self.max_uniform_binding
    }
    fn max_workgroup_invocations(&self) -> u32 {
        self.max_workgroup_invocations
    }
    fn unroll(&self) -> u32 {
        self.unroll
    }
    fn config_defaults(&self) -> Vec<(String, toml::Value)> {
        self.config.clone()
    }
}

/// A built-in profile: its name and TOML text, registered with `inventory`.
pub struct ProfileRegistration {
    /// Profile name (must equal the TOML's `name`).
    pub name: &'static str,
    /// The profile's TOML.
    pub toml: &'static str,
}
inventory::collect!(ProfileRegistration);

macro_rules! builtin_profile {
    ($name:literal) => {
        inventory::submit! {
            ProfileRegistration {
                name: $name,
                toml: include_str!(concat!("../../profiles/", $name, ".toml")),
            }
        }
    };
}
builtin_profile!("chrome");
builtin_profile!("edge");
builtin_profile!("firefox");
builtin_profile!("safari");
builtin_profile!("mobile");
builtin_profile!("native");

/// The built-in profile of a browser, named (`chrome`, `edge`, `firefox`, `safari`, `mobile`)
/// or given by its user-agent string, and why. Mobile devices come first (an iPhone's Safari is
/// `mobile`), then Edge (whose agent also says Chrome), Firefox, Chrome and Chromium, Safari;
/// anything else gets `chrome`, the most common engine, and says so.
pub fn profile_for_browser(browser: &str) -> (&'static str, String) {
    let named = browser.trim().to_ascii_lowercase();
    for name in ["chrome", "edge", "firefox", "safari", "mobile"] {
        if named == name {
            return (name, format!("browser \"{name}\""));
        }
    }
    let has = |s: &str| browser.contains(s);
    let (name, why) = if has("Android") || has("iPhone") || has("iPad") || has("Mobile") {
        ("mobile", "a mobile device")
    } else if has("Edg/") {
        ("edge", "Edge")
    } else if has("Firefox/") {
        ("firefox", "Firefox")
    } else if has("Chrome/") || has("Chromium/") {
        ("chrome", "Chrome or Chromium")
    } else if has("Safari/") {
        ("safari", "Safari")
    } else {
        return (
            "chrome",
            format!("unrecognised browser \"{browser}\": the chrome profile"),
        );
    };
    (name, format!("user agent says {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find_profile;

    #[test]
    fn every_builtin_profile_parses_and_keeps_its_name() {
        let mut n = 0;
        for r in inventory::iter::<ProfileRegistration> {
            let p = ProfileData::from_toml(r.toml).unwrap();
            assert_eq!(p.name(), r.name);
            n += 1;
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn safari_is_metal_restricted_and_mobile_small() {
        let find = |n: &str| {
            let r = inventory::iter::<ProfileRegistration>
                .into_iter()
                .find(|r| r.name == n)
                .unwrap();
            ProfileData::from_toml(r.toml).unwrap()
        };
        let s = find("safari");
        assert!(!s.allow_f16() && !s.allow_subgroups());
        assert_eq!(s.matmul_workgroup(), (4, 4));
        assert_eq!(s.max_uniform_binding(), 16 << 10);
        assert!(!s.supported_bits().contains(&2));
        assert_eq!(find("mobile").max_storage_binding(), 128 << 20);
        assert_eq!(find("chrome").matmul_workgroup(), (8, 8));
        // Tensor cores only natively: no browser's WebGPU has cooperative matrices.
        for b in ["chrome", "edge", "firefox", "safari", "mobile"] {
            assert!(!find(b).allow_cooperative_matrix(), "{b}");
        }
        assert!(find("native").allow_cooperative_matrix());
        assert_eq!(find("chrome").workgroups().matvec_rows, 4);
        assert_eq!(find("firefox").workgroups().audio, [256, 1, 1]);
    }

    #[test]
    fn bad_profiles_are_typed_errors() {
        for bad in [
            "description = 'x'",
            "name = 'x'\n[features]\nf16 = 'yes'",
            "name = 'x'\n[workgroups]\nmatmul = [8]",
            "name = 'x'\n[workgroups]\ntile = [20, 64]",
            "name = 'x'\n[bits]\nsupported = [7]",
            "name = [",
        ] {
            let e = ProfileData::from_toml(bad).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidConfig, "{bad}");
        }
    }

    #[test]
    fn browsers_map_to_their_profiles() {
        let cases = [
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36", "chrome"),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", "edge"),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", "firefox"),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15", "safari"),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", "mobile"),
            ("Safari", "safari"),
            ("something else", "chrome"),
        ];
        for (ua, want) in cases {
            assert_eq!(profile_for_browser(ua).0, want, "{ua}");
            assert!(find_profile(want).is_ok());
        }
    }
}
