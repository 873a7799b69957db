//! Every built-in profile applied to the WebGPU backend on lavapipe (which has `SHADER_F16` and
//! `SUBGROUP`): a representative subset of the kernel suite — quantized matmul at every bit
//! width (matvec and tiled), attention (decode splits and prefill), RMSNorm — passes under
//! each profile's workgroup sizes, and a profile that forbids f16 or subgroups builds no
//! kernel using them.

mod calls;
mod reference;

use calls::{AttentionParams, Calls};
use lowbit_core::quant::quantize;
use lowbit_core::registry::{find_profile, profile_names};
use lowbit_core::{Backend, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PROFILES: [&str; 6] = ["chrome", "edge", "firefox", "safari", "mobile", "native"];

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn backend(profile: &str) -> WgpuBackend {
    let p = find_profile(profile).unwrap();
    WgpuBackend::new(&WgpuOptions::software().with_profile(p.as_ref()))
        .expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
}

fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            assert!(g.is_finite());
            (g - w).abs()
        })
        .fold(0.0, f32::max)
}

/// The kernels of the subset on `b`; returns the compiled kernel labels.
fn run_subset(b: &WgpuBackend, name: &str) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, cols) = (67usize, 576usize);
    let w = rand_vec(&mut rng, rows * cols);
    // Same bounds as tests/ops/main.rs (`matmul_tol`): relative to Σ|w·x|; f16 kernels round to 11-bit mantissas.
    let tol = if b.paths().f16 { 4e-3 } else { 1e-5 };
    for bits in [8u8, 4, 3, 2] {
        for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
            let q = quantize(&w, rows, cols, QuantSpec::new(bits, 64, scheme).unwrap()).unwrap();
            let dense = q.dequantize();
            let id = b.upload_weight(WeightMatrix::Quantized(q)).unwrap();
            for n in [1usize, 17] {
                let xv = rand_vec(&mut rng, n * cols);
                let (x, out) = (b.upload(&xv).unwrap(), b.alloc_f32(n * rows).unwrap());
                b.matmul(id, x, out, n).unwrap();
                let got = b.read_now(out, 0, n * rows).unwrap();
                let (want, mag) = reference::matmul(&dense, rows, cols, &xv, n);
                let err = got
                    .iter()
                    .zip(&want)
                    .zip(&mag)
                    .map(|((g, w), m)| (g - w).abs() / (m + 1e-3))
                    .fold(0.0f32, f32::max);
                assert!(err < tol, "{name}: {bits}-bit {scheme:?} n={n}: {err}");
            }
        }
    }
    for (n_tokens, pos0) in [(1usize, 300usize), (19, 0)] {
        let p = AttentionParams {
            n_tokens,
            pos0,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            scale: 0.125,
        };
        let kv = (pos0 + n_tokens) * 3 * 64;
        let qv: Vec<f32> = rand_vec(&mut rng, n_tokens * 9 * 64)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let (kvv, vvv) = (rand_vec(&mut rng, kv), rand_vec(&mut rng, kv));
        let want = reference::attention(&qv, &kvv, &vvv, &p);
        let (q, k, v) = (
            b.upload(&qv).unwrap(),
            b.upload(&kvv).unwrap(),
            b.upload(&vvv).unwrap(),
        );
        let out = b.alloc_f32(qv.len()).unwrap();
        b.attention(q, k, v, out, &p).unwrap();
        // Convex combinations of values in [-1, 1]: 2e-5 absolute, as in tests/ops/epilogues.rs.
        let err = max_abs(&b.read_now(out, 0, qv.len()).unwrap(), &want);
        assert!(err < 2e-5, "{name}: attention {n_tokens}@{pos0}: {err}");
    }
    let (r, dim) = (3usize, 1000usize);
    let xv = rand_vec(&mut rng, r * dim);
    let wv = rand_vec(&mut rng, dim);
    let (x, wb, out) = (
        b.upload(&xv).unwrap(),
        b.upload(&wv).unwrap(),
        b.alloc_f32(r * dim).unwrap(),
    );
    b.rms_norm(x, wb, out, r, dim, 1e-5).unwrap();
    let err = max_abs(
        &b.read_now(out, 0, r * dim).unwrap(),
        &reference::rms_norm(&xv, &wv, dim, 1e-5),
    );
    assert!(err < 1e-5, "{name}: rms_norm {err}");
    b.compiled_kernels()
}

#[test]
fn kernel_subset_passes_under_every_profile() {
    assert_eq!(profile_names(), {
        let mut v: Vec<String> = PROFILES.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });
    for name in PROFILES {
        let p = find_profile(name).unwrap();
        let b = backend(name);
        let k = run_subset(&b, name);
        let paths = b.paths();
        eprintln!("{name}: {paths:?}, {} kernels", k.len());
        if !p.allow_f16() {
            assert!(!paths.f16, "{name} forbids f16");
            assert!(k.iter().all(|l| !l.contains("USE_F16=1")), "{name}: {k:?}");
        }
        if !p.allow_subgroups() {
            assert!(!paths.subgroups, "{name} forbids subgroups");
            assert!(
                k.iter().all(|l| l.contains("USE_SUBGROUPS=0")),
                "{name}: {k:?}"
            );
        }
        // The (narrow) matvec kernels run the profile's matmul workgroup (x·y lanes), raised
        // to 128 where the profile asks for 64 or more (see `Tuning::narrow_shape`).
        let (x, y) = p.matmul_workgroup();
        let want = if x * y >= 64 { (x * y).max(128) } else { x * y };
        let lanes = format!("WORKGROUP_SIZE={want}");
        assert!(
            k.iter()
                .any(|l| l.starts_with("matvec[") && l.contains(&lanes)),
            "{name}: no matvec with {lanes}: {k:?}"
        );
    }
}

#[test]
fn chrome_and_safari_compile_different_kernels() {
    let chrome = run_subset(&backend("chrome"), "chrome");
    let safari = run_subset(&backend("safari"), "safari");
    assert_ne!(chrome, safari);
    // lavapipe has both features: chrome uses them, safari must not.
    let probe = WgpuBackend::new(&WgpuOptions::software()).unwrap().paths();
    if probe.subgroups {
        assert!(chrome.iter().any(|l| l.contains("USE_SUBGROUPS=1")));
    }
    if probe.f16 {
        assert!(chrome.iter().any(|l| l.contains("USE_F16=1")));
    }
    assert!(safari
        .iter()
        .all(|l| l.contains("USE_SUBGROUPS=0") && !l.contains("USE_F16=1")));
    assert!(safari.iter().any(|l| l.contains("WORKGROUP_SIZE=16")));
}

/// Only the native profile lets prefill use cooperative matrices (tensor cores): the browser
/// profiles forbid them, as no browser's WebGPU has them.
#[test]
fn only_native_allows_cooperative_matrices() {
    for name in PROFILES {
        let p = find_profile(name).unwrap();
        let o = WgpuOptions::default().with_profile(p.as_ref());
        let want = if name == "native" { None } else { Some(false) };
        assert_eq!(o.coop_matrix, want, "{name}");
    }
}
