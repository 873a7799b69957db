//! The fusion pass on the LLaMA pattern, on lavapipe: a decode step's plan is the fused groups
//! (q|k|v with RoPE and the KV write, attention with the output projection, the SwiGLU
//! feed-forward, the head; each residual add preparing the next norm), it runs fewer
//! dispatches, and fused steps compute what the same ops run one by one compute (prefill and
//! decode, on the wide 8-bit path and the narrow one).

mod calls;

use calls::{Calls, Llama, LlamaShape};
use lowbit_core::ops::{Op, TokenIds};
use lowbit_core::Backend;
use lowbit_wgpu::{Fused, Group, WgpuBackend, WgpuOptions};

fn group(fused: Fused, len: usize, prepares_next_norm: bool) -> Group {
    Group {
        fused,
        len,
        prepares_next_norm,
    }
}

/// Records `ops` as one list (`fused`) or one op per list.
fn run(b: &WgpuBackend, ops: &[Op], fused: bool) {
    if fused {
        b.run(ops).unwrap();
    } else {
        for op in ops {
            b.run(std::slice::from_ref(op)).unwrap();
        }
    }
}

/// Prefill of 5 tokens then 3 decode steps, fused or op by op: the logits of each step, the
/// last step's KV cache of layer 0, and the dispatches of the last decode step.
fn steps(opts: &WgpuOptions, shape: LlamaShape, fused: bool) -> (Vec<Vec<f32>>, Vec<f32>, u64) {
    let b =
        WgpuBackend::new(opts).expect("a software WebGPU adapter (install mesa-vulkan-drivers)");
    let m = Llama::new(&b, shape, 7);
    let mut out = Vec::new();
    run(
        &b,
        &m.step(TokenIds::Host(vec![3, 1, 4, 1, 5]), 0, None),
        fused,
    );
    out.push(b.read_now(m.logits, 4 * m.vocab, m.vocab).unwrap());
    let mut dispatches = 0;
    for (k, t) in [9u32, 2, 6].iter().enumerate() {
        let before = b.dispatches();
        run(&b, &m.step(TokenIds::Host(vec![*t]), 5 + k, None), fused);
        dispatches = b.dispatches() - before;
        out.push(b.read_now(m.logits, 0, m.vocab).unwrap());
    }
    let kv = (5 + 3) * m.kv_heads * m.head_dim;
    let cache = b.read_now(m.layers[0].kc, 0, kv).unwrap();
    (out, cache, dispatches)
}

fn check_equal(opts: &WgpuOptions, shape: LlamaShape, what: &str) {
    let (fused, fused_cache, fused_dispatches) = steps(opts, shape, true);
    let (single, single_cache, single_dispatches) = steps(opts, shape, false);
    for (i, (f, s)) in fused.iter().zip(&single).enumerate() {
        // Fused decode steps quantize activations to 8 bits where the single ops keep f32:
        // differences well under a percent of the largest logit.
        let top = s.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let e = f
            .iter()
            .zip(s)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / top;
        assert!(e < 2e-2, "{what}: step {i} logits off by {e}");
        assert!(f.iter().all(|v| v.is_finite()), "{what}: step {i}");
    }
    let top = single_cache.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let e = fused_cache
        .iter()
        .zip(&single_cache)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / top;
    assert!(e < 2e-2, "{what}: KV cache off by {e}");
    assert!(
        fused_dispatches < single_dispatches,
        "{what}: fused decode step {fused_dispatches} dispatches, op by op {single_dispatches}"
    );
    eprintln!("{what}: a decode step is {fused_dispatches} dispatches fused, {single_dispatches} op by op");
}

/// Wide 8-bit decode matvecs: rows of 2048 values.
const WIDE: LlamaShape = LlamaShape {
    layers: 1,
    dim: 2048,
    heads: 16,
    kv_heads: 4,
    head_dim: 128,
    ffn: 2080,
    vocab: 1000,
    max_seq: 16,
    rows: 5,
};

