//! The ported LLaMA adapter on the real SmolLM2-135M-Instruct file, CPU backend: greedy tokens
//! equal those of the binary before the op-set port, and the adapter's paths agree with each
//! other (prefill in chunks, all-rows logits, batched decoding, device-side greedy decoding).
//! The model is fetched by `scripts/fetch-models.sh`; a missing file fails the test.

use lowbit_core::adapter::LoadContext;
use lowbit_core::generate::argmax;
use lowbit_core::quant::WeightStore;
use lowbit_core::{
    block_on, Backend, ErrorCode, KvCache, Logits, ModelAdapter, ModelSource, QuantPlan, Scheme,
    TextModel,
};
use lowbit_cpu::CpuBackend;
use lowbit_models::LlamaAdapter;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// `The capital of France is` as SmolLM2's tokenizer encodes it (no BOS: the model's
/// `add_bos_token` is false).
const PROMPT: [u32; 5] = [504, 3575, 282, 4649, 314];

/// Greedy tokens of `lowbit generate --backend cpu -n 24 --prompt "The capital of France is"`
/// built from main before the port (2026-12-03), with `-q fp32` and with `-q int4` (groups of
/// 32, asymmetric).
const GREEDY_FP32: [u32; 24] = [
    7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33, 29, 34, 34, 216, 33,
    34, 42, 33,
];
const GREEDY_INT4: [u32; 24] = [
    7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 39, 29, 32, 34, 29, 34, 34, 198, 198,
    504, 2988, 314,
];

fn models_dir() -> PathBuf {
    std::env::var_os("LOWBIT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn load(method: &str, scheme: Scheme) -> Box<dyn TextModel> {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    let source = ModelSource::open(&path).expect("open the model");
    let plan = QuantPlan::for_method(method, 32, scheme).expect("plan");
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(0).expect("CPU backend"));
    LlamaAdapter
        .load(&source, &plan, backend, &mut |_, _, _| {})
        .expect("load")
        .into_text()
        .expect("a text model")
}

/// Prefill, then greedy decoding on the device (argmax in the op list), `n` tokens.
fn greedy(model: &dyn TextModel, n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(64).expect("cache");
    let logits = block_on(model.forward(&mut cache, &PROMPT, Logits::Last)).expect("prefill");
    let first = argmax(&logits);
    let mut out = vec![first];
    let mut push = |t| {
        out.push(t);
        true
    };
    block_on(model.decode_greedy(&mut cache, first, n - 1, &mut push)).expect("decode");
    assert_eq!(cache.pos, PROMPT.len() + n - 1);
    out
}

/// The fp32 model, loaded once for every test of this file.
fn fp32() -> &'static dyn TextModel {
    static MODEL: OnceLock<Box<dyn TextModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| load("fp32", Scheme::Symmetric))
        .as_ref()
}

#[test]
fn greedy_tokens_match_the_binary_before_the_port() {
    assert_eq!(greedy(fp32(), 24), GREEDY_FP32, "fp32");
    let int4 = load("int4", Scheme::Asymmetric);
    assert_eq!(greedy(int4.as_ref(), 24), GREEDY_INT4, "int4");
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn prefill(model: &dyn TextModel, tokens: &[u32]) -> (KvCache, Vec<f32>) {
    let mut cache = model.new_cache(32).expect("cache");
    let logits = block_on(model.forward(&mut cache, tokens, Logits::Last)).expect("forward");
    (cache, logits)
}

/// A reload through a weight store quantizes nothing and gives the same model.
#[test]
fn a_stored_load_skips_quantization() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let source = ModelSource::open(&path).expect("open the model");
    let plan = QuantPlan::for_method("int4", 32, Scheme::Asymmetric).expect("plan");
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(0).expect("CPU backend"));
    let mut first = LoadContext {
        store: WeightStore::recording(),
        ..Default::default()
    };
    let m = LlamaAdapter
        .load_with(
            &source,
            &plan,
            backend.clone(),
            &mut |_, _, _| {},
            &mut first,
        )
        .and_then(|m| m.into_text())
        .expect("load");
    assert!(first.store.changed());
    assert_eq!(first.store.hits, 0);
    let made = first.store.misses;
    assert!(made > 30 * 4, "every matrix made: {made}");
    // Every stacked upload names its parts.
    assert!(first
        .uploads
        .iter()
        .any(|(_, names)| names.len() == 3 && names[0] == "blk.0.attn_q.weight"));
    let tokens = greedy(m.as_ref(), 8);
    drop(m);
    let mut second = LoadContext {
        store: WeightStore::from_bytes(&first.store.to_bytes()).expect("read back"),
        ..Default::default()
    };
    second.store.record = true;
    let again = LlamaAdapter
        .load_with(&source, &plan, backend, &mut |_, _, _| {}, &mut second)
        .and_then(|m| m.into_text())
        .expect("stored load");
    assert_eq!((second.store.hits, second.store.misses), (made, 0));
    assert!(!second.store.changed());
    assert_eq!(greedy(again.as_ref(), 8), tokens);
    assert_eq!(&tokens[..], &GREEDY_INT4[..8]);
}

