//! Decode-shaped quantized matrix × vector timings on the CPU backend: the shapes of SmolLM2's
//! projections and its 8-bit output head, at 1 and 2 threads, as a table of µs per call and
//! weight GB/s. Each shape is timed twice: one matrix called over and over (it stays in the
//! CPU caches: the kernel's compute ceiling) and a rotation over copies totalling more than
//! the last-level cache (weights stream from memory, as in a real decode step). Run with
//! `cargo bench -p lowbit-cpu --bench matvec`.

use half::f16;
use lowbit_core::backend::{Backend, BufferId, DType, WeightId, WeightMatrix};
use lowbit_core::ops::Op;
use lowbit_core::quant::{QuantSpec, QuantizedMatrix, Scheme};
use lowbit_cpu::CpuBackend;
use std::time::Instant;

/// A matrix of pseudo-random codes and scales (speed does not depend on the values).
fn matrix(rows: usize, cols: usize, bits: u8) -> QuantizedMatrix {
    let spec = QuantSpec::new(bits, 32, Scheme::Symmetric).expect("valid spec");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = rows * cols * bits as usize / 32;
    QuantizedMatrix {
        rows,
        cols,
        spec,
        data: (0..words).map(|_| next() as u32).collect(),
        scales: (0..rows * cols / 32)
            .map(|_| f16::from_f32(0.01 + (next() % 100) as f32 * 1e-3))
            .collect(),
        offsets: Vec::new(),
        rotation: None,
        grid: None,
    }
}

/// `Op::Linear` without bias of `n` rows.
fn linear(w: WeightId, x: BufferId, out: BufferId, n: usize) -> [Op; 1] {
    [Op::Linear {
        w,
        bias: None,
        x,
        out,
        n,
        accumulate: false,
    }]
}

fn main() {
    let shapes: [(&str, usize, usize, u8); 5] = [
        ("attn q/o 576x576", 576, 576, 4),
        ("ffn gate/up 1536x576", 1536, 576, 4),
        ("ffn down 576x1536", 576, 1536, 4),
        ("ffn gate/up 1536x576", 1536, 576, 8),
        ("lm_head 49152x576", 49152, 576, 8),
    ];
    println!("| shape | bits | threads | weights | µs/call | weight GB/s |");
    println!("|---|---|---|---|---|---|");
    for threads in [1usize, 2] {
        let be = CpuBackend::new(threads).expect("cpu backend");
        for (name, rows, cols, bits) in shapes {
            let m = matrix(rows, cols, bits);
            let bytes = m.data.len() * 4 + m.scales.len() * 2;
            // Copies enough to overflow a 32 MB last-level cache twice.
            let copies = (64usize << 20).div_ceil(bytes).max(1);
            let ws: Vec<_> = (0..copies)
                .map(|_| {
                    be.upload_weight(WeightMatrix::Quantized(m.clone()))
                        .expect("upload")
                })
                .collect();
            let x: Vec<f32> = (0..cols).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let xb = be.upload(&x).expect("upload x");
            let out = be.alloc(DType::F32, rows).expect("alloc");
            for (label, set) in [("cached", &ws[..1]), ("streamed", &ws[..])] {
                // Enough calls for ~0.3 s per row of the table.
                let reps = (3e8 / bytes as f64).clamp(20.0, 20000.0) as usize;
                for i in 0..reps / 10 + set.len() {
                    be.run(&linear(set[i % set.len()], xb, out, 1))
                        .expect("matmul");
                }
                let t = Instant::now();
                for i in 0..reps {
                    be.run(&linear(set[i % set.len()], xb, out, 1))
                        .expect("matmul");
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "| {name} | {bits} | {threads} | {label} | {:.1} | {:.2} |",
                    s * 1e6,
                    bytes as f64 / s / 1e9
                );
            }
        }
    }
    // Batched decode (n activation rows share each weight read): µs per activation row.
    println!("\n| shape | bits | threads | rows n | µs per call | µs per row |");
    println!("|---|---|---|---|---|---|");
    for threads in [1usize, 2] {
        let be = CpuBackend::new(threads).expect("cpu backend");
        for (name, rows, cols, bits) in [shapes[1], shapes[4]] {
            let m = matrix(rows, cols, bits);
            let bytes = m.data.len() * 4 + m.scales.len() * 2;
            let w = be
                .upload_weight(WeightMatrix::Quantized(m))
                .expect("upload");
            for n in [1usize, 4, 16] {
                let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let xb = be.upload(&x).expect("upload x");
                let out = be.alloc(DType::F32, n * rows).expect("alloc");
                let reps = (1e8 / bytes as f64 / n as f64).clamp(5.0, 5000.0) as usize;
                be.run(&linear(w, xb, out, n)).expect("matmul");
                let t = Instant::now();
                for _ in 0..reps {
                    be.run(&linear(w, xb, out, n)).expect("matmul");
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "| {name} | {bits} | {threads} | {n} | {:.1} | {:.1} |",
                    s * 1e6,
                    s * 1e6 / n as f64
                );
            }
        }
    }
}