#[test]
fn fused_steps_equal_single_ops_on_the_wide_path() {
    let opts = WgpuOptions {
        wide_matvec: true,
        ..WgpuOptions::software()
    };
    check_equal(&opts, WIDE, "wide");
    // The fused decode kernels did run.
    let b = WgpuBackend::new(&opts).unwrap();
    let m = Llama::new(&b, WIDE, 7);
    b.run(&m.step(TokenIds::Host(vec![1]), 0, None)).unwrap();
    b.read_now(m.logits, 0, 1).unwrap();
    let k = b.compiled_kernels();
    // q|k|v with RoPE on the norm's 8-bit blocks; attention's blocks into o, whose add
    // prepares the next norm; gate|up with SwiGLU on it; down preparing the head's norm.
    for defines in [
        ["ROPE=1", "XQ8=1", "WORD_SCALES=0"],
        ["NORM_OUT=1", "ACCUMULATE=1", "WORD_SCALES=0"],
        ["SWIGLU=1", "RMS_IN=1", "ACCUMULATE=0"],
        ["NORM_OUT=1", "ACCUMULATE=1", "WORD_SCALES=1"],
        ["RMS_IN=1", "SWIGLU=0", "ACCUMULATE=0"],
    ] {
        assert!(
            k.iter()
                .any(|l| l.starts_with("matvec[") && defines.iter().all(|d| l.contains(d))),
            "no matvec with {defines:?}: {k:?}"
        );
    }
}

#[test]
fn fused_steps_equal_single_ops_on_the_narrow_path() {
    let shape = LlamaShape {
        layers: 2,
        dim: 64,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 96,
        vocab: 300,
        max_seq: 16,
        rows: 5,
    };
    let opts = WgpuOptions {
        fused_norm: true,
        ..WgpuOptions::software()
    };
    check_equal(&opts, shape, "narrow");
}

#[test]
fn the_decode_layer_takes_the_fused_groups() {
    let b = WgpuBackend::new(&WgpuOptions::software()).unwrap();
    let shape = LlamaShape {
        layers: 3,
        dim: 64,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 96,
        vocab: 300,
        max_seq: 16,
        rows: 1,
    };
    let m = Llama::new(&b, shape, 1);
    let ops = m.step(
        TokenIds::Device {
            buf: m.tok,
            offset: 0,
            n: 1,
        },
        4,
        Some(1),
    );
    let mut want = vec![group(Fused::Single, 1, false)];
    for _ in 0..3 {
        want.extend([
            group(Fused::QkvRope { norm: true }, 5, false),
            group(Fused::AttentionLinear, 2, true),
            group(Fused::Ffn { norm: true }, 4, true),
        ]);
    }
    want.extend([
        group(Fused::NormLinear, 2, false),
        group(Fused::Single, 1, false),
    ]);
    assert_eq!(b.fusion_plan(&ops).groups, want);
    // Positions do not change the plan; a buffer that is not scratch, or a value read later,
    // keeps the ops apart.
    assert_eq!(
        b.fusion_plan(&m.step(TokenIds::Host(vec![2]), 9, Some(0)))
            .groups,
        want
    );
    let mut read_later = ops.clone();
    read_later.push(Op::Copy {
        src: m.s.qkv,
        src_offset: 0,
        dst: m.s.x,
        dst_offset: 0,
        len: 1,
    });
    let plan = b.fusion_plan(&read_later).groups;
    // The last layer's q|k|v rows are read after the step: its group falls apart (the norm
    // and projection still fuse).
    let qkv_groups = plan
        .iter()
        .filter(|g| matches!(g.fused, Fused::QkvRope { .. }))
        .count();
    assert_eq!(qkv_groups, 2, "{plan:?}");
    assert_eq!(plan.iter().map(|g| g.len).sum::<usize>(), read_later.len());
}
