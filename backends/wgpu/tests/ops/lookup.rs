//! Argmax (ties, NaN, -inf, multi-pass lengths), embedding lookups from host and device ids,
//! and a read pipelined behind later work.

use crate::calls::Calls;
use crate::{backend, rand_vec};
use lowbit_core::future::block_on;
use lowbit_core::quant::quantize;
use lowbit_core::{Backend, QuantSpec, Scheme, WeightMatrix};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn argmax_and_indirect_embedding() {
    let mut rng = StdRng::seed_from_u64(17);
    let b = backend(false, false);
    // Ties go to the first index; NaN and -inf never win; all -inf/NaN gives 0 (the host rule).
    let big = rand_vec(&mut rng, 50_001);
    let mut cases: Vec<Vec<f32>> = vec![
        big.clone(),
        vec![0.1, 3.0, 3.0, -1.0],
        vec![f32::NAN, -5.0, f32::NAN, -4.0, -4.0],
        vec![f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
        vec![-f32::MAX, f32::NEG_INFINITY],
        vec![2.0; 777],
        // Longer than one argmax workgroup's span (1024): two passes, ties and NaN across
        // workgroups.
        vec![2.0; 3000],
        (0..2500)
            .map(|i| {
                if i % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect(),
        (0..2049).map(|i| i as f32 * 1e-3).collect(),
    ];
    let mut tied = big;
    tied[40_000] = 5.0;
    tied[45_000] = 5.0;
    cases.push(tied);
    let out = b.upload(&[9.0, 9.0, 9.0]).unwrap();
    for (i, v) in cases.iter().enumerate() {
        let x = b.upload(v).unwrap();
        b.argmax(x, v.len(), out, 1).unwrap();
        let got = b.read_now(out, 0, 3).unwrap();
        assert_eq!(got[1], lowbit_core::generate::argmax(v) as f32, "case {i}");
        assert_eq!(
            (got[0], got[2]),
            (9.0, 9.0),
            "case {i}: neighbours untouched"
        );
    }
    assert!(b.argmax(out, 3, out, 0).is_err());
    let kernels = b.compiled_kernels();
    for pass in [
        "PARTIAL=1,PAIRS=0",
        "PARTIAL=0,PAIRS=1",
        "PARTIAL=0,PAIRS=0",
    ] {
        assert!(
            kernels
                .iter()
                .any(|k| k.starts_with("argmax[") && k.contains(pass)),
            "argmax {pass} not compiled: {kernels:?}"
        );
    }

    // embed_indirect reads ids from a device buffer and equals embed of the same ids.
    let (rows, cols) = (300, 96);
    let dense = rand_vec(&mut rng, rows * cols);
    let spec = QuantSpec::new(4, 32, Scheme::Symmetric).unwrap();
    let table = b
        .upload_weight(WeightMatrix::Quantized(
            quantize(&dense, rows, cols, spec).unwrap(),
        ))
        .unwrap();
    let toks = [7u32, 299, 0];
    let ids = b.upload(&[5.0, 7.0, 299.0, 0.0]).unwrap();
    let (direct, indirect) = (
        b.alloc_f32(3 * cols).unwrap(),
        b.alloc_f32(3 * cols).unwrap(),
    );
    b.embed(table, &toks, direct).unwrap();
    b.embed_indirect(table, ids, 1, 3, indirect).unwrap();
    assert_eq!(
        b.read_now(indirect, 0, 3 * cols).unwrap(),
        b.read_now(direct, 0, 3 * cols).unwrap()
    );
    assert!(b.embed_indirect(table, ids, 2, 3, indirect).is_err());

    // A pipelined read: started, more work recorded, then redeemed.
    let pending = lowbit_core::Backend::read(&b, ids, 1, 2);
    b.argmax(ids, 4, out, 0).unwrap();
    assert_eq!(block_on(pending).unwrap(), vec![7.0, 299.0]);
    assert_eq!(b.read_now(out, 0, 1).unwrap(), vec![2.0]);
}
