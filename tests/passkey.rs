//! Passkey retrieval on SmolLM2 (fp32 weights, CPU backend) at a small size (~1,000 tokens,
//! six depths): a 3-bit KV cache (the defaults: groups of 64, keys per channel, a 128-token
//! full-precision window, 4 sinks, rotated heads) finds the key exactly where the f32 cache
//! does, and the f32 cache finds it at most depths. 2 bits with the same window are measured
//! and printed, not asserted: on 2026-12-06 (this machine's CPU) they found 2 of 6 where f32
//! found 5, short of the KV issue's target.

mod common;

use lowbit::core::adapter::TextModel;
use lowbit::core::kv::KvFormat;
use lowbit::passkey;

fn kv(bits: u8) -> KvFormat {
    lowbit::plan::KvCachePolicy {
        bits,
        group_size: 64,
        recent_window: 128,
        sink_tokens: 4,
        key_channels: true,
        rotate: true,
        sliding_window: 0,
        max_seq_len: 2048,
    }
    .format()
    .unwrap()
}

#[test]
fn three_bit_kv_with_a_window_finds_the_passkey_where_f32_does() {
    let (model, _) = common::smollm2_plan("cpu", "fp32")
        .load(&mut |_, _, _| {})
        .expect("load SmolLM2");
    let model: &dyn TextModel = model.as_ref();
    let repeats = passkey::repeats_for(model, 1000).unwrap();
    let depths = passkey::depths(6);
    let run = |f: KvFormat| {
        depths
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let t = passkey::trial(model, repeats, d, passkey::passkey(i as u64), f).unwrap();
                eprintln!(
                    "{} depth {d:.2} ({} tokens): {:?} found={}",
                    f.label(),
                    t.tokens,
                    t.answer,
                    t.found
                );
                assert!(t.tokens > 800 && t.tokens < 1200, "{} tokens", t.tokens);
                t.found
            })
            .collect::<Vec<bool>>()
    };
    let f32 = run(KvFormat::F32);
    assert!(
        f32.iter().filter(|&&f| f).count() >= 4,
        "f32 finds the key at fewer than 4 of 6 depths: {f32:?}"
    );
    let q3 = run(kv(3));
    assert_eq!(q3, f32, "3-bit + 128-token window against f32, per depth");
    let q2 = run(kv(2));
    eprintln!("2-bit + 128-token window: {q2:?} (f32 {f32:?})");
}

#[test]
fn passkey_prompts_hide_the_key_where_asked() {
    let p = passkey::prompt(10, 0.0, 12345);
    let q = passkey::prompt(10, 1.0, 12345);
    let at = |s: &str| s.find("12345").unwrap();
    assert!(at(&p) < at(&q));
    assert_eq!(p.len(), q.len());
    assert!(q.ends_with("The pass key is"));
    assert_ne!(passkey::passkey(0), passkey::passkey(1));
    assert!((10_000..100_000).contains(&passkey::passkey(7)));
    assert_eq!(passkey::depths(3), vec![0.0, 0.5, 1.0]);
}
