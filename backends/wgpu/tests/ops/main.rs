//! Every WebGPU kernel against a scalar f64-accumulating reference, on Mesa's lavapipe (CI
//! installs mesa-vulkan-drivers; no adapter is a failure, not a skip). Sizes are deliberately
//! not multiples of the workgroup or tile sizes. Each kernel path the adapter supports (f32 /
//! f16 matmul, subgroup / workgroup-memory reductions) runs the same cases.
//!
//! One test binary (lavapipe compiles each kernel once per process), a module per topic;
//! this file holds what they share: the backends on each kernel path, error measures and the
//! matmul check.

#[path = "../reference/mod.rs"]
mod reference;

#[path = "../calls/mod.rs"]
mod calls;

mod device;
mod epilogues;
mod grid;
mod lookup;
mod matmul;
mod prefill;
mod rope;

use calls::Calls;
use lowbit_core::{Backend, WeightMatrix};
use lowbit_wgpu::{KernelPaths, WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn backend(f16: bool, subgroups: bool) -> WgpuBackend {
    backend_with(f16, subgroups, false)
}

fn backend_with(f16: bool, subgroups: bool, wide_matvec: bool) -> WgpuBackend {
    WgpuBackend::new(&WgpuOptions {
        f16: Some(f16),
        subgroups: Some(subgroups),
        wide_matvec,
        // The wide variants also fuse an RMSNorm into any narrow matvec they run.
        fused_norm: wide_matvec,
        ..WgpuOptions::software()
    })
    .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
}

/// A backend on the adapter's own kernel paths with these decode matvec options.
fn matvec_backend(wide_matvec: bool, fused_norm: bool) -> WgpuBackend {
    WgpuBackend::new(&WgpuOptions {
        wide_matvec,
        fused_norm,
        ..WgpuOptions::software()
    })
    .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
}

/// Every kernel path the adapter supports, each as its own backend.
fn variants() -> Vec<WgpuBackend> {
    variants_with(false)
}

fn variants_with(wide_matvec: bool) -> Vec<WgpuBackend> {
    let auto = WgpuBackend::new(&WgpuOptions::software())
        .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
        .paths();
    let mut v = Vec::new();
    for f16 in [false, true] {
        for sg in [false, true] {
            if (!f16 || auto.f16) && (!sg || auto.subgroups) {
                let b = backend_with(f16, sg, wide_matvec);
                assert_eq!(b.paths(), KernelPaths { f16, subgroups: sg });
                v.push(b);
            }
        }
    }
    eprintln!("adapter paths: {auto:?}; testing {} variants", v.len());
    v
}

/// Largest `|got - want| / (mag + floor)` over the outputs.
fn max_rel(got: &[f32], want: &[f32], mag: &[f32], floor: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .zip(mag)
        .map(|((g, w), m)| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g - w).abs() / (m + floor)
        })
        .fold(0.0, f32::max)
}

fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g - w).abs()
        })
        .fold(0.0, f32::max)
}

/// Matmul error bound relative to Σ|w·x| of the output. f32: summation order differs from the
/// reference, a few ulps per term at most (1e-5 covers 1536 terms with margin). f16: weights
/// and activations are rounded to 11-bit mantissas and 4-term dots summed in f16, so each product
/// carries ~1e-3 relative error.
fn matmul_tol(b: &WgpuBackend) -> f32 {
    if b.paths().f16 {
        4e-3
    } else {
        1e-5
    }
}

fn check_matmul(
    b: &WgpuBackend,
    w: WeightMatrix,
    dense: &[f32],
    rows: usize,
    cols: usize,
    what: &str,
) {
    let mut rng = StdRng::seed_from_u64(rows as u64 * 31 + cols as u64);
    let id = b.upload_weight(w).unwrap();
    for n in [1usize, 3, 17, 64] {
        let xv = rand_vec(&mut rng, n * cols);
        let x = b.upload(&xv).unwrap();
        let out = b.alloc_f32(n * rows).unwrap();
        b.matmul(id, x, out, n).unwrap();
        let got = b.read_now(out, 0, n * rows).unwrap();
        let (want, mag) = reference::matmul(dense, rows, cols, &xv, n);
        let err = max_rel(&got, &want, &mag, 1e-3);
        assert!(
            err < matmul_tol(b),
            "{what} n={n} {:?}: relative error {err}",
            b.paths()
        );
        // matmul_add: the same sums added to what `out` held (the fused residual epilogue).
        let base = rand_vec(&mut rng, n * rows);
        b.write(out, 0, &base).unwrap();
        b.matmul_add(id, x, out, n).unwrap();
        let summed = b.read_now(out, 0, n * rows).unwrap();
        for ((s, g), r) in summed.iter().zip(&got).zip(&base) {
            assert!(
                (s - (g + r)).abs() <= 1e-6 * (1.0 + g.abs() + r.abs()),
                "{what} n={n} matmul_add: {s} vs {g} + {r}"
            );
        }
        b.free(x);
        b.free(out);
    }
}

/// `matmul_add` of `n` token rows `xv` into an output filled with 0.5; returns the sums (the
/// output less 0.5).
fn matmul_add_to_half(
    b: &WgpuBackend,
    id: lowbit_core::WeightId,
    xv: &[f32],
    n: usize,
    rows: usize,
) -> Vec<f32> {
    let x = b.upload(xv).unwrap();
    let out = b.upload(&vec![0.5; n * rows]).unwrap();
    b.matmul_add(id, x, out, n).unwrap();
    let got = b
        .read_now(out, 0, n * rows)
        .unwrap()
        .iter()
        .map(|v| v - 0.5)
        .collect();
    b.free(x);
    b.free(out);
    got
}
