//! Error-minimising scale (and offset) search for one group.
//!
//! Plain min/max rounding wastes levels on the group's outliers; instead we try a small grid of
//! clipped ranges, refit the scale (and offset) to each candidate's codes by least squares, keep
//! the candidate with the lowest squared error, then round the parameters to f16 and refine with
//! a few refit passes evaluated at the f16 values actually stored. The plain min/max choice is
//! always among the final contenders, so the search is never worse than it on any group.
//!
//! Each candidate costs one pass over the group with eight independent accumulators, so the
//! loops vectorise; about 20 passes per group keep a 135M-parameter model within seconds.

use super::{QuantSpec, Scheme};
use half::f16;

/// Symmetric candidates: clip ratios of max|w| from 1.0 down to 0.5.
const SYM_RATIOS: usize = 16;
/// Asymmetric candidates: fractions of the range cut off at the bottom and at the top (4 × 4).
const ASYM_SHRINK: [f32; 4] = [0.0, 0.06, 0.13, 0.22];
/// Least-squares refit passes at f16 precision after the grid search.
const REFIT_PASSES: usize = 3;
/// Accumulator lanes: independent partial sums let LLVM vectorise the reductions.
const LANES: usize = 8;

/// Quantizes one group with uniform importance: writes `values.len()` codes (each
/// `< 2^spec.bits`) into `codes` and returns `(scale, offset)`, both exactly representable in
/// f16 (`offset` is 0 for [`Scheme::Symmetric`]).
///
/// The codes are the nearest ones for the returned f16 parameters, so dequantizing with them
/// reproduces the error the search minimised. `spec.group_size` is not consulted: the group is
/// `values`.
///
/// # Panics
/// If `codes` is shorter than `values`.
pub fn quantize_group(values: &[f32], spec: &QuantSpec, codes: &mut [u8]) -> (f32, f32) {
    quantize_group_weighted(values, None, spec, codes)
}

/// Like [`quantize_group`], but minimises `Σ importance[i] · (w[i] − ŵ[i])²`.
///
/// `importance` (e.g. mean squared activation per input column from calibration text) should
/// hold one non-negative finite value per entry of `values`; one of another length, or with no
/// positive entry, is ignored (uniform importance).
///
/// # Panics
/// If `codes` is shorter than `values`.
pub fn quantize_group_weighted(
    values: &[f32],
    importance: Option<&[f32]>,
    spec: &QuantSpec,
    codes: &mut [u8],
) -> (f32, f32) {
    let codes = &mut codes[..values.len()];
    match importance {
        Some(imp) if imp.len() == values.len() && imp.iter().any(|&v| v > 0.0) => {
            search(values, imp, spec, codes)
        }
        _ => search(values, Uniform, spec, codes),
    }
}

fn search<W: Weights>(x: &[f32], w: W, spec: &QuantSpec, codes: &mut [u8]) -> (f32, f32) {
    match spec.scheme {
        Scheme::Symmetric => symmetric(x, w, spec, codes),
        Scheme::Asymmetric => asymmetric(x, w, spec, codes),
    }
}

/// Per-element importance, monomorphised so the uniform case costs nothing.
trait Weights: Copy {
    /// Weights of elements `start .. start + LANES`.
    fn lanes(self, start: usize) -> [f32; LANES];
    /// Weight of element `i`.
    fn at(self, i: usize) -> f32;
}

#[derive(Clone, Copy)]
struct Uniform;

impl Weights for Uniform {
    #[inline(always)]
    fn lanes(self, _start: usize) -> [f32; LANES] {
        [1.0; LANES]
    }
    #[inline(always)]
    fn at(self, _i: usize) -> f32 {
        1.0
    }
}

impl Weights for &[f32] {
    #[inline(always)]
    fn lanes(self, start: usize) -> [f32; LANES] {
        let mut out = [0.0; LANES];
        out.copy_from_slice(&self[start..start + LANES]);
        out
    }
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        self[i]
    }
}

/// Rounds `x` to f16 precision (saturating at the largest finite f16).
fn to_f16(x: f32) -> f32 {
    f16::from_f32(x.clamp(-65504.0, 65504.0)).to_f32()
}

