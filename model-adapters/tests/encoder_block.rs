//! One BERT encoder layer recorded through the shared block ([`EncoderLayer`]) against a
//! float64 reference written from the BERT equations (not from the ops), at the published
//! all-MiniLM-L6-v2 dimensions with random weights: on the CPU backend and on WebGPU
//! (Mesa's lavapipe: no adapter is a failure, not a skip), with f32 and int8 weights,
//! bidirectional attention over every row and over the first rows of a padded input.
//!
//! This is the evidence that the op set serves encoders without backend methods of their own.

use lowbit_core::ops::{erf, Activation, Mask, NormKind};
use lowbit_core::quant::quantize;
use lowbit_core::{block_on, Backend, DType, QuantSpec, Scheme, WeightMatrix};
use lowbit_cpu::CpuBackend;
use lowbit_models::blocks::{Affine, EncoderLayer, EncoderLayerBuffers, Norm};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// all-MiniLM-L6-v2: hidden 384, 12 heads of 32, feed-forward 1536, LayerNorm eps 1e-12.
const DIM: usize = 384;
const HEADS: usize = 12;
const HEAD_DIM: usize = 32;
const FFN: usize = 1536;
const EPS: f64 = 1e-12;
/// Tokens of the input (a short sentence).
const SEQ: usize = 9;

/// A linear map `y = x·Wᵀ + b` with `W` as the backend holds it (int8 weights dequantized), so
/// the reference checks the ops, not the weight format.
struct Linear {
    rows: usize,
    cols: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    upload: WeightMatrix,
}

impl Linear {
    fn random(rng: &mut StdRng, rows: usize, cols: usize, int8: bool) -> Self {
        let a = 1.0 / (cols as f32).sqrt();
        let data: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-a..a)).collect();
        let b = (0..rows).map(|_| rng.gen_range(-0.1..0.1)).collect();
        let (w, upload) = if int8 {
            let spec = QuantSpec::new(8, 32, Scheme::Symmetric).expect("int8 spec");
            let q = quantize(&data, rows, cols, spec).expect("quantize");
            (q.dequantize(), WeightMatrix::Quantized(q))
        } else {
            let upload = WeightMatrix::F32 {
                rows,
                cols,
                data: data.clone(),
            };
            (data, upload)
        };
        Linear {
            rows,
            cols,
            w,
            b,
            upload,
        }
    }

    /// `x` holds `n × cols` values.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let n = x.len() / self.cols;
        let mut y = vec![0.0; n * self.rows];
        for t in 0..n {
            let xr = &x[t * self.cols..(t + 1) * self.cols];
            for r in 0..self.rows {
                let wr = &self.w[r * self.cols..(r + 1) * self.cols];
                let dot: f64 = xr.iter().zip(wr).map(|(a, &b)| a * b as f64).sum();
                y[t * self.rows + r] = dot + self.b[r] as f64;
            }
        }
        y
    }
}

/// LayerNorm parameters: `γ` near 1, `β` near 0.
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl LayerNorm {
    fn random(rng: &mut StdRng) -> Self {
        LayerNorm {
            gamma: (0..DIM).map(|_| 1.0 + rng.gen_range(-0.2..0.2)).collect(),
            beta: (0..DIM).map(|_| rng.gen_range(-0.2..0.2)).collect(),
        }
    }

    /// `(x − mean) / sqrt(var + eps) · γ + β` per row, biased variance.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks_exact(DIM) {
            let mean = row.iter().sum::<f64>() / DIM as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / DIM as f64;
            let inv = 1.0 / (var + EPS).sqrt();
            for (j, v) in row.iter().enumerate() {
                y.push((v - mean) * inv * self.gamma[j] as f64 + self.beta[j] as f64);
            }
        }
        y
    }
}

/// The weights of one BERT layer.
struct Weights {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: LayerNorm,
    up: Linear,
    down: Linear,
    ln2: LayerNorm,
}

impl Weights {
    fn random(seed: u64, int8: bool) -> Self {
        let rng = &mut StdRng::seed_from_u64(seed);
        Weights {
            q: Linear::random(rng, DIM, DIM, int8),
            k: Linear::random(rng, DIM, DIM, int8),
            v: Linear::random(rng, DIM, DIM, int8),
            out: Linear::random(rng, DIM, DIM, int8),
            ln1: LayerNorm::random(rng),
            up: Linear::random(rng, FFN, DIM, int8),
            down: Linear::random(rng, DIM, FFN, int8),
            ln2: LayerNorm::random(rng),
        }
    }
}

