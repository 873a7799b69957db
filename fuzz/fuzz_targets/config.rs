//! Config readers: the input is read as a config file (TOML, layered over a profile and
//! validated against several devices), as a profile file, and as `NAME=VALUE` environment
//! lines. Nothing may panic, and a corrected config must print as TOML that reads back to the
//! same values (`lowbit config` shows it for the user to save).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::config::{
    parse_toml, validate, BackendAvailability, Capabilities, Config, GpuCapabilities, Layer,
    ModelFacts, Source,
};
use lowbit_core::profile::ProfileData;
use lowbit_core::registry::find_profile;
use lowbit_core::BrowserProfile;

/// A machine with a small GPU and a model, so the device and model rules run too.
fn constrained() -> Capabilities {
    Capabilities {
        backends: vec![
            BackendAvailability {
                name: "webgpu".into(),
                available: true,
                detail: "fuzz".into(),
            },
            BackendAvailability {
                name: "cpu".into(),
                available: true,
                detail: "fuzz".into(),
            },
        ],
        gpu: Some(GpuCapabilities {
            name: "fuzz".into(),
            shader_f16: false,
            subgroups: true,
            max_workgroup_size: [256, 256, 64],
            max_invocations: 256,
            max_storage_binding: 128 << 20,
            software: false,
        }),
        model: Some(ModelFacts {
            n_params: 1_000_000_000,
            context_length: 2048,
            widths: vec![576, 1536],
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // A text that reads as a profile is also validated against (profiles come from plugins).
    let own_profile = ProfileData::from_toml(&text).ok();

    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect();
    let env = Layer::from_env(vars.clone());
    let _ = Layer::unknown_env(vars);

    let Ok(table) = parse_toml(&text) else { return };
    let file = Layer::from_table(&table, Source::File("fuzz.toml".into()));
    let builtin = find_profile(["chrome", "safari", "mobile", "native"][data.len() % 4])
        .expect("built-in profile");
    let profile: &dyn BrowserProfile = match &own_profile {
        Some(p) => p,
        None => builtin.as_ref(),
    };
    let mut profile_layer = Layer::new(Source::Profile(profile.name().to_owned()));
    for (k, v) in profile.config_defaults() {
        profile_layer.push(k, v, Source::Profile(profile.name().to_owned()));
    }
    let mut layers = vec![profile_layer];
    layers.push(file);
    layers.push(env);
    let config = Config::from_layers(&layers);
    for caps in [Capabilities::unconstrained(), constrained()] {
        let v = validate(&config, &caps, profile);
        let printed = v.corrected.to_toml();
        let reread = parse_toml(&printed).unwrap_or_else(|e| {
            panic!(
                "corrected config does not re-read: {}\n{printed}",
                e.message
            )
        });
        let again = Config::from_layers([&Layer::from_table(&reread, Source::Default)]);
        for (path, s) in v.corrected.settings() {
            let r = again.setting(path).expect("schema key");
            assert_eq!(r.value, s.value, "{path} changed through TOML:\n{printed}");
        }
        let _ = v.into_result();
    }
});
