//! NMSE tolerances per op family (`Σ(out − ref)² / Σ ref²`, llama.cpp `test-backend-ops` style).

/// Ops that move or convert values without arithmetic that rounds beyond one f32 operation
/// (copy, embed, im2col, KV write, f16 storage): a correct backend is within a few f32 ulps
/// (NMSE ≈ 1e-15); a wrong index or offset moves whole values (NMSE ≈ 1).
pub const DATA: f64 = 1e-10;

/// Ops computed in f32 (norms, activations, GLU, RoPE, softmax, attention, add): f32 rounding
/// and a GPU's approximate `exp`/`tanh` (relative error ≈ 1e-6) keep NMSE below ≈ 1e-11; RoPE
/// angles computed in f32 at positions in the tens add ≈ 1e-10. llama.cpp's default 1e-7.
pub const F32_MATH: f64 = 1e-7;

/// Values stored as int8 blocks of 32 (`DType::Q8Block`): each value is off by at most half a
/// step of `max|block| / 127`, so for uniform random data NMSE ≈ (1/127)² / 12 / (1/3) ≈ 1.6e-5
/// when a backend rounds differently on ties; a correct round trip matching the reference's
/// rounding is ≈ 0.
pub const Q8_STORAGE: f64 = 1e-4;

/// Op lists with a [`crate::ops::Op::Linear`] (alone or in the pairs a backend fuses). A backend may quantize the activations to
/// int8 blocks of 32 on the fly (the CPU backend unless `exact_activations`, the WebGPU decode
/// matvec): each activation is then off by up to half a step of `max|block| / 127`, an error
/// of variance ≈ step²/12 per value, which for Gaussian-like activations (block max ≈ 2.5σ)
/// gives NMSE ≈ (2.5/127)²/12 ≈ 3e-5 per linear, a few times that after a GLU whose
/// heavy-tailed products widen the blocks (the CPU backend: at most 1.1e-4 on these cases).
/// 1e-3 leaves a margin of ten and more; a real
/// bug — a wrong weight row, a wrong group scale or offset, a dropped or doubled bias, a
/// missing accumulate — changes outputs by their own size (NMSE ≳ 0.05), orders of magnitude
/// above it. With exact f32 activations a correct backend is near 1e-13.
pub const LINEAR: f64 = 1e-3;

/// Whole model steps (two LLaMA layers, greedy decode steps): four linears a layer each add
/// the int8 activation error of [`LINEAR`], and RMSNorm, attention's softmax and the SwiGLU
/// product carry relative errors on to the next op, so a backend that quantizes activations
/// lands near 1e-4 … 2e-3 (the CPU backend: at most 1.6e-3 on these cases). A fusion bug — a
/// skipped write, a wrong buffer or view, a position off by one — changes a layer's output by
/// NMSE ≳ 0.1, still ten times and more above this.
pub const MODEL: f64 = 1e-2;