#[test]
fn forward_paths_agree() {
    let m = fp32();
    let vocab = m.config().vocab_size;
    let (_, last) = prefill(m, &PROMPT);
    assert_eq!(last.len(), vocab);

    // All rows: the last row is `Logits::Last`'s row.
    let mut cache = m.new_cache(32).expect("cache");
    let all = block_on(m.forward(&mut cache, &PROMPT, Logits::All)).expect("all rows");
    assert_eq!(all.len(), PROMPT.len() * vocab);
    let d = max_abs_diff(&all[(PROMPT.len() - 1) * vocab..], &last);
    println!("all rows vs last row: max |diff| {d:.2e}");
    assert!(d < 1e-3, "all-rows last row differs by {d}");

    // Prefill in two chunks, as the engine feeds long prompts.
    let mut cache = m.new_cache(32).expect("cache");
    block_on(m.forward(&mut cache, &PROMPT[..2], Logits::Last)).expect("chunk 1");
    let chunked = block_on(m.forward(&mut cache, &PROMPT[2..], Logits::Last)).expect("chunk 2");
    assert_eq!(cache.pos, PROMPT.len());
    let d = max_abs_diff(&chunked, &last);
    println!("chunked prefill vs one call: max |diff| {d:.2e}");
    assert!(d < 1e-3, "chunked prefill differs by {d}");

    // Batched decoding of two sequences at different positions equals decoding each alone.
    let other: [u32; 3] = [6403, 1980, 253];
    let next = [argmax(&last), 655];
    let (mut a, _) = prefill(m, &PROMPT);
    let (mut b, _) = prefill(m, &other);
    let batch = block_on(m.forward_batch(&mut [&mut a, &mut b], &next)).expect("batch");
    assert_eq!((a.pos, b.pos), (PROMPT.len() + 1, other.len() + 1));
    for (i, prompt) in [&PROMPT[..], &other[..]].into_iter().enumerate() {
        let (mut c, _) = prefill(m, prompt);
        let alone = block_on(m.forward(&mut c, &next[i..=i], Logits::Last)).expect("alone");
        let d = max_abs_diff(&batch[i], &alone);
        println!("sequence {i}: batched vs alone: max |diff| {d:.2e}");
        assert!(d < 1e-2, "sequence {i}: batched logits differ by {d}");
        assert_eq!(argmax(&batch[i]), argmax(&alone));
    }
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let m = fp32();
    let bad = m.config().vocab_size as u32;
    let mut cache = m.new_cache(8).expect("cache");
    fn code<T>(r: lowbit_core::Result<T>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }
    assert_eq!(
        code(block_on(m.forward(&mut cache, &[1, bad], Logits::Last))),
        Some(ErrorCode::InvalidConfig)
    );
    let mut other = m.new_cache(8).expect("cache");
    assert_eq!(
        code(block_on(
            m.forward_batch(&mut [&mut cache, &mut other], &[1, bad])
        )),
        Some(ErrorCode::InvalidConfig)
    );
    assert_eq!(
        code(block_on(m.decode_greedy(&mut cache, bad, 3, &mut |_| true))),
        Some(ErrorCode::InvalidConfig)
    );
    assert_eq!(cache.pos, 0, "a refused call feeds nothing");
}

#[test]
fn greedy_decoding_stops_where_asked_and_at_the_cache_end() {
    let m = fp32();
    // `on_token` refusing the third token: three tokens selected, two of them fed.
    let (mut cache, logits) = prefill(m, &PROMPT);
    let first = argmax(&logits);
    let mut got = Vec::new();
    let mut take_three = |t| {
        got.push(t);
        got.len() < 3
    };
    block_on(m.decode_greedy(&mut cache, first, 10, &mut take_three)).expect("decode");
    assert_eq!(got, GREEDY_FP32[1..4]);
    assert_eq!(cache.pos, PROMPT.len() + 3);
    // A cache with room for two more tokens: both are selected, then CONTEXT_OVERFLOW.
    let mut cache = m.new_cache(PROMPT.len() + 2).expect("cache");
    block_on(m.forward(&mut cache, &PROMPT, Logits::Last)).expect("prefill");
    let mut got = Vec::new();
    let mut all = |t| {
        got.push(t);
        true
    };
    let err = block_on(m.decode_greedy(&mut cache, first, 10, &mut all)).expect_err("overflow");
    assert_eq!(err.code, ErrorCode::ContextOverflow);
    assert_eq!(got, GREEDY_FP32[1..3]);
    assert_eq!(cache.pos, PROMPT.len() + 2);
}
