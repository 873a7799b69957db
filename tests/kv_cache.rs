//! The quantized KV cache on a real model (SmolLM2, fp32 weights, CPU backend): perplexity on
//! Brown with keys and values kept at 8, 4 and 2 bits against the f32 cache, and generation
//! through it. Bounds are quality floors measured on this text (see
//! bench/results/2026-12-05-2core-x86/kv-cache-first), not timings.

mod common;

use lowbit::core::adapter::TextModel;
use lowbit::core::kv::KvFormat;
use lowbit::perplexity::perplexity_kv;

fn kv(bits: u8, group: usize, window: usize) -> KvFormat {
    lowbit::plan::KvCachePolicy {
        bits,
        group_size: group,
        recent_window: window,
        sink_tokens: 0,
        key_channels: true,
        rotate: true,
        sliding_window: 0,
        max_seq_len: 512,
    }
    .format()
    .unwrap()
}

#[test]
fn quantized_kv_keeps_perplexity_close_to_f32() {
    let (model, _) = common::smollm2_plan("cpu", "fp32")
        .load(&mut |_, _, _| {})
        .expect("load SmolLM2");
    let model: &dyn TextModel = model.as_ref();
    let text = std::fs::read_to_string(common::brown()).unwrap();
    let ppl = |f: KvFormat| {
        perplexity_kv(model, &text, 256, 2, f, &mut |_, _, _| {})
            .unwrap()
            .perplexity
    };
    let base = ppl(KvFormat::F32);
    let (q8, q4, q2) = (ppl(kv(8, 64, 0)), ppl(kv(4, 32, 64)), ppl(kv(2, 32, 64)));
    eprintln!("f32 {base:.4}, kv8 {q8:.4}, kv4-w64 {q4:.4}, kv2-w64 {q2:.4}");
    assert!((q8 / base - 1.0).abs() < 0.005, "8-bit: {q8} vs {base}");
    assert!(q4 / base - 1.0 < 0.02, "4-bit: {q4} vs {base}");
    assert!(q2 / base - 1.0 < 0.15, "2-bit: {q2} vs {base}");
    // Narrower is not better than wider by more than noise, and 2 bits do cost something.
    assert!(
        q2 > q4 * 0.99 && q2 > base,
        "2-bit {q2}, 4-bit {q4}, f32 {base}"
    );
}
