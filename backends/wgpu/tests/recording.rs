//! Host-side cost of recording a decode step, on lavapipe: a 30-layer Llama-shaped step of tiny
//! matrices (so GPU time is negligible), recorded repeatedly. Prints the recording time per step
//! and per dispatch (run with `--nocapture` to see it); asserts that steady-state steps create no
//! bind groups.

use lowbit_core::backend::{AttentionParams, RopeStyle};
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, BufferId, QuantSpec, Scheme, WeightId, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const LAYERS: usize = 30;
const DIM: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const VOCAB: usize = 256;
const MAX_SEQ: usize = 64;

struct Layer {
    wq: WeightId,
    wk: WeightId,
    wv: WeightId,
    wo: WeightId,
    gate: WeightId,
    up: WeightId,
    down: WeightId,
    kc: BufferId,
    vc: BufferId,
}

fn weight(b: &WgpuBackend, rng: &mut StdRng, rows: usize, cols: usize) -> WeightId {
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let spec = QuantSpec::new(4, 32, Scheme::Symmetric).unwrap();
    b.upload_weight(WeightMatrix::Quantized(
        quantize(&w, rows, cols, spec).unwrap(),
    ))
    .unwrap()
}

#[test]
fn decode_step_recording_time() {
    let b = WgpuBackend::new(&WgpuOptions::software())
        .expect("a software WebGPU adapter (install mesa-vulkan-drivers)");
    let mut rng = StdRng::seed_from_u64(3);
    let kv_dim = KV_HEADS * HEAD_DIM;
    let table = weight(&b, &mut rng, VOCAB, DIM);
    let norm = b.upload(&[1.0; DIM]).unwrap();
    let layers: Vec<Layer> = (0..LAYERS)
        .map(|_| Layer {
            wq: weight(&b, &mut rng, DIM, DIM),
            wk: weight(&b, &mut rng, kv_dim, DIM),
            wv: weight(&b, &mut rng, kv_dim, DIM),
            wo: weight(&b, &mut rng, DIM, DIM),
            gate: weight(&b, &mut rng, FFN, DIM),
            up: weight(&b, &mut rng, FFN, DIM),
            down: weight(&b, &mut rng, DIM, FFN),
            kc: b.alloc(MAX_SEQ * kv_dim).unwrap(),
            vc: b.alloc(MAX_SEQ * kv_dim).unwrap(),
        })
        .collect();
    let [x, h, q, k, v, att, g, u, logits] =
        [DIM, DIM, DIM, kv_dim, kv_dim, DIM, FFN, FFN, VOCAB].map(|n| b.alloc(n).unwrap());
    let mut times = Vec::new();
    let mut totals = Vec::new();
    let mut submits = Vec::new();
    let mut creations = Vec::new();
    for pos in 0..24 {
        let t0 = Instant::now();
        b.embed(table, &[(pos * 7 % VOCAB) as u32], x).unwrap();
        for l in &layers {
            let p = AttentionParams {
                n_tokens: 1,
                pos0: pos,
                n_heads: HEADS,
                n_kv_heads: KV_HEADS,
                head_dim: HEAD_DIM,
                scale: 0.25,
            };
            b.rms_norm(x, norm, h, 1, DIM, 1e-5).unwrap();
            b.matmul(l.wq, h, q, 1).unwrap();
            b.matmul(l.wk, h, k, 1).unwrap();
            b.matmul(l.wv, h, v, 1).unwrap();
            b.rope(q, 1, HEADS, HEAD_DIM, pos, 1e4, RopeStyle::Adjacent)
                .unwrap();
            b.rope(k, 1, KV_HEADS, HEAD_DIM, pos, 1e4, RopeStyle::Adjacent)
                .unwrap();
            b.kv_store(k, l.kc, pos, 1, kv_dim).unwrap();
            b.kv_store(v, l.vc, pos, 1, kv_dim).unwrap();
            b.attention(q, l.kc, l.vc, att, &p).unwrap();
            b.matmul(l.wo, att, h, 1).unwrap();
            b.add(x, h, DIM).unwrap();
            b.rms_norm(x, norm, h, 1, DIM, 1e-5).unwrap();
            b.matmul(l.gate, h, g, 1).unwrap();
            b.matmul(l.up, h, u, 1).unwrap();
            b.silu_mul(g, u, g, FFN).unwrap();
            b.matmul(l.down, g, h, 1).unwrap();
            b.add(x, h, DIM).unwrap();
        }
        b.rms_norm(x, norm, h, 1, DIM, 1e-5).unwrap();
        b.matmul(table, h, logits, 1).unwrap();
        times.push(t0.elapsed());
        creations.push(b.bind_groups_created());
        let t1 = Instant::now();
        b.submit().unwrap();
        submits.push(t1.elapsed());
        let out = b.read(logits, 0, VOCAB).unwrap();
        assert!(out.iter().all(|v| v.is_finite()));
        totals.push(t0.elapsed());
    }
    // Steady state: skip the first steps (pipeline compilation, first bind groups).
    let mut steady: Vec<Duration> = times[4..].to_vec();
    steady.sort();
    let median = steady[steady.len() / 2];
    let mut submits: Vec<Duration> = submits[4..].to_vec();
    submits.sort();
    let submit = submits[submits.len() / 2];
    let mut totals: Vec<Duration> = totals[4..].to_vec();
    totals.sort();
    let total = totals[totals.len() / 2];
    let ops = 1 + LAYERS * 17 + 2;
    eprintln!(
        "recording a {LAYERS}-layer decode step: median {:.1} µs ({:.2} µs per op, {ops} ops)",
        median.as_secs_f64() * 1e6,
        median.as_secs_f64() * 1e6 / ops as f64
    );
    eprintln!(
        "submitting it (encoder finish, queue submit): median {:.1} µs",
        submit.as_secs_f64() * 1e6
    );
    eprintln!(
        "whole step (record, submit, run, read the logits): median {:.1} µs",
        total.as_secs_f64() * 1e6
    );
    assert_eq!(
        creations[4],
        creations[creations.len() - 1],
        "steady-state steps must reuse their bind groups: {creations:?}"
    );
}
