//! Tests of the suite itself: the reference on hand-computed values, and the tolerances
//! against the bugs they are meant to catch.

use super::reference::{self, argmax, stored};
use super::*;
use crate::backend::{BufferId, DType, WeightId, WeightMatrix};
use crate::kv::KvView;
use crate::ops::{AttentionShape, Mask, NormKind};

fn as_f32(v: &[Vec<f64>]) -> Vec<Vec<f32>> {
    v.iter()
        .map(|r| r.iter().map(|&x| x as f32).collect())
        .collect()
}

fn row(case: &Case, got: &[Vec<f32>], want: &[Vec<f64>]) -> CaseResult {
    let mut r = CaseResult {
        op: case.op.clone(),
        shape: case.shape.clone(),
        format: case.format.clone(),
        backend: "test".into(),
        nmse: 0.0,
        tolerance: case.tolerance,
        passed: false,
        error: None,
    };
    compare(case, got, want, &mut r);
    r
}

/// The reference rounded to f32 passes every case; the bugs the linear tolerance is meant to
/// catch (a dropped bias, a wrong group scale, a swapped output row) fail by orders of
/// magnitude.
#[test]
fn tolerances_pass_the_reference_and_fail_real_bugs() {
    let all = cases();
    assert!(all.len() > 100);
    for case in &all {
        let want = reference::run(case).unwrap();
        let r = row(case, &as_f32(&want), &want);
        assert!(
            r.passed,
            "{} {} {}: {}",
            case.op, case.shape, case.format, r.nmse
        );
    }
    let linear = |f: &str| {
        all.iter()
            .find(|c| c.op == "linear" && c.format == f && c.shape.contains("+bias"))
            .unwrap()
            .clone()
    };
    let case = linear("q4_sym_g32");
    let want = reference::run(&case).unwrap();
    let fails_by = |bad: &Case, factor: f64| {
        let got = as_f32(&reference::run(bad).unwrap());
        let r = row(&case, &got, &want);
        assert!(r.nmse > factor * case.tolerance, "{} ≤ {factor}×", r.nmse);
    };
    let mut no_bias = case.clone();
    if let Op::Linear { bias, .. } = &mut no_bias.ops[0] {
        *bias = None;
    }
    fails_by(&no_bias, 100.0);
    let mut scaled = case.clone();
    if let WeightMatrix::Quantized(q) = &mut scaled.weights[0] {
        // Group 1 of every row scaled by 1.5, as a kernel reading the wrong scale would.
        let groups = q.groups_per_row();
        for s in q.scales.iter_mut().skip(1).step_by(groups) {
            *s = half::f16::from_f32(s.to_f32() * 1.5);
        }
    }
    fails_by(&scaled, 10.0);
    let mut swapped = case.clone();
    if let WeightMatrix::Quantized(q) = &mut swapped.weights[0] {
        let w = q.row_words();
        let (a, b) = q.data.split_at_mut(w);
        a.swap_with_slice(&mut b[..w]);
    }
    fails_by(&swapped, 100.0);
}

/// The rotated formats make matrices in a rotated basis (not the empty f32 stand-in of a
/// refused shape), with every block from 32 to 4096 the cases promise; a backend that ignored
/// the rotation (multiplying the stored rows of `W Rᵀ` with unrotated inputs) fails by far.
#[test]
fn rotated_cases_carry_their_rotation_and_catch_a_missing_one() {
    let all = cases();
    let mut blocks = std::collections::BTreeSet::new();
    for case in all.iter().filter(|c| c.format.contains("_rot")) {
        for w in &case.weights {
            let WeightMatrix::Quantized(q) = w else {
                panic!("{} {}: not quantized", case.op, case.shape);
            };
            let r = q.rotation.expect("a rotation");
            blocks.insert(r.block);
        }
    }
    for b in [32, 64, 128, 256, 512, 2048, 4096] {
        assert!(
            blocks.contains(&b),
            "no case with a block of {b}: {blocks:?}"
        );
    }
    for (op, shape) in [("linear", "5x576 n=1"), ("embed", "11x96 ids=[3,0,10,3]")] {
        let case = all
            .iter()
            .find(|c| c.op == op && c.shape.starts_with(shape) && c.format.contains("_rot"))
            .unwrap_or_else(|| panic!("no rotated {op} {shape}"));
        let want = reference::run(case).unwrap();
        let mut unrotated = case.clone();
        if let WeightMatrix::Quantized(q) = &mut unrotated.weights[0] {
            q.rotation = None;
        }
        let got = as_f32(&reference::run(&unrotated).unwrap());
        let r = row(case, &got, &want);
        assert!(r.nmse > 100.0 * case.tolerance, "{op}: {}", r.nmse);
    }
}

