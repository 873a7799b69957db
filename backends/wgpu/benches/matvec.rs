//! Decode matvec bandwidth on the selected WebGPU adapter: the Llama-3-8B projection shapes at
//! int8/int4/int3/int2 (g32, symmetric), each run `CALLS` times back to back in one submission
//! (out = W·x, as a decode step chains them), reported as weight bytes read per second.
//!
//! `cargo bench -p lowbit-wgpu --bench matvec [-- [--decode] [--matvec LANESxROWS[xUNROLL]]]`
//! (the adapter is picked as `--backend webgpu` picks it; `--matvec` forces the matvec shape as
//! `backend.webgpu.matvec_shape` does; `--decode` measures the decode step's kernels instead).
//! A table, no assertions: speed is measured here, never in tests.

use half::f16;
// The tests' op lists of the former backend calls (one `run` each, fused where they form a
// fused group).
#[path = "../tests/calls/mod.rs"]
mod calls;

use calls::{AttentionParams, Calls, QkvParams, RmsNorm};
use lowbit_core::ops::RopeStyle;
use lowbit_core::quant::QuantizedMatrix;
use lowbit_core::{Backend, QuantSpec, Scheme, WeightId, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};

const CALLS: usize = 200;

/// A matrix of random codes with small scales (the values do not change the speed).
fn random_matrix(rows: usize, cols: usize, bits: u8, seed: u64) -> WeightMatrix {
    let spec = QuantSpec::new(bits, 32, Scheme::Symmetric).expect("a valid format");
    let mut s = seed | 1;
    let words = rows * cols * bits as usize / 32;
    let data = (0..words)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u32
        })
        .collect();
    WeightMatrix::Quantized(QuantizedMatrix {
        rows,
        cols,
        spec,
        data,
        scales: vec![f16::from_f32(1e-3); rows * cols / 32],
        offsets: Vec::new(),
        rotation: None,
        grid: None,
    })
}

/// Copies of a random `rows × cols` matrix of `bits`-bit codes, enough to overflow the GPU's
/// L2 (H100: 50 MB) when read in turn, so every call streams its weights from memory as a
/// decode step does; and the bytes of one copy.
fn weight_copies(b: &WgpuBackend, rows: usize, cols: usize, bits: u8) -> (Vec<WeightId>, usize) {
    let bytes = rows * cols * bits as usize / 8 + rows * cols / 32 * 2;
    let copies = 128_000_000usize.div_ceil(bytes).min(16);
    let ids = (0..copies)
        .map(|c| {
            let w = random_matrix(rows, cols, bits, (rows * cols + c) as u64);
            b.upload_weight(w).expect("upload")
        })
        .collect();
    (ids, bytes)
}

/// `n` activations of a fixed pattern in [-1, 1].
fn activations(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect()
}

