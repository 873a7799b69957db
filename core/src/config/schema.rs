//! Every configuration key of SPEC.md §2: its path, type, default and meaning. The validator,
//! the environment-variable names, `lowbit config show` and the documentation all read this one
//! table, so a key cannot exist in one place and be missing from another.

/// The type (and allowed values) of one key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// `true` / `false`.
    Bool,
    /// An integer in `min..=max`.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// An integer from a fixed set (bit widths).
    IntOneOf(&'static [i64]),
    /// A number in `min..=max` (integers are accepted).
    Float {
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// Any string (paths, host names).
    Text,
    /// Three positive integers `[x, y, z]`.
    Triple,
    /// A list of strings.
    TextList,
}

impl Kind {
    /// The type as a user reads it in messages.
    pub fn describe(&self) -> String {
        match self {
            Kind::Bool => "a boolean (true or false)".into(),
            Kind::Int { min, max } => format!("an integer in {min}..={max}"),
            Kind::IntOneOf(v) => format!(
                "one of {}",
                v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            ),
            Kind::Float { min, max } => format!("a number in {min}..={max}"),
            Kind::Choice(v) => format!("one of {}", v.join(", ")),
            Kind::Text => "a string".into(),
            Kind::Triple => "three positive integers [x, y, z]".into(),
            Kind::TextList => "a list of strings".into(),
        }
    }
}

/// One configuration key.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Dotted path, e.g. `quantization.group_size`.
    pub path: &'static str,
    /// Type and allowed values.
    pub kind: Kind,
    /// Default as a TOML literal.
    pub default: &'static str,
    /// What the key means.
    pub doc: &'static str,
}

impl KeySpec {
    /// The environment variable overriding this key: `LOWBIT_` + the path upper-cased with `.`
    /// replaced by `_` (`quantization.method` → `LOWBIT_QUANTIZATION_METHOD`).
    pub fn env_var(&self) -> String {
        format!(
            "LOWBIT_{}",
            self.path.replace('.', "_").to_ascii_uppercase()
        )
    }

    /// The default value.
    pub fn default_value(&self) -> toml::Value {
        parse_literal(self.default).unwrap_or_else(|| toml::Value::String(self.default.into()))
    }
}

/// Parses one TOML literal (`4`, `"int4"`, `[128, 1, 1]`).
pub fn parse_literal(text: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    table.get("v").cloned()
}

/// Weight precisions of `quantization.method` (the one table, in the adapter module).
pub use crate::adapter::METHODS;
/// Bit widths of per-role weights.
pub const WEIGHT_BITS: &[i64] = &[2, 3, 4, 5, 6, 8, 16, 32];
/// Widths a per-matrix role key (`quantization.layers.attn_q`, …) takes: 0 = unset.
pub const ROLE_BITS: &[i64] = &[0, 2, 3, 4, 5, 6, 8, 16, 32];
/// The per-matrix role keys under `quantization.layers` and the tensor-name suffix each sets.
pub const ROLE_KEYS: &[(&str, &str)] = &[
    ("quantization.layers.attn_q", "attn_q.weight"),
    ("quantization.layers.attn_k", "attn_k.weight"),
    ("quantization.layers.attn_v", "attn_v.weight"),
    ("quantization.layers.attn_output", "attn_output.weight"),
    ("quantization.layers.ffn_gate", "ffn_gate.weight"),
    ("quantization.layers.ffn_up", "ffn_up.weight"),
    ("quantization.layers.ffn_down", "ffn_down.weight"),
];
/// Bit widths of the KV cache.
pub const KV_BITS: &[i64] = &[2, 3, 4, 8, 16];
/// Backend names of `runtime.backend`.
pub const BACKENDS: &[&str] = &["auto", "webgpu", "cpu"];

macro_rules! key {
    ($path:literal, $kind:expr, $default:literal, $doc:literal) => {
        KeySpec {
            path: $path,
            kind: $kind,
            default: $default,
            doc: $doc,
        }
    };
}