/// BERT's layer in f64: multi-head self-attention where query `i` sees keys `0 .. valid`,
/// `h = LN(x + attn·Wo + bo)`, `out = LN(h + GELU(h·Wup + bup)·Wdown + bdown)` with the exact
/// (erf) GELU.
fn reference(w: &Weights, x: &[f32], valid: usize) -> Vec<f64> {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (q, k, v) = (w.q.apply(&x), w.k.apply(&x), w.v.apply(&x));
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let mut att = vec![0.0; SEQ * DIM];
    for i in 0..SEQ {
        for h in 0..HEADS {
            let qi = &q[i * DIM + h * HEAD_DIM..][..HEAD_DIM];
            let scores: Vec<f64> = (0..valid)
                .map(|j| {
                    let kj = &k[j * DIM + h * HEAD_DIM..][..HEAD_DIM];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (j, p) in e.iter().enumerate() {
                for d in 0..HEAD_DIM {
                    att[i * DIM + h * HEAD_DIM + d] += p / sum * v[j * DIM + h * HEAD_DIM + d];
                }
            }
        }
    }
    let a = w.out.apply(&att);
    let h1 = w
        .ln1
        .apply(&x.iter().zip(&a).map(|(x, a)| x + a).collect::<Vec<_>>());
    let gelu = |z: f64| 0.5 * z * (1.0 + erf(z / std::f64::consts::SQRT_2));
    let f: Vec<f64> = w.up.apply(&h1).into_iter().map(gelu).collect();
    let d = w.down.apply(&f);
    w.ln2
        .apply(&h1.iter().zip(&d).map(|(h, d)| h + d).collect::<Vec<_>>())
}

/// Records the layer through the shared block on `backend` and returns its output rows.
fn run_block(backend: &dyn Backend, w: &Weights, x: &[f32], mask: Mask) -> Vec<f32> {
    let affine = |l: &Linear| Affine {
        w: backend
            .upload_weight(l.upload.clone())
            .expect("upload weight"),
        bias: Some(backend.upload(&l.b).expect("upload bias")),
    };
    let layer_norm = |ln: &LayerNorm| Norm {
        kind: NormKind::Layer,
        weight: backend.upload(&ln.gamma).expect("upload gamma"),
        bias: Some(backend.upload(&ln.beta).expect("upload beta")),
        dim: DIM,
        eps: EPS as f32,
    };
    let layer = EncoderLayer {
        q: affine(&w.q),
        k: affine(&w.k),
        v: affine(&w.v),
        out: affine(&w.out),
        attn_norm: layer_norm(&w.ln1),
        up: affine(&w.up),
        down: affine(&w.down),
        ffn_norm: layer_norm(&w.ln2),
        act: Activation::Gelu,
        n_heads: HEADS,
        head_dim: HEAD_DIM,
        ffn_dim: FFN,
    };
    let bufs = EncoderLayerBuffers {
        x: backend.upload(x).expect("upload x"),
        q: backend.alloc_scratch(SEQ * DIM).expect("alloc"),
        k: backend.alloc(DType::F32, SEQ * DIM).expect("alloc"),
        v: backend.alloc(DType::F32, SEQ * DIM).expect("alloc"),
        att: backend.alloc_scratch(SEQ * DIM).expect("alloc"),
        ff: backend.alloc_scratch(SEQ * FFN).expect("alloc"),
    };
    let mut ops = Vec::new();
    layer.record(&mut ops, &bufs, SEQ, mask);
    backend.run(&ops).expect("run the encoder layer");
    block_on(backend.read(bufs.x, 0, SEQ * DIM)).expect("read")
}

/// Normalised mean squared error of `got` against `want`.
fn nmse(got: &[f32], want: &[f64]) -> f64 {
    nmse_f64(&got.iter().map(|&g| g as f64).collect::<Vec<_>>(), want)
}

fn nmse_f64(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    err / norm
}

/// Runs every case on `backend`: f32 and int8 weights, all rows visible and a padded input
/// whose last 3 rows are padding. `tol_f32`/`tol_int8` bound the NMSE.
fn check(name: &str, backend: &dyn Backend, tol_f32: f64, tol_int8: f64) {
    let mut rng = StdRng::seed_from_u64(17);
    let x: Vec<f32> = (0..SEQ * DIM).map(|_| rng.gen_range(-1.0..1.0)).collect();
    for (int8, tol) in [(false, tol_f32), (true, tol_int8)] {
        let w = Weights::random(7, int8);
        // The padded case can only pass by honouring the mask: its reference is far from the
        // unmasked one.
        let apart = nmse_f64(&reference(&w, &x, 6), &reference(&w, &x, SEQ));
        assert!(
            apart > 1e-3,
            "the masks give near-equal references ({apart:.1e})"
        );
        for (mask, valid) in [(Mask::None, SEQ), (Mask::Padding { valid: 6 }, 6)] {
            let got = run_block(backend, &w, &x, mask);
            let want = reference(&w, &x, valid);
            let e = nmse(&got, &want);
            let weights = if int8 { "int8" } else { "f32" };
            println!("{name} {weights} weights, {mask:?}: NMSE {e:.3e} (tolerance {tol:.0e})");
            assert!(
                e.is_finite() && e <= tol,
                "{name} {weights} {mask:?}: NMSE {e:.3e} > {tol:.0e}"
            );
        }
    }
}

#[test]
fn encoder_layer_matches_bert_on_cpu() {
    let cpu = CpuBackend::new(2).expect("CPU backend");
    // int8 weights multiply int8-quantized activation blocks on the CPU (the fast path).
    check("cpu", &cpu, 1e-9, 1e-4);
    let exact = CpuBackend::new(2)
        .expect("CPU backend")
        .exact_activations(true);
    check("cpu exact-activations", &exact, 1e-9, 1e-9);
}

#[test]
fn encoder_layer_matches_bert_on_webgpu() {
    let gpu = WgpuBackend::new(&WgpuOptions::software())
        .expect("a software WebGPU adapter (install mesa-vulkan-drivers)");
    // Measured on lavapipe (2026-12-03): 4.7e-9 (f32 weights), 2.1e-8 (int8 weights; 8-bit
    // activation blocks on the wide matvec), f16 arithmetic where the adapter has it.
    check("webgpu", &gpu, 1e-6, 1e-6);
}
