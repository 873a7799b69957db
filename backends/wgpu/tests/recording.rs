//! Host-side cost of recording a decode step, on lavapipe: a 30-layer LLaMA-shaped greedy step
//! of tiny matrices (so GPU time is negligible), recorded as the adapter records it, repeatedly.
//! Asserts that each step is one submission and that steady-state steps create no bind groups;
//! prints the recording time per step and per op (run with `--nocapture` to see it).

mod calls;

use calls::{Llama, LlamaShape};
use lowbit_core::future::block_on;
use lowbit_core::ops::TokenIds;
use lowbit_core::Backend;
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use std::time::{Duration, Instant};

const SHAPE: LlamaShape = LlamaShape {
    layers: 30,
    dim: 64,
    heads: 4,
    kv_heads: 2,
    head_dim: 16,
    ffn: 128,
    vocab: 256,
    max_seq: 64,
    rows: 1,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn decode_step_recording_time() {
    let b = WgpuBackend::new(&WgpuOptions::software())
        .expect("a software WebGPU adapter (install mesa-vulkan-drivers)");
    let m = Llama::new(&b, SHAPE, 3);
    b.write(m.tok, 0, &[5.0]).unwrap();
    let (mut times, mut totals, mut creations, mut submits) = (vec![], vec![], vec![], vec![]);
    let mut ops_per_step = 0;
    let mut pending = None;
    for k in 0..24 {
        let (src, dst) = (k % 2, (k + 1) % 2);
        let t0 = Instant::now();
        let ops = m.step(
            TokenIds::Device {
                buf: m.tok,
                offset: src,
                n: 1,
            },
            k,
            Some(dst),
        );
        ops_per_step = ops.len();
        let before = b.submits();
        b.run(&ops).unwrap();
        times.push(t0.elapsed());
        // The read submits the step; the previous step's read is redeemed after this one was
        // recorded and submitted (the decode pipeline's depth of two).
        let read = b.read(m.tok, dst, 1);
        submits.push(b.submits() - before);
        creations.push(b.bind_groups_created());
        if let Some(prev) = pending.replace(read) {
            let tok: Vec<f32> = block_on(prev).unwrap();
            assert!(tok[0] >= 0.0 && (tok[0] as usize) < SHAPE.vocab, "{tok:?}");
        }
        totals.push(t0.elapsed());
    }
    let last = block_on(pending.take().unwrap()).unwrap();
    assert!((last[0] as usize) < SHAPE.vocab);
    assert!(
        submits.iter().all(|&s| s == 1),
        "submissions per step: {submits:?}"
    );
    assert_eq!(
        creations[4],
        creations[creations.len() - 1],
        "steady-state steps must reuse their bind groups: {creations:?}"
    );
    let (record, total) = (median(times[4..].to_vec()), median(totals[4..].to_vec()));
    eprintln!(
        "recording a {}-layer decode step: median {:.1} µs ({:.2} µs per op, {ops_per_step} ops)",
        SHAPE.layers,
        record.as_secs_f64() * 1e6,
        record.as_secs_f64() * 1e6 / ops_per_step as f64
    );
    eprintln!(
        "whole step (record, submit, wait for the previous step): median {:.1} µs",
        total.as_secs_f64() * 1e6
    );
}

/// A read never awaited does not wedge the backend: later reads and steps go on.
#[test]
fn a_dropped_read_leaves_the_recorder_usable() {
    let b = WgpuBackend::new(&WgpuOptions::software()).unwrap();
    let x = b.upload(&[1.0, 2.0, 3.0]).unwrap();
    for _ in 0..3 {
        drop(b.read(x, 0, 3));
    }
    let late = b.read(x, 1, 2);
    let now = b.read(x, 0, 1);
    assert_eq!(block_on(now).unwrap(), vec![1.0]);
    assert_eq!(block_on(late).unwrap(), vec![2.0, 3.0]);
}