/// Nearest integer in `[lo, hi]` (integers), as f32. Clamping first keeps the magic-number
/// rounding (ties to even, exact for |x| < 2^22) valid. Plain comparisons rather than
/// `f32::max`/`min` compile to single `maxps`/`minps`; NaN passes through (and becomes code 0).
#[inline(always)]
fn round_clamped(x: f32, lo: f32, hi: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = if x < lo { lo } else { x };
    let x = if x > hi { hi } else { x };
    (x + MAGIC) - MAGIC
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Sums `f(x[i], w[i])` component-wise over the group, with `LANES` partial sums.
#[inline(always)]
fn reduce<W: Weights, const K: usize>(
    x: &[f32],
    w: W,
    f: impl Fn(f32, f32) -> [f32; K],
) -> [f32; K] {
    let mut acc = [[0.0f32; LANES]; K];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (c, xs) in chunks.enumerate() {
        let mut xv = [0.0f32; LANES];
        xv.copy_from_slice(xs);
        let ws = w.lanes(c * LANES);
        for l in 0..LANES {
            let terms = f(xv[l], ws[l]);
            for k in 0..K {
                acc[k][l] += terms[k];
            }
        }
    }
    let mut out = [0.0f32; K];
    for k in 0..K {
        out[k] = acc[k].iter().sum();
    }
    let base = x.len() - tail.len();
    for (i, &v) in tail.iter().enumerate() {
        let terms = f(v, w.at(base + i));
        for k in 0..K {
            out[k] += terms[k];
        }
    }
    out
}

/// Smallest and largest value (NaN ignored), with lane-wise comparisons that vectorise: a
/// sequential fold would cost more than several search passes.
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for xs in chunks {
        for l in 0..LANES {
            lo[l] = if xs[l] < lo[l] { xs[l] } else { lo[l] };
            hi[l] = if xs[l] > hi[l] { xs[l] } else { hi[l] };
        }
    }
    let pick = |(a, b): (f32, f32), v: f32| (if v < a { v } else { a }, if v > b { v } else { b });
    let acc = lo
        .into_iter()
        .zip(hi)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |m, (a, b)| {
            pick(pick(m, a), b)
        });
    tail.iter().fold(acc, |m, &v| pick(m, v))
}

/// Symmetric: `w ≈ d · k`, `k ∈ [−2^(b−1), 2^(b−1) − 1]`, stored code `k + 2^(b−1)`.
fn symmetric<W: Weights>(x: &[f32], w: W, spec: &QuantSpec, codes: &mut [u8]) -> (f32, f32) {
    let z = spec.sym_zero() as f32;
    let (lo, hi) = (-z, z - 1.0);
    // The largest-magnitude value goes on the −2^(b−1) side, which has one level more (as
    // llama.cpp's Q4_0): the scale is negative when that value is positive.
    let (mn, mx) = min_max(x);
    let amax = if mx >= -mn { mx } else { mn };
    if amax == 0.0 || !amax.is_finite() {
        codes.fill(z as u8);
        return (0.0, 0.0);
    }

    // Σ w·x·k and Σ w·k² for the codes of inverse scale `id`.
    let sums = |id: f32| {
        reduce(x, w, |v, wt| {
            let k = round_clamped(v * id, lo, hi);
            [wt * v * k, wt * k * k]
        })
    };
    // The same with the squared error of scale `d` first, in one pass.
    let error_sums = |d: f32| {
        let id = inverse(d);
        reduce(x, w, |v, wt| {
            let k = round_clamped(v * id, lo, hi);
            let e = v - d * k;
            [wt * e * e, wt * v * k, wt * k * k]
        })
    };

    // Grid over clip ratios; each candidate's codes get their least-squares scale, whose
    // residual is Σw·x² − (Σw·x·k)² / Σw·k²: maximise the subtracted term.
    let plain = -amax / z;
    let mut best_d = plain;
    let mut best_gain = f32::NEG_INFINITY;
    for i in 0..SYM_RATIOS {
        let ratio = 1.0 - 0.5 * i as f32 / (SYM_RATIOS - 1) as f32;
        let [sxk, skk] = sums(inverse(plain * ratio));
        if skk > 0.0 && sxk * sxk / skk > best_gain {
            best_gain = sxk * sxk / skk;
            best_d = sxk / skk;
        }
    }

    // At f16 precision: the plain scale, then the best candidate refined by refits.
    let plain = to_f16(plain);
    let (mut best, mut best_err) = (plain, error_sums(plain)[0]);
    let mut d = to_f16(best_d);
    for _ in 0..REFIT_PASSES {
        let [e, sxk, skk] = error_sums(d);
        if e < best_err {
            (best, best_err) = (d, e);
        }
        if skk <= 0.0 {
            break;
        }
        let next = to_f16(sxk / skk);
        if next == d {
            break;
        }
        d = next;
    }

    let id = inverse(best);
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (round_clamped(v * id, lo, hi) + z) as u8;
    }
    (best, 0.0)
}