/// Every key, in file order.
pub const KEYS: &[KeySpec] = &[
    key!("plugins", Kind::TextList, "[]", "paths of plugin libraries to load"),
    key!("model.path", Kind::Text, "\"\"", "model file; empty = models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    key!("runtime.backend", Kind::Choice(BACKENDS), "\"auto\"", "auto | webgpu | cpu"),
    key!("runtime.profile", Kind::Text, "\"auto\"", "auto | chrome | edge | firefox | safari | mobile | native | a plugin's profile"),
    key!("runtime.fallback", Kind::Bool, "true", "may fall back to the next backend (webgpu → cpu) when one is unavailable"),
    key!("runtime.f16", Kind::Choice(&["auto", "on", "off"]), "\"auto\"", "f16 shader arithmetic: auto uses it where the device and profile allow"),
    key!("runtime.subgroups", Kind::Choice(&["auto", "on", "off"]), "\"auto\"", "subgroup reductions: auto uses them where the device and profile allow"),
    key!("runtime.threads", Kind::Int { min: 0, max: 1024 }, "0", "CPU worker threads; 0 = all cores"),
    key!("quantization.method", Kind::Choice(METHODS), "\"int4\"", "weight precision; mixed takes bits per role from [quantization.layers]"),
    key!("quantization.group_size", Kind::Int { min: 1, max: 4096 }, "32", "values per scale along the reduction dimension: a multiple of 32 (a row whose width it does not divide ends in a shorter group)"),
    key!("quantization.scheme", Kind::Choice(&["symmetric", "asymmetric"]), "\"asymmetric\"", "symmetric (scale) or asymmetric (scale and offset) groups"),
    key!("quantization.rotation", Kind::Bool, "false", "quantize every matrix in a randomized-Hadamard basis of its input (incoherence processing; the CPU and WebGPU backends rotate the activations on the fly)"),
    key!("quantization.grid", Kind::Choice(&["uniform", "learned"]), "\"uniform\"", "codes of 2-4 bits on the uniform grid, or on a grid of 2^bits int8 levels learned per tensor (importance-weighted Lloyd), decoded by table lookup"),
    key!("quantization.calibration.file", Kind::Text, "\"\"", "text to calibrate on (importance weights, error feedback); empty = no calibration"),
    key!("quantization.calibration.chunks", Kind::Int { min: 1, max: 100000 }, "32", "chunks of 512 tokens of the calibration text to run"),
    key!("quantization.calibration.error_feedback", Kind::Bool, "true", "with calibration: GPTQ-style error-feedback rounding (else importance weights only)"),
    key!("quantization.target_bits", Kind::Float { min: 0.0, max: 32.0 }, "0.0", "with calibration: give each weight unit its own width (2/3/4/5/6/8) so the whole model averages at most this many bits per weight, bits going where the measured error is highest; 0 = off"),
    key!("quantization.target_coarse_group", Kind::Int { min: 0, max: 4096 }, "0", "with target_bits: a second, coarser group size (a multiple of 32, e.g. 128) the allocator may give a unit at 2, 3 or 4 bits (one scale per that many values: at 128 instead of 32, 0.375 bits/weight less, which rotation makes cheap in error); 0 = every unit in group_size groups"),
    key!("quantization.calibration.sensitivity_tokens", Kind::Int { min: 16, max: 512 }, "256", "with target_bits: calibration tokens scored per sensitivity run (one run per weight unit and width)"),
    key!("quantization.overrides", Kind::Text, "\"\"", "per-tensor widths NAME=BITS, comma-separated; NAME a tensor name or its suffix (ffn_down.weight = every layer's)"),
    key!("quantization.layers.embedding", Kind::IntOneOf(WEIGHT_BITS), "8", "bits of the embedding table (method = mixed)"),
    key!("quantization.layers.attention", Kind::IntOneOf(WEIGHT_BITS), "4", "bits of the q/k/v/o matrices (method = mixed)"),
    key!("quantization.layers.feedforward", Kind::IntOneOf(WEIGHT_BITS), "4", "bits of the feed-forward matrices (method = mixed)"),
    key!("quantization.layers.lm_head", Kind::IntOneOf(WEIGHT_BITS), "8", "bits of the output projection (method = mixed)"),
    key!("quantization.layers.attn_q", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's query matrix (`attn_q`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.attn_q.weight=8)"),
    key!("quantization.layers.attn_k", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's key matrix (`attn_k`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.attn_k.weight=8)"),
    key!("quantization.layers.attn_v", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's value matrix (`attn_v`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.attn_v.weight=8)"),
    key!("quantization.layers.attn_output", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's attention output matrix (`attn_output`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.attn_output.weight=8)"),
    key!("quantization.layers.ffn_gate", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's feed-forward gate matrix (`ffn_gate`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.ffn_gate.weight=8)"),
    key!("quantization.layers.ffn_up", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's feed-forward up matrix (`ffn_up`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.ffn_up.weight=8)"),
    key!("quantization.layers.ffn_down", Kind::IntOneOf(ROLE_BITS), "0", "bits of every layer's feed-forward down matrix (`ffn_down`), any method; 0 = the attention/feed-forward width. Matrices stored stacked (q|k|v, gate|up) take the widest width asked of the stack; one layer's own width goes in quantization.overrides (blk.N.ffn_down.weight=8)"),
    key!("quantization.adaptive.enabled", Kind::Bool, "false", "fit the weights into memory_budget_mb: with a calibration file, the width allocator gives each weight unit its own width (as target_bits does); without one, the uniform width is lowered until it fits"),
    key!("quantization.adaptive.memory_budget_mb", Kind::Int { min: 1, max: 1 << 24 }, "3800", "memory budget of the weights, MB"),
    key!("quantization.adaptive.critical_layers_bits", Kind::IntOneOf(WEIGHT_BITS), "8", "bits kept for the embedding and output projection"),
    key!("kv_cache.enabled", Kind::Bool, "true", "keep keys and values of past tokens"),
    key!("kv_cache.bits", Kind::IntOneOf(KV_BITS), "16", "KV-cache precision: 16 | 8 | 4 | 3 | 2"),
    key!("kv_cache.group_size", Kind::Int { min: 1, max: 4096 }, "64", "values per scale of a quantized KV cache (multiple of 32)"),
    key!("kv_cache.max_seq_len", Kind::Int { min: 1, max: 1 << 24 }, "4096", "tokens the cache holds; at most the model's context"),
    key!("kv_cache.progressive_precision", Kind::Bool, "true", "recent tokens kept at higher precision"),
    key!("kv_cache.recent_window", Kind::Int { min: 0, max: 1 << 24 }, "128", "with bits < 16: the most recent tokens every query sees at full precision (a ring of twice as many f32 rows; prompts are written that many tokens at a time); 0 = none"),
    key!("kv_cache.key_grouping", Kind::Choice(&["token", "channel"]), "channel", "with bits < 16: keys quantized per channel (blocks of group_size tokens, KIVI; with recent_window >= group_size, else per token) or per token (blocks along the head)"),
    key!("kv_cache.rotate", Kind::Bool, "true", "with bits < 16: store each head rotated by a Hadamard transform (power-of-two head dimensions)"),
    key!("kv_cache.sink_tokens", Kind::Int { min: 0, max: 1 << 24 }, "4", "the first tokens (attention sinks) a sliding window keeps, and a quantized cache keeps at full precision"),
    key!("kv_cache.sliding_window", Kind::Int { min: 0, max: 1 << 24 }, "0", "attend to the sink tokens and the last N tokens only, kept in a ring: generation runs past max_seq_len in constant memory (CPU backend); 0 = off"),
    key!("kv_cache.pruning", Kind::Bool, "false", "drop low-attention tokens"),
    key!("generation.max_tokens", Kind::Int { min: 1, max: 1 << 24 }, "100", "tokens to generate"),
    key!("generation.temperature", Kind::Float { min: 0.0, max: 100.0 }, "0.7", "sampling temperature; 0 = greedy"),
    key!("generation.top_p", Kind::Float { min: 0.0, max: 1.0 }, "0.9", "nucleus sampling mass"),
    key!("generation.top_k", Kind::Int { min: 0, max: 1 << 20 }, "40", "sample from the k most likely tokens; 0 = all"),
    key!("performance.optimize_for_latency", Kind::Bool, "true", "favour time per token over throughput"),
    key!("performance.adaptive_batch_size", Kind::Bool, "true", "adapt the batch size to the load"),
    key!("performance.max_batch_size", Kind::Int { min: 1, max: 1024 }, "4", "largest batch"),
    key!("performance.prefetch_size", Kind::Int { min: 0, max: 64 }, "3", "draft tokens for speculative prediction"),
    key!("performance.workgroup_size", Kind::Triple, "[128, 1, 1]", "matmul workgroup (x, y, z); the profile's unless set, within device limits"),
    key!("backend.webgpu.allow_software_adapter", Kind::Bool, "false", "a software adapter (lavapipe) may run the WebGPU backend; auto never prefers one over the native CPU backend"),
    key!("backend.webgpu.wide_matvec", Kind::Bool, "true", "decode matvec reading several blocks per lane; false = the narrow kernel"),
    key!("backend.webgpu.fused_norm", Kind::Bool, "true", "decode RMSNorm fused into a narrow matvec; false = its own kernel writing f32 rows"),
    key!("backend.webgpu.int_prefill", Kind::Bool, "false", "prefill on quantized weights through the integer tiled kernel (8-bit activation blocks) where there are no cooperative matrices"),
    key!("backend.webgpu.cooperative_matrix", Kind::Choice(&["auto", "on", "off"]), "\"auto\"", "prefill on cooperative matrices (tensor cores): auto where the adapter has them; on = required"),
    key!("backend.webgpu.matvec_shape", Kind::Text, "\"\"", "force the decode matvec shape LANESxROWS[xUNROLL] (sweeps); empty = the tuning's"),
    key!("backend.webgpu.checked_shaders", Kind::Bool, "false", "naga's runtime bounds checks in every kernel, as browsers do"),
    key!("backend.webgpu.loop_bounding", Kind::Bool, "false", "with checked_shaders: naga's loop-bounding counters too, as Firefox's wgpu adds (Chrome's Tint does not)"),
    key!("backend.webgpu.dispatches_per_submit", Kind::Int { min: 0, max: 1 << 20 }, "0", "split a step into submissions of at most N dispatches; 0 = one submission"),
    key!("backend.cpu.kernels", Kind::Choice(&["auto", "scalar", "avx2", "simd128"]), "\"auto\"", "CPU kernels' instruction set: auto = the best this machine has; scalar = the portable ones (compare builds across machines)"),
    key!("backend.cpu.exact_activations", Kind::Bool, "false", "reference mode: f32 activations on quantized weights (slow; what the WebGPU perplexity test compares against)"),
    key!("server.host", Kind::Text, "\"127.0.0.1\"", "address the server listens on"),
    key!("server.port", Kind::Int { min: 0, max: 65535 }, "8765", "port the server listens on; 0 = any free one"),
    key!("server.max_connections", Kind::Int { min: 1, max: 1 << 20 }, "512", "connections open at once; more are answered 503 (lowered to fit the descriptor limit, ulimit -n)"),
    key!("server.header_read_timeout_s", Kind::Float { min: 0.001, max: 3600.0 }, "10.0", "seconds a request's header may take to arrive (slow-header and idle keep-alive connections are closed)"),
    key!("server.idle_timeout_s", Kind::Float { min: 0.001, max: 86400.0 }, "120.0", "seconds a request body may take (408 after), and a WebSocket without a generation may stay silent"),
    key!("server.max_frame_bytes", Kind::Int { min: 256, max: 1 << 28 }, "65536", "largest WebSocket message; a larger one gets an error frame and close code 1009"),
    key!("server.max_body_bytes", Kind::Int { min: 256, max: 1 << 30 }, "1048576", "largest HTTP request body; larger gets 413"),
    key!("server.max_concurrent_requests", Kind::Int { min: 1, max: 1 << 20 }, "64", "requests running or waiting at once; more get busy (429)"),
    key!("server.max_queued_requests", Kind::Int { min: 0, max: 1 << 20 }, "64", "of those, requests waiting for a place in the batch; more get busy (429)"),
    key!("server.drain_timeout_s", Kind::Float { min: 0.0, max: 86400.0 }, "30.0", "on SIGTERM or Ctrl-C, seconds the running requests may take to finish while new ones get 503 and /health/ready says 503"),
];

/// The key spec of `path`.
pub fn key(path: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.path == path)
}

/// Section names (`quantization`, `kv_cache`, ...), including nested ones.
pub fn sections() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vec::new();
    for k in KEYS {
        let mut end = 0;
        while let Some(i) = k.path[end..].find('.') {
            end += i;
            let s = &k.path[..end];
            if !v.contains(&s) {
                v.push(s);
            }
            end += 1;
        }
    }
    v
}

/// Levenshtein distance between two strings (characters).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate nearest to `word` by edit distance, if it is close enough to be a likely typo
/// (at most a third of the word's length, and at least 1 edit allowed).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The valid key nearest to an unknown `path`: compares the last segment within the same
/// section first (`quantization.group_sise` → `quantization.group_size`), then whole paths.
pub fn nearest_key(path: &str) -> Option<&'static str> {
    let (section, last) = path.rsplit_once('.').unwrap_or(("", path));
    let same_section = KEYS
        .iter()
        .filter(|k| k.path.rsplit_once('.').map_or("", |(s, _)| s) == section);
    let by_last = same_section
        .clone()
        .map(|k| k.path.rsplit_once('.').map_or(k.path, |(_, l)| l));
    if let Some(hit) = nearest(last, by_last) {
        return same_section
            .map(|k| k.path)
            .find(|p| p.rsplit_once('.').map_or(*p, |(_, l)| l) == hit);
    }
    nearest(path, KEYS.iter().map(|k| k.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_match_their_kind() {
        for k in KEYS {
            let v = k.default_value();
            let ok = matches!(
                (k.kind, &v),
                (Kind::Bool, toml::Value::Boolean(_))
                    | (
                        Kind::Int { .. } | Kind::IntOneOf(_),
                        toml::Value::Integer(_)
                    )
                    | (Kind::Float { .. }, toml::Value::Float(_))
                    | (Kind::Choice(_) | Kind::Text, toml::Value::String(_))
                    | (Kind::Triple | Kind::TextList, toml::Value::Array(_))
            );
            assert!(ok, "default of {} is {v:?}", k.path);
        }
    }

    #[test]
    fn env_names_and_suggestions() {
        assert_eq!(
            key("quantization.method").unwrap().env_var(),
            "LOWBIT_QUANTIZATION_METHOD"
        );
        assert_eq!(edit_distance("group_sise", "group_size"), 1);
        assert_eq!(
            nearest_key("quantization.group_sise"),
            Some("quantization.group_size")
        );
        assert_eq!(
            nearest_key("kv_cache.max_seqlen"),
            Some("kv_cache.max_seq_len")
        );
        assert_eq!(nearest_key("runtime.backnd"), Some("runtime.backend"));
        assert_eq!(nearest_key("quantization.zzzzzzzz"), None);
        assert!(sections().contains(&"quantization.adaptive"));
    }
}
