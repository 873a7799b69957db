use super::*;
use crate::registry::find_profile;

fn file(text: &str) -> Layer {
    Layer::from_table(&parse_toml(text).unwrap(), Source::File("test.toml".into()))
}

fn profile_layer(name: &str) -> Layer {
    let p = find_profile(name).unwrap();
    let mut l = Layer::new(Source::Profile(name.into()));
    for (k, v) in p.config_defaults() {
        l.push(k, v, Source::Profile(name.into()));
    }
    l
}

fn cli(path: &str, v: toml::Value) -> Layer {
    let mut l = Layer::new(Source::Cli(String::new()));
    l.push(path, v, Source::Cli(format!("--{path}")));
    l
}

fn env(pairs: &[(&str, &str)]) -> Layer {
    Layer::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn precedence_cli_over_env_over_file_over_profile_over_default() {
    let key = "kv_cache.max_seq_len";
    let prof = profile_layer("mobile"); // sets 2048
    let f = file("[kv_cache]\nmax_seq_len = 1024");
    let e = env(&[("LOWBIT_KV_CACHE_MAX_SEQ_LEN", "512")]);
    let c = cli(key, 256.into());

    let d = Config::from_layers([]);
    assert_eq!(
        (d.int(key), &d.setting(key).unwrap().source),
        (4096, &Source::Default)
    );
    let p = Config::from_layers([&prof]);
    assert_eq!(p.int(key), 2048);
    assert_eq!(
        p.setting(key).unwrap().source,
        Source::Profile("mobile".into())
    );
    let pf = Config::from_layers([&prof, &f]);
    assert_eq!(pf.int(key), 1024);
    assert_eq!(
        pf.setting(key).unwrap().source,
        Source::File("test.toml".into())
    );
    let pfe = Config::from_layers([&prof, &f, &e]);
    assert_eq!(pfe.int(key), 512);
    assert_eq!(
        pfe.setting(key).unwrap().source,
        Source::Env("LOWBIT_KV_CACHE_MAX_SEQ_LEN".into())
    );
    let all = Config::from_layers([&prof, &f, &e, &c]);
    assert_eq!(all.int(key), 256);
    assert_eq!(
        all.setting(key).unwrap().source,
        Source::Cli(format!("--{key}"))
    );
    // Keys no layer sets keep their default and say so.
    assert_eq!(all.setting("server.port").unwrap().source, Source::Default);
}

#[test]
fn env_values_parse_per_type() {
    let e = env(&[
        ("LOWBIT_QUANTIZATION_METHOD", "int3"),
        ("LOWBIT_RUNTIME_BACKEND", "cpu"),
        ("LOWBIT_RUNTIME_FALLBACK", "0"),
        ("LOWBIT_PERFORMANCE_WORKGROUP_SIZE", "64,1,1"),
        ("LOWBIT_PLUGINS", "a.so, b.so"),
        ("LOWBIT_GENERATION_TOP_P", "0.5"),
        ("LOWBIT_LOG", "debug"),
    ]);
    let c = Config::from_layers([&e]);
    assert_eq!(c.str("quantization.method"), "int3");
    assert_eq!(c.str("runtime.backend"), "cpu");
    assert!(!c.bool("runtime.fallback"));
    assert_eq!(c.triple("performance.workgroup_size"), [64, 1, 1]);
    assert_eq!(c.strings("plugins"), vec!["a.so", "b.so"]);
    assert_eq!(c.float("generation.top_p"), 0.5);
    let unknown = Layer::unknown_env([
        (
            "LOWBIT_QUANTIZATION_GROUPSIZE".to_string(),
            "64".to_string(),
        ),
        ("LOWBIT_LOG".to_string(), "x".to_string()),
    ]);
    assert_eq!(
        unknown,
        vec![(
            "LOWBIT_QUANTIZATION_GROUPSIZE".to_string(),
            Some("LOWBIT_QUANTIZATION_GROUP_SIZE".to_string())
        )]
    );
}

fn check(text: &str, profile: &str, caps: &Capabilities) -> Validation {
    let c = Config::from_layers([&file(text)]);
    validate(&c, caps, find_profile(profile).unwrap().as_ref())
}

fn corrected_to(v: &Validation, key: &str) -> Option<String> {
    v.corrections
        .iter()
        .find(|c| c.key == key)
        .map(|c| c.new.clone())
}

fn model_caps() -> Capabilities {
    Capabilities {
        backends: vec![
            BackendAvailability {
                name: "webgpu".into(),
                available: false,
                detail: "no adapter".into(),
            },
            BackendAvailability {
                name: "cpu".into(),
                available: true,
                detail: "avx2".into(),
            },
        ],
        gpu: Some(GpuCapabilities {
            name: "test".into(),
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

#[test]
fn a_default_config_is_valid() {
    let v = check("", "chrome", &Capabilities::unconstrained());
    assert_eq!(v.status(), ValidationStatus::Valid, "{:?}", v.corrections);
}

#[test]
fn safari_runs_no_2_bit() {
    let v = check(
        "[quantization]\nmethod = \"int2\"",
        "safari",
        &Capabilities::unconstrained(),
    );
    assert_eq!(
        corrected_to(&v, "quantization.method").as_deref(),
        Some("\"int4\"")
    );
    assert_eq!(v.status(), ValidationStatus::Corrected);
    let v = check(
        "[quantization]\nmethod = \"int2\"",
        "chrome",
        &Capabilities::unconstrained(),
    );
    assert_eq!(v.status(), ValidationStatus::Valid);
}

#[test]
fn workgroup_beyond_limits_becomes_the_profiles() {
    let v = check(
        "[performance]\nworkgroup_size = [512, 4, 1]",
        "safari",
        &model_caps(),
    );
    assert_eq!(
        corrected_to(&v, "performance.workgroup_size").as_deref(),
        Some("[16, 1, 1]")
    );
}

#[test]
fn group_sizes_snap_to_multiples_of_32_and_uneven_ones_warn() {
    // Not a multiple of 32: the nearest one. 100 → 96; 50 → 64; 16 → 32.
    for (given, want) in [(100, 96), (50, 64), (16, 32)] {
        let v = check(
            &format!("[quantization]\ngroup_size = {given}"),
            "chrome",
            &model_caps(),
        );
        assert_eq!(
            corrected_to(&v, "quantization.group_size"),
            Some(want.to_string()),
            "{given}"
        );
    }
    // 128 and 160 do not divide 576: kept, with a warning about the short last group.
    for given in [128, 160] {
        let v = check(
            &format!("[quantization]\ngroup_size = {given}"),
            "chrome",
            &model_caps(),
        );
        assert_eq!(corrected_to(&v, "quantization.group_size"), None, "{given}");
        assert!(
            v.warnings
                .iter()
                .any(|w| w.key == "quantization.group_size" && w.message.contains("shorter")),
            "{given}: {:?}",
            v.warnings
        );
    }
}

#[test]
fn kv_windows_clamp_to_the_context() {
    let v = check(
        "[kv_cache]\nmax_seq_len = 8192\nsliding_window = 4096",
        "chrome",
        &model_caps(),
    );
    assert_eq!(
        corrected_to(&v, "kv_cache.max_seq_len").as_deref(),
        Some("2048")
    );
    assert_eq!(
        corrected_to(&v, "kv_cache.sliding_window").as_deref(),
        Some("2048")
    );
}

#[test]
fn f16_without_the_feature_and_backend_fallback() {
    let v = check(
        "[runtime]\nf16 = \"on\"\nbackend = \"webgpu\"",
        "chrome",
        &model_caps(),
    );
    assert_eq!(corrected_to(&v, "runtime.f16").as_deref(), Some("\"off\""));
    assert_eq!(
        corrected_to(&v, "runtime.backend").as_deref(),
        Some("\"cpu\"")
    );
    let v = check(
        "[runtime]\nbackend = \"webgpu\"\nfallback = false",
        "chrome",
        &model_caps(),
    );
    assert_eq!(v.status(), ValidationStatus::Invalid);
    assert!(v
        .into_result()
        .unwrap_err()
        .message
        .contains("fallback = false"));
}

#[test]
fn adaptive_budget_lowers_the_bits() {
    // 1e9 parameters: int8 ≈ 1031 MB, int4 ≈ 531 MB, int3 ≈ 406 MB (g128 f16 scales).
    let v = check(
        "[quantization]\nmethod = \"int8\"\ngroup_size = 64\n[quantization.adaptive]\nenabled = true\nmemory_budget_mb = 600",
        "chrome",
        &model_caps(),
    );
    assert_eq!(
        corrected_to(&v, "quantization.method").as_deref(),
        Some("\"int4\"")
    );
    let v = check(
        "[quantization]\nmethod = \"int8\"\n[quantization.adaptive]\nenabled = true\nmemory_budget_mb = 10",
        "chrome",
        &model_caps(),
    );
    assert_eq!(v.status(), ValidationStatus::Invalid);
}

#[test]
fn wrong_types_and_unknown_keys_are_precise_errors() {
    let v = check(
        "[quantization]\ngroup_size = \"big\"\ngroup_sise = 64\n[kv_cache]\nenabled = \"yes\"\n[generation]\ntemperature = [1]",
        "chrome",
        &Capabilities::unconstrained(),
    );
    let keys: Vec<&str> = v.errors.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"quantization.group_size"), "{keys:?}");
    assert!(keys.contains(&"kv_cache.enabled"));
    assert!(keys.contains(&"generation.temperature"));
    let typo = v
        .errors
        .iter()
        .find(|e| e.key == "quantization.group_sise")
        .unwrap();
    assert!(typo
        .message
        .contains("did you mean `quantization.group_size`?"));
    // The corrected config is well-typed: the broken keys are back at their defaults.
    assert_eq!(v.corrected.int("quantization.group_size"), 32);
}

#[test]
fn invalid_strings_become_the_suggestion_or_default() {
    let v = check(
        "[quantization]\nmethod = \"int44\"\nscheme = \"wobbly\"\n[runtime]\nprofile = \"safary\"",
        "chrome",
        &Capabilities::unconstrained(),
    );
    assert_eq!(
        corrected_to(&v, "quantization.method").as_deref(),
        Some("\"int4\"")
    );
    assert_eq!(
        corrected_to(&v, "quantization.scheme").as_deref(),
        Some("\"asymmetric\"")
    );
    assert_eq!(
        corrected_to(&v, "runtime.profile").as_deref(),
        Some("\"safari\"")
    );
}

#[test]
fn corrected_config_round_trips_through_toml() {
    let v = check(
        "[quantization]\nmethod = \"int2\"\ngroup_size = 100",
        "safari",
        &model_caps(),
    );
    let text = v
        .corrected
        .to_toml_where(|s| matches!(s, Source::File(_) | Source::Corrected));
    let again = check(&text, "safari", &model_caps());
    assert_eq!(
        again.status(),
        ValidationStatus::Valid,
        "{text}\n{:?}",
        again.corrections
    );
}
