//! The backend as a device: a step is one submission (or several when split), errors are
//! typed, automatic selection skips software adapters, and profiling counts kernels.

use crate::calls::Calls;
use crate::{backend, rand_vec};
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, ErrorCode, QuantSpec, Scheme, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A tiny decode-like step (embed, norm, residual, norm, output matmul) on `b`: the logits,
/// the submissions made while recording, and the submissions in all.
fn tiny_step(b: &WgpuBackend) -> (Vec<f32>, u64, u64) {
    let mut rng = StdRng::seed_from_u64(8);
    let (vocab, dim) = (70, 64);
    let table = b
        .upload_weight(WeightMatrix::Quantized(
            quantize(
                &rand_vec(&mut rng, vocab * dim),
                vocab,
                dim,
                QuantSpec::new(4, 32, Scheme::Symmetric).unwrap(),
            )
            .unwrap(),
        ))
        .unwrap();
    let wn = b.upload(&vec![1.0; dim]).unwrap();
    let (x, h, logits) = (
        b.alloc_f32(dim).unwrap(),
        b.alloc_f32(dim).unwrap(),
        b.alloc_f32(vocab).unwrap(),
    );
    let before = b.submits();
    b.embed(table, &[5], x).unwrap();
    b.rms_norm(x, wn, h, 1, dim, 1e-5).unwrap();
    b.add(x, h, dim).unwrap();
    b.rms_norm(x, wn, h, 1, dim, 1e-5).unwrap();
    b.matmul(table, h, logits, 1).unwrap();
    let recording = b.submits() - before;
    let l = b.read_now(logits, 0, vocab).unwrap();
    (l, recording, b.submits() - before)
}

#[test]
fn a_step_is_one_submission() {
    let (l, recording, submits) = tiny_step(&backend(false, false));
    assert_eq!(recording, 0, "recording must not submit");
    assert_eq!(submits, 1);
    assert!(l.iter().all(|v| v.is_finite()));
}

#[test]
fn errors_are_typed() {
    let b = backend(false, false);
    let e = b.alloc_f32(usize::MAX / 8).unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfMemory);
    assert!(e.message.contains("bytes"), "{e}");
    let x = b.alloc_f32(4).unwrap();
    assert_eq!(
        b.read_now(x, 2, 4).unwrap_err().code,
        ErrorCode::InvalidConfig
    );
    b.free(x);
    assert_eq!(
        b.read_now(x, 0, 1).unwrap_err().code,
        ErrorCode::InvalidConfig
    );
    // Dense matrices of any width upload (padded to whole blocks); an empty one does not.
    let e = b
        .upload_weight(WeightMatrix::F32 {
            rows: 0,
            cols: 20,
            data: Vec::new(),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedModel);
}

#[test]
fn auto_selection_skips_software_adapters() {
    // With the default switches (no allow_software_adapter) lavapipe is not eligible; CI's
    // machine has no GPU, so the answer is either a hardware adapter or "not supported".
    match WgpuBackend::new(&WgpuOptions::from_tuning(&Default::default())) {
        Ok(b) => assert!(
            !b.info().device.contains("Cpu"),
            "picked {}",
            b.info().device
        ),
        Err(e) => assert_eq!(e.code, ErrorCode::WebgpuNotSupported),
    }
}

#[test]
fn profiling_counts_kernels_when_supported() {
    let b = match WgpuBackend::new(&WgpuOptions {
        profiling: true,
        ..WgpuOptions::software()
    }) {
        Ok(b) => b,
        // Lavapipe versions without timestamp queries refuse with a typed error.
        Err(e) => {
            eprintln!("no timestamp queries: {e}");
            return assert_eq!(e.code, ErrorCode::WebgpuNotSupported);
        }
    };
    let x = b.upload(&[1.0; 300]).unwrap();
    b.add(x, x, 300).unwrap();
    b.add(x, x, 300).unwrap();
    assert_eq!(b.read_now(x, 0, 1).unwrap(), vec![4.0]);
    let t = b.kernel_timings().expect("profiling on");
    // The two adds, and the one gap between them (barrier and launch).
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(
        t.iter()
            .any(|k| k.kernel.starts_with("add[") && k.count == 2),
        "{t:?}"
    );
    assert!(
        t.iter()
            .any(|k| k.kernel.starts_with("(between kernels") && k.count == 1),
        "{t:?}"
    );
}

/// A step split into submissions of at most two dispatches (`dispatches_per_submit`) computes
/// the same values as one submission, and does submit several times.
#[test]
fn split_submissions_compute_the_same_step() {
    let split = WgpuBackend::new(&WgpuOptions {
        dispatches_per_submit: Some(2),
        ..WgpuOptions::software()
    })
    .unwrap();
    let (one, _, n1) = tiny_step(&WgpuBackend::new(&WgpuOptions::software()).unwrap());
    let (many, _, n2) = tiny_step(&split);
    assert_eq!(n1, 1);
    assert!(n2 >= 3, "{n2} submissions");
    assert_eq!(one, many);
}