/// Device seconds per call of `call(i)` for i in 0..CALLS, recorded back to back and submitted
/// together after a warm-up round (compiling, binding): the host's wait for the read-back of
/// `probe` after the one submission, which the device starts only then.
fn time_calls(b: &WgpuBackend, probe: lowbit_core::BufferId, call: &dyn Fn(usize)) -> f64 {
    for i in 0..CALLS {
        call(i);
    }
    b.read_now(probe, 0, 1).expect("read");
    for i in 0..CALLS {
        call(i);
    }
    b.reset_timings();
    b.read_now(probe, 0, 1).expect("read");
    let wait = b
        .host_timings()
        .into_iter()
        .find(|t| t.kernel.contains("wait"))
        .map_or(0, |t| t.total_ns);
    wait as f64 * 1e-9 / CALLS as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).map(|i| args.get(i + 1));
    let mut tuning = lowbit_core::registry::WebGpuTuning::default();
    if let Some(shape) = arg("--matvec") {
        let shape = shape.and_then(|s| lowbit_core::registry::MatvecShape::parse(s));
        tuning.matvec_shape = Some(shape.expect("--matvec LANESxROWS[xUNROLL]"));
    }
    let b = WgpuBackend::new(&WgpuOptions::from_tuning(&tuning)).expect("a WebGPU adapter");
    let info = b.info();
    println!("adapter: {} ({})", info.device, info.features.join(", "));
    println!("Chained: each call writes the same output, so each waits for the one before (a");
    println!("barrier between them, as in a decode step); independent: distinct outputs.");
    println!("Device time per call: the wait for the one submission's result.");
    println!("| matrix | rows × cols | format | MB | chained µs / call | GB/s | independent µs / call | GB/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let shapes = [
        ("q|k|v", 6144, 4096),
        ("o", 4096, 4096),
        ("gate|up", 28672, 4096),
        ("down", 4096, 14336),
        ("lm_head", 128256, 4096),
    ];
    if args.iter().any(|a| a == "--decode") {
        // Tuning sweeps: the whole layer and the matvecs as decode runs them only.
        step_kernels(&b, false);
        decode_matvecs(&b);
        return;
    }
    // The fixed cost of a dependent dispatch: a 64-value add chained CALLS times (each waits
    // for the one before: a barrier between them, as in a decode step) and into distinct
    // outputs (no dependence, no barrier).
    {
        let src = b.upload(&[1.0; 64]).expect("upload");
        let outs: Vec<_> = (0..CALLS)
            .map(|_| b.alloc_f32(64).expect("alloc"))
            .collect();
        for (label, distinct) in [("chained", false), ("independent", true)] {
            let s = time_calls(&b, outs[0], &|i| {
                let dst = if distinct { outs[i] } else { outs[0] };
                b.add(dst, src, 64).expect("add");
            });
            println!("| 64-value add, {label} | | | | {:.1} | |", s * 1e6);
        }
    }
    step_kernels(&b, true);
    decode_matvecs(&b);
    for bits in [8u8, 4, 3, 2] {
        for (name, rows, cols) in shapes {
            let (ids, bytes) = weight_copies(&b, rows, cols, bits);
            let copies = ids.len();
            let x = b.upload(&activations(cols)).expect("upload");
            let outs: Vec<_> = (0..CALLS)
                .map(|_| b.alloc_f32(rows).expect("alloc"))
                .collect();
            let mut cells = Vec::new();
            for distinct in [false, true] {
                let s = time_calls(&b, outs[0], &|i| {
                    let out = if distinct { outs[i] } else { outs[0] };
                    b.matmul(ids[i % copies], x, out, 1).expect("matmul");
                });
                cells.push(format!("{:.1} | {:.0}", s * 1e6, bytes as f64 / s / 1e9));
            }
            println!(
                "| {name} | {rows} × {cols} | int{bits} | {:.1} | {} |",
                bytes as f64 / 1e6,
                cells.join(" | ")
            );
            for o in outs {
                b.free(o);
            }
            b.free(x);
        }
    }
}