/// Asymmetric: `w ≈ s · q + o`, `q ∈ [0, 2^b − 1]`.
fn asymmetric<W: Weights>(x: &[f32], w: W, spec: &QuantSpec, codes: &mut [u8]) -> (f32, f32) {
    let qmax = spec.max_code() as f32;
    let (mn, mx) = min_max(x);
    if mx <= mn || !(mx - mn).is_finite() {
        // Constant (or empty, or non-finite) group: the offset carries it.
        codes.fill(0);
        let offset = if mn.is_finite() { to_f16(mn) } else { 0.0 };
        return (0.0, offset);
    }

    // One pass gives the squared error of the mapping (s, o) and the least-squares
    // (scale, offset) for its codes, with the part of Σw·x² that refit explains. The refit works
    // on centred codes (q − qmax/2) so the 2×2 normal equations do not cancel at 8 bits.
    let half = qmax / 2.0;
    let refit = |s: f32, o: f32| -> (f32, Option<(f32, f32, f32)>) {
        let is = inverse(s);
        let [err, sw, sx, sk, skk, sxk] = reduce(x, w, |v, wt| {
            let q = round_clamped((v - o) * is, 0.0, qmax);
            let e = v - (s * q + o);
            let k = q - half;
            [wt * e * e, wt, wt * v, wt * k, wt * k * k, wt * v * k]
        });
        let det = sw * skk - sk * sk;
        if det <= 0.0 {
            return (err, None);
        }
        let scale = (sw * sxk - sx * sk) / det;
        let centred = (skk * sx - sk * sxk) / det;
        let gain = scale * sxk + centred * sx;
        (err, Some((scale, centred - scale * half, gain)))
    };

    let range = mx - mn;
    let plain = (range / qmax, mn);
    let mut best_params = plain;
    let mut best_gain = f32::NEG_INFINITY;
    for a in ASYM_SHRINK {
        for b in ASYM_SHRINK {
            let lo = mn + a * range;
            let hi = mx - b * range;
            if let (_, Some((s, o, gain))) = refit((hi - lo) / qmax, lo) {
                if gain > best_gain {
                    best_gain = gain;
                    best_params = (s, o);
                }
            }
        }
    }

    let plain = (to_f16(plain.0), to_f16(plain.1));
    let (mut best, mut best_err) = (plain, refit(plain.0, plain.1).0);
    let (mut s, mut o) = (to_f16(best_params.0), to_f16(best_params.1));
    for _ in 0..REFIT_PASSES {
        let (e, next) = refit(s, o);
        if e < best_err {
            (best, best_err) = ((s, o), e);
        }
        let Some((ns, no, _)) = next else {
            break;
        };
        let next = (to_f16(ns), to_f16(no));
        if next == (s, o) {
            break;
        }
        (s, o) = next;
    }

    let (s, o) = best;
    let is = inverse(s);
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = round_clamped((v - o) * is, 0.0, qmax) as u8;
    }
    (s, o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequant(codes: &[u8], spec: &QuantSpec, (s, o): (f32, f32)) -> Vec<f32> {
        let z = match spec.scheme {
            Scheme::Symmetric => spec.sym_zero() as f32,
            Scheme::Asymmetric => 0.0,
        };
        codes.iter().map(|&q| s * (q as f32 - z) + o).collect()
    }

    #[test]
    fn parameters_are_f16_and_codes_in_range() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.013)
            .collect();
        for bits in [2u8, 3, 4, 8] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                let spec = QuantSpec::new(bits, 64, scheme).unwrap();
                let mut codes = vec![0u8; 64];
                let (s, o) = quantize_group(&x, &spec, &mut codes);
                assert_eq!(s, f16::from_f32(s).to_f32());
                assert_eq!(o, f16::from_f32(o).to_f32());
                assert!(codes.iter().all(|&q| u32::from(q) <= spec.max_code()));
            }
        }
    }

    #[test]
    fn exactly_representable_groups_are_exact() {
        // Values on a 4-bit grid with an f16 step: both schemes must recover them exactly.
        let step = 0.125f32;
        let x: Vec<f32> = (0..32).map(|i| step * ((i % 16) as f32 - 8.0)).collect();
        for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
            let spec = QuantSpec::new(4, 32, scheme).unwrap();
            let mut codes = vec![0u8; 32];
            let params = quantize_group(&x, &spec, &mut codes);
            assert_eq!(dequant(&codes, &spec, params), x, "{scheme:?}");
        }
    }

    #[test]
    fn zero_and_constant_groups() {
        let spec = QuantSpec::new(3, 32, Scheme::Symmetric).unwrap();
        let mut codes = vec![9u8; 32];
        assert_eq!(quantize_group(&[0.0; 32], &spec, &mut codes), (0.0, 0.0));
        assert!(codes.iter().all(|&q| q == 4));

        let spec = QuantSpec::new(2, 32, Scheme::Asymmetric).unwrap();
        let (s, o) = quantize_group(&[0.5; 32], &spec, &mut codes);
        assert_eq!((s, o), (0.0, 0.5));
        assert_eq!(dequant(&codes[..32], &spec, (s, o)), vec![0.5; 32]);
    }

    #[test]
    fn importance_moves_error_to_unimportant_values() {
        // One column 100× more important: its error must shrink compared with uniform weighting.
        let x: Vec<f32> = (0..32)
            .map(|i| ((i * 53 % 31) as f32 / 31.0 - 0.5) * 2.0)
            .collect();
        let spec = QuantSpec::new(2, 32, Scheme::Asymmetric).unwrap();
        let mut imp = vec![1.0f32; 32];
        let hot = 5;
        imp[hot] = 100.0;
        let mut cu = vec![0u8; 32];
        let mut cw = vec![0u8; 32];
        let pu = quantize_group(&x, &spec, &mut cu);
        let pw = quantize_group_weighted(&x, Some(&imp), &spec, &mut cw);
        let eu = (dequant(&cu, &spec, pu)[hot] - x[hot]).abs();
        let ew = (dequant(&cw, &spec, pw)[hot] - x[hot]).abs();
        assert!(ew < eu, "weighted {ew} vs uniform {eu}");
    }
}
