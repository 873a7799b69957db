//! Matvec (decode, n = 1) throughput on packed weights: GB/s of weight bytes streamed for int4
//! and int8 (group 32, symmetric: the Q4_0 / Q8_0 counterparts) on 1 and 2 threads.
//!
//! `cargo run --release -p lowbit-cpu --example matvec_bench`

use half::f16;
use lowbit_core::backend::{Backend, BufferId, DType, WeightId, WeightMatrix};
use lowbit_core::ops::Op;
use lowbit_core::quant::{QuantSpec, QuantizedMatrix, Scheme};
use lowbit_cpu::CpuBackend;
use rand::{Rng, SeedableRng};
use std::time::Instant;

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

fn main() -> lowbit_core::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (rows, cols) in [(576usize, 1536usize), (1536, 576), (4096, 4096)] {
        for bits in [4u8, 8] {
            let spec = QuantSpec::new(bits, 32, Scheme::Symmetric)?;
            // Random words are valid codes of any width.
            let m = QuantizedMatrix {
                rows,
                cols,
                spec,
                data: (0..rows * cols * bits as usize / 32)
                    .map(|_| rng.gen())
                    .collect(),
                scales: (0..rows * cols / 32)
                    .map(|_| f16::from_f32(rng.gen_range(0.001..0.01)))
                    .collect(),
                offsets: Vec::new(),
                rotation: None,
                grid: None,
            };
            let bytes = m.size_bytes();
            for threads in [1usize, 2] {
                let b = CpuBackend::new(threads)?;
                let w = b.upload_weight(WeightMatrix::Quantized(m.clone()))?;
                let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let xb = b.upload(&x)?;
                let out = b.alloc(DType::F32, rows)?;
                let iters = (2_000_000_000 / bytes).clamp(20, 5000);
                for _ in 0..iters / 10 + 1 {
                    b.run(&linear(w, xb, out, 1))?;
                }
                let t = Instant::now();
                for _ in 0..iters {
                    b.run(&linear(w, xb, out, 1))?;
                }
                let s = t.elapsed().as_secs_f64() / iters as f64;
                println!(
                    "int{bits}-g32-sym {rows:>5}x{cols:<5} threads={threads} ({}): {:8.1} us  {:6.2} GB/s",
                    b.isa().name(),
                    s * 1e6,
                    bytes as f64 / s / 1e9
                );
            }
        }
    }
    Ok(())
}