fn f32_buf(data: Vec<f32>) -> BufferInit {
    BufferInit {
        dtype: DType::F32,
        len: data.len(),
        data: Some(data),
        scratch: false,
    }
}

fn case(buffers: Vec<BufferInit>, weights: Vec<WeightMatrix>, ops: Vec<Op>, out: usize) -> Case {
    let len = buffers[out].len;
    Case {
        op: "t".into(),
        shape: String::new(),
        format: String::new(),
        tolerance: 0.0,
        buffers,
        weights,
        ops,
        checks: vec![Check {
            buf: out,
            offset: 0,
            len,
            kind: CheckKind::Values,
        }],
    }
}

fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-7, "{got:?} vs {want:?}");
    }
}

#[test]
fn linear_2x3_with_bias_and_accumulate() {
    // W = [[1, 2, 3], [4, 5, 6]], x = [1, 0, -1] → [-2, -2]; + bias [0.5, -1] + out [10, 20].
    let w = WeightMatrix::F32 {
        rows: 2,
        cols: 3,
        data: vec![1., 2., 3., 4., 5., 6.],
    };
    let ops = vec![Op::Linear {
        w: WeightId(0),
        bias: Some(BufferId(1)),
        x: BufferId(0),
        out: BufferId(2),
        n: 1,
        accumulate: true,
    }];
    let c = case(
        vec![
            f32_buf(vec![1., 0., -1.]),
            f32_buf(vec![0.5, -1.]),
            f32_buf(vec![10., 20.]),
        ],
        vec![w],
        ops,
        2,
    );
    close(&reference::run(&c).unwrap()[0], &[8.5, 17.0]);
}

#[test]
fn layer_norm_row() {
    // x = [1, 2, 3, 4]: mean 2.5, variance 1.25; eps 0; weight 2, bias 1.
    let ops = vec![Op::Norm {
        kind: NormKind::Layer,
        x: BufferId(0),
        out: BufferId(0),
        weight: BufferId(1),
        bias: Some(BufferId(2)),
        rows: 1,
        dim: 4,
        eps: 0.0,
    }];
    let c = case(
        vec![
            f32_buf(vec![1., 2., 3., 4.]),
            f32_buf(vec![2.; 4]),
            f32_buf(vec![1.; 4]),
        ],
        vec![],
        ops,
        0,
    );
    let s = 1.25f64.sqrt();
    let want: Vec<f64> = [-1.5, -0.5, 0.5, 1.5]
        .iter()
        .map(|d| d / s * 2.0 + 1.0)
        .collect();
    close(&reference::run(&c).unwrap()[0], &want);
}

#[test]
fn softmax_row() {
    // softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6.
    let ops = vec![Op::Softmax {
        x: BufferId(0),
        rows: 1,
        len: 3,
    }];
    let c = case(
        vec![f32_buf(vec![0.0, 2f32.ln(), 3f32.ln()])],
        vec![],
        ops,
        0,
    );
    close(
        &reference::run(&c).unwrap()[0],
        &[1. / 6., 2. / 6., 3. / 6.],
    );
}

#[test]
fn causal_mask_averages_the_visible_values() {
    // Zero queries give uniform weights, so query i outputs the mean of values 0..=i.
    let kv = KvView::over(BufferId(1), BufferId(2), 1, 2, 3);
    let ops = vec![Op::Attention {
        q: BufferId(0),
        kv,
        out: BufferId(3),
        shape: AttentionShape {
            n_tokens: 3,
            pos0: 0,
            kv_len: 3,
            n_heads: 1,
            scale: 1.0,
            mask: Mask::Causal,
        },
    }];
    let c = case(
        vec![
            f32_buf(vec![0.0; 6]),
            f32_buf(vec![1.0; 6]),
            f32_buf(vec![3., 6., 6., 0., 0., 3.]),
            f32_buf(vec![0.0; 6]),
        ],
        vec![],
        ops,
        3,
    );
    close(&reference::run(&c).unwrap()[0], &[3., 6., 4.5, 3., 3., 3.]);
}

#[test]
fn argmax_first_on_ties_and_never_nan() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    assert_eq!(argmax(&[f64::NAN, -1.0, f64::NAN]), 1);
    assert_eq!(argmax(&[f64::NAN, f64::NAN]), 0);
}

#[test]
fn q8_storage_rounds_per_block() {
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5; // tie: rounds to even
    x[2] = -3.4;
    let s = stored(DType::Q8Block, &x);
    assert_eq!((s[0], s[1], s[2]), (127.0, 2.0, -3.0));
}