/// The other kernels of a Llama-3-8B decode step (`others`), then its int4 projections as the
/// adapter runs them (`rms_norm_qkv_rope`, `attention_matmul_add`, ...) and one whole layer,
/// each chained CALLS times (device µs).
fn step_kernels(b: &WgpuBackend, others: bool) {
    // The other kernels of a Llama-3-8B decode step, each chained CALLS times (device µs).
    let (heads, kv_heads, hd, ff, vocab) = (32usize, 8usize, 128usize, 14336usize, 128256);
    let dim = heads * hd;
    let row = dim + 2 * kv_heads * hd;
    let ctx = 512;
    let buf = |n: usize| b.upload(&vec![0.01; n]).expect("upload");
    // Intermediates are scratch, as a model's are, so fused groups may leave them unwritten.
    let scratch = |n: usize| b.alloc_scratch(n).expect("alloc");
    let (x, g, normed) = (buf(dim), buf(dim), scratch(dim));
    let (qkv, q, att) = (scratch(row), buf(dim), scratch(dim));
    let (kc, vc) = (buf(ctx * kv_heads * hd), buf(ctx * kv_heads * hd));
    let (gu, ffo, logits, tok) = (buf(2 * ff), scratch(ff), buf(vocab), buf(4));
    let qp = |pos0| QkvParams {
        n_tokens: 1,
        pos0,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        theta: 500_000.0,
        style: RopeStyle::Adjacent,
    };
    let ap = |pos0| AttentionParams {
        n_tokens: 1,
        pos0,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let rows: [(&str, &dyn Fn(usize)); 6] = [
        ("rms_norm 4096", &|_| {
            b.rms_norm(x, g, normed, 1, dim, 1e-5).expect("norm")
        }),
        ("rope + kv store", &|i| {
            b.rope_store_qkv(qkv, q, kc, vc, &qp(i % ctx))
                .expect("rope")
        }),
        ("attention, 64 keys", &|_| {
            b.attention(q, kc, vc, att, &ap(63)).expect("attn")
        }),
        ("attention, 500 keys", &|_| {
            b.attention(q, kc, vc, att, &ap(499)).expect("attn")
        }),
        ("swiglu 14336", &|_| {
            b.swiglu(gu, ffo, 1, ff).expect("swiglu")
        }),
        ("argmax 128256", &|_| {
            b.argmax(logits, vocab, tok, 0).expect("argmax")
        }),
    ];
    for (label, call) in rows {
        if !others {
            break;
        }
        let s = time_calls(b, tok, call);
        println!("| {label} | | | | {:.1} | |", s * 1e6);
    }
    // The int4 projections as a decode step runs them (RMSNorm before them, residual added),
    // then one whole layer in the adapter's order.
    let w = |rows, cols, seed| {
        b.upload_weight(random_matrix(rows, cols, 4, seed))
            .expect("upload")
    };
    let (wqkv, wo, wgu, wd) = (
        w(row, dim, 1),
        w(dim, dim, 2),
        w(2 * ff, dim, 3),
        w(dim, ff, 4),
    );
    let norm = RmsNorm {
        weight: g,
        dim,
        eps: 1e-5,
    };
    let layer: [(&str, &dyn Fn(usize)); 7] = [
        ("norm + q|k|v + RoPE, int4", &|i| {
            b.rms_norm_qkv_rope(x, &norm, normed, wqkv, qkv, q, kc, vc, &qp(i % 64))
                .expect("qkv")
        }),
        ("o + residual, int4", &|_| {
            b.matmul_add(wo, att, x, 1).expect("o")
        }),
        ("attention (64 keys) + o + residual, int4", &|_| {
            b.attention_matmul_add(q, kc, vc, att, &ap(63), wo, x)
                .expect("attention + o")
        }),
        ("norm + gate|up, int4", &|_| {
            b.rms_norm_matmul(x, &norm, normed, wgu, gu, 1)
                .expect("gate_up")
        }),
        ("down + residual, int4", &|_| {
            b.matmul_add(wd, ffo, x, 1).expect("down")
        }),
        ("swiglu + down + residual, int4", &|_| {
            b.swiglu_matmul_add(gu, ffo, wd, x, 1, ff).expect("down")
        }),
        ("whole layer, int4, 64 keys", &|i| {
            b.rms_norm_qkv_rope(x, &norm, normed, wqkv, qkv, q, kc, vc, &qp(i % 64))
                .expect("qkv");
            b.attention_matmul_add(q, kc, vc, att, &ap(63), wo, x)
                .expect("attention + o");
            b.rms_norm_matmul(x, &norm, normed, wgu, gu, 1)
                .expect("gate_up");
            b.swiglu_matmul_add(gu, ffo, wd, x, 1, ff).expect("down");
        }),
    ];
    for (label, call) in layer {
        let s = time_calls(b, tok, call);
        println!("| {label} | | | | {:.1} | |", s * 1e6);
    }
}

/// The Llama-3-8B projections as a decode step runs them: int4 (the head int8), 8-bit
/// activation blocks written by the SwiGLU before each (`swiglu_matmul_add`, residual added),
/// chained CALLS times, weights in copies larger than the L2. The SwiGLU alone is listed too.
fn decode_matvecs(b: &WgpuBackend) {
    let shapes = [
        ("q|k|v", 6144, 4096, 4u8),
        ("o", 4096, 4096, 4),
        ("gate|up", 28672, 4096, 4),
        ("down", 4096, 14336, 4),
        ("lm_head", 128256, 4096, 8),
    ];
    for (name, rows, cols, bits) in shapes {
        let (ids, bytes) = weight_copies(b, rows, cols, bits);
        let copies = ids.len();
        let gu = b.upload(&activations(2 * cols)).expect("upload");
        let (h, out) = (
            b.alloc_scratch(cols).expect("alloc"),
            b.alloc_f32(rows).expect("alloc"),
        );
        let s = time_calls(b, h, &|_| b.swiglu(gu, h, 1, cols).expect("swiglu"));
        let pair = time_calls(b, out, &|i| {
            b.swiglu_matmul_add(gu, h, ids[i % copies], out, 1, cols)
                .expect("swiglu + matvec")
        });
        println!(
            "| swiglu (8-bit out) + {name}, int{bits} | {rows} × {cols} | | {:.1} | {:.1} (swiglu alone {:.1}) | {:.0} |",
            bytes as f64 / 1e6,
            pair * 1e6,
            s * 1e6,
            bytes as f64 / (pair - s).max(1e-9) / 1e9
        );
        for id in [gu, h, out] {
            b.free(id);
        }
    }
}
