//! Passkey retrieval on SmolLM2 (fp32 weights, CPU backend) at a small size (~1,000 tokens):
//! a 2-bit KV cache with a 128-token full-precision window finds the key exactly as often as
//! the f32 cache, and the f32 cache does find it. Without the window 2 bits lose keys (measured,
//! not asserted: that is the configuration's weakness, not a contract).

mod common;

use lowbit::core::adapter::TextModel;
use lowbit::core::kv::KvFormat;
use lowbit::passkey;

fn kv2(window: usize) -> KvFormat {
    lowbit::plan::KvCachePolicy {
        bits: 2,
        group_size: 32,
        recent_window: window,
        sink_tokens: 0,
        key_channels: window > 0,
        rotate: true,
        sliding_window: 0,
        max_seq_len: 2048,
    }
    .format()
    .unwrap()
}

#[test]
fn two_bit_kv_with_a_window_finds_the_passkey_as_often_as_f32() {
    let (model, _) = common::smollm2_plan("cpu", "fp32")
        .load(&mut |_, _, _| {})
        .expect("load SmolLM2");
    let model: &dyn TextModel = model.as_ref();
    let repeats = passkey::repeats_for(model, 1000).unwrap();
    let depths = passkey::depths(3);
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
    let q2 = run(kv2(128));
    assert!(
        f32.iter().filter(|&&f| f).count() >= 2,
        "f32 finds the key at most once: {f32:?}"
    );
    assert_eq!(q2, f32, "2-bit + 128-token window against f32, per depth");
    let no_window = run(kv2(0));
    eprintln!("2-bit without a window: {no_window:?}");
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
