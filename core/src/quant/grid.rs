//! Learned non-uniform grids: per tensor, `2^bits` signed int8 levels that replace the uniform
//! codes (`w = scale · level[q] + bias`, `bias` the group's offset when asymmetric, else 0),
//! decoded by table lookup in the kernels. llama.cpp's IQ4_NL uses one fixed int8 table of 16
//! levels for every tensor; here the table is fitted to each tensor's own weights by
//! importance-weighted Lloyd iterations (k-means in one dimension, with each group's scale and
//! offset refitted between level updates), starting from the uniform grid and keeping the
//! best table seen, so a learned grid is never worse than the uniform one on the rows it was
//! fitted on.
//!
//! The table costs `2^bits` bytes per tensor, counted in [`super::QuantizedMatrix::size_bytes`].

use super::{QuantSpec, Scheme};
use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

/// A tensor's code table: `2^bits` strictly increasing int8 levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    levels: Vec<i8>,
}

impl Grid {
    /// A grid of `levels` for codes of `bits` (2, 3 or 4) bits.
    ///
    /// Errors: `INVALID_CONFIG` when `levels` does not hold `2^bits` strictly increasing values
    /// or `bits` is not 2, 3 or 4 (an 8-bit code needs no table).
    pub fn new(bits: u8, levels: Vec<i8>) -> Result<Grid> {
        if !matches!(bits, 2..=4) {
            return Err(Error::invalid_config(format!(
                "learned grids are for 2-, 3- and 4-bit codes, not {bits}"
            )));
        }
        if levels.len() != 1 << bits {
            return Err(Error::invalid_config(format!(
                "a {bits}-bit grid needs {} levels, got {}",
                1 << bits,
                levels.len()
            )));
        }
        if levels.windows(2).any(|p| p[0] >= p[1]) {
            return Err(Error::invalid_config(
                "grid levels must be strictly increasing",
            ));
        }
        Ok(Grid { levels })
    }

    /// The uniform grid of `spec` as a table: symmetric `(q − 2^(bits−1)) · 127 / 2^(bits−1)`,
    /// asymmetric evenly spaced over −128 ..= 127 (each rounded). Learning starts here.
    pub fn uniform(spec: &QuantSpec) -> Grid {
        let n = 1i32 << spec.bits;
        let levels = (0..n)
            .map(|q| match spec.scheme {
                Scheme::Symmetric => {
                    let z = n / 2;
                    ((q - z) as f32 * 127.0 / z as f32).round() as i8
                }
                Scheme::Asymmetric => (-128.0 + q as f32 * 255.0 / (n - 1) as f32).round() as i8,
            })
            .collect();
        Grid { levels }
    }

    /// The levels, one per code.
    pub fn levels(&self) -> &[i8] {
        &self.levels
    }

    /// The level of code `q` as f32.
    #[inline]
    pub fn value(&self, q: u8) -> f32 {
        f32::from(self.levels[q as usize])
    }

    /// Bits of a code.
    pub fn bits(&self) -> u8 {
        self.levels.len().trailing_zeros() as u8
    }

    /// A lookup of nearest codes (see [`Nearest`]).
    pub fn nearest(&self) -> Nearest {
        Nearest::new(&self.levels)
    }
}

/// Nearest-level lookup for targets in level units: half-unit bins over −128 ..= 127, each
/// holding the level nearest to its centre; exact up to a quarter unit around the midpoints
/// between levels (which are at least one unit apart).
pub struct Nearest {
    table: [u8; 512],
    levels: Vec<f32>,
}

impl Nearest {
    fn new(levels: &[i8]) -> Nearest {
        let mut table = [0u8; 512];
        for (i, t) in table.iter_mut().enumerate() {
            let v = i as f32 * 0.5 - 128.0;
            let mut best = 0;
            for (k, &l) in levels.iter().enumerate() {
                if (f32::from(l) - v).abs() < (f32::from(levels[best]) - v).abs() {
                    best = k;
                }
            }
            *t = best as u8;
        }
        Nearest {
            table,
            levels: levels.iter().map(|&l| f32::from(l)).collect(),
        }
    }

    /// The code whose level is nearest `t` (clamped to the grid's ends).
    #[inline(always)]
    pub fn code(&self, t: f32) -> u8 {
        // 1.5 · 2^23: adding and subtracting it rounds to nearest (no libm call); NaN → 0.
        const MAGIC: f32 = 12_582_912.0;
        let i = (((t + 128.0) * 2.0).clamp(0.0, 511.0) + MAGIC) - MAGIC;
        self.table[(i as usize).min(511)]
    }

    /// Level of code `q`.
    #[inline(always)]
    pub fn level(&self, q: u8) -> f32 {
        self.levels[q as usize]
    }
}

/// Weighted squared error of `x` coded with `codes` at `(s, o)`.
fn error(x: &[f32], e: &[f32], codes: &[u8], nn: &Nearest, s: f32, o: f32) -> f32 {
    x.iter()
        .zip(e)
        .zip(codes)
        .map(|((&v, &w), &q)| {
            let d = v - (s * nn.level(q) + o);
            w * d * d
        })
        .sum()
}

fn assign(x: &[f32], nn: &Nearest, s: f32, o: f32, codes: &mut [u8]) {
    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nn.code((v - o) * inv);
    }
}

/// [`assign`] and [`error`] in one pass.
fn assign_error(x: &[f32], e: &[f32], nn: &Nearest, s: f32, o: f32, codes: &mut [u8]) -> f32 {
    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
    let mut err = 0.0;
    for ((c, &v), &w) in codes.iter_mut().zip(x).zip(e) {
        *c = nn.code((v - o) * inv);
        let d = v - (s * nn.level(*c) + o);
        err += w * d * d;
    }
    err
}

/// Weighted least squares of `(s, o)` (or `s` alone when `sym`) for fixed codes; `None` when
/// degenerate.
fn refit(x: &[f32], e: &[f32], codes: &[u8], nn: &Nearest, sym: bool) -> Option<(f32, f32)> {
    let (mut sw, mut sl, mut sx, mut sll, mut slx) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for ((&v, &w), &q) in x.iter().zip(e).zip(codes) {
        let (w, l, v) = (f64::from(w), f64::from(nn.level(q)), f64::from(v));
        sw += w;
        sl += w * l;
        sx += w * v;
        sll += w * l * l;
        slx += w * l * v;
    }
    if sym {
        return (sll > 0.0).then(|| ((slx / sll) as f32, 0.0));
    }
    let det = sw * sll - sl * sl;
    if det <= 1e-12 * sw * sll {
        return None;
    }
    let s = (sw * slx - sl * sx) / det;
    let o = (sx - s * sl) / sw;
    Some((s as f32, o as f32))
}

/// Quantizes one group on a grid: picks `(scale, offset)` (offset 0 when symmetric), both
/// exactly representable in f16, minimising `Σ e[i] (x[i] − (scale · level[q[i]] + offset))²`,
/// writes the codes and returns the parameters. Candidates clip the range at several ratios
/// and are refitted by least squares, like the uniform search.
///
/// # Panics
/// If `e` or `codes` is shorter than `x`.
pub fn quantize_group_grid(
    x: &[f32],
    e: &[f32],
    nn: &Nearest,
    scheme: Scheme,
    codes: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let (e, codes) = (&e[..n], &mut codes[..n]);
    let (lo, hi) = (nn.levels[0], *nn.levels.last().unwrap_or(&0.0));
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    if !(min.is_finite() && max.is_finite()) || max == min && min == 0.0 {
        let q = nn.code(0.0);
        codes.fill(q);
        return (0.0, 0.0);
    }
    let sym = scheme == Scheme::Symmetric;
    // The uniform search's candidates (`super::search`): symmetric, the largest value on either
    // end of the table clipped from 1.0 down to 0.5 of it; asymmetric, up to 22% of the range cut
    // at either end. Every candidate is scored at the f16 parameters actually stored.
    let mut cands: Vec<(f32, f32)> = Vec::with_capacity(4 * SYM_RATIOS);
    if sym {
        // Either extreme on either end of the table: a negative scale mirrors it, so the
        // larger magnitude can take the longer side (as the uniform search's −2^(b−1) level).
        for k in 0..SYM_RATIOS {
            let r = 1.0 - 0.5 * k as f32 / (SYM_RATIOS - 1) as f32;
            for v in [max, min] {
                for end in [lo, hi] {
                    if v != 0.0 && end != 0.0 {
                        cands.push((v * r / end, 0.0));
                    }
                }
            }
        }
    } else {
        let range = max - min;
        for a in ASYM_SHRINK {
            for b in ASYM_SHRINK {
                let (l, h) = (min + a * range, max - b * range);
                let s = (h - l) / (hi - lo);
                cands.push((s, l - s * lo));
            }
        }
    }
    let to_f16 = |v: f32| f16::from_f32(v).to_f32();
    let mut scored: Vec<(f32, f32, f32)> = cands
        .into_iter()
        .map(|(s, o)| (to_f16(s), to_f16(o)))
        .filter(|&(s, o)| s.is_finite() && s != 0.0 && o.is_finite())
        .map(|(s, o)| (assign_error(x, e, nn, s, o, codes), s, o))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&first) = scored.first() else {
        let q = nn.code(0.0);
        codes.fill(q);
        return (0.0, 0.0);
    };
    // The two best candidates refined by least-squares refits of their codes.
    let mut best = first;
    for &(mut err, mut s, mut o) in scored.iter().take(2) {
        for _ in 0..REFIT_PASSES {
            assign(x, nn, s, o, codes);
            let Some((s2, o2)) = refit(x, e, codes, nn, sym) else {
                break;
            };
            let (s2, o2) = (to_f16(s2), to_f16(o2));
            if !(s2.is_finite() && s2 != 0.0 && o2.is_finite()) || (s2, o2) == (s, o) {
                break;
            }
            let err2 = assign_error(x, e, nn, s2, o2, codes);
            if err2 >= err {
                break;
            }
            (err, s, o) = (err2, s2, o2);
        }
        if err < best.0 {
            best = (err, s, o);
        }
    }
    let (_, s, o) = best;
    assign(x, nn, s, o, codes);
    (s, o)
}

/// Symmetric scale candidates per group (clip ratios from 1.0 down to 0.5, on either end).
const SYM_RATIOS: usize = 16;
/// Asymmetric candidates: fractions of the range cut off at the bottom and at the top.
const ASYM_SHRINK: [f32; 4] = [0.0, 0.06, 0.13, 0.22];
/// Least-squares refit passes on the best candidates.
const REFIT_PASSES: usize = 3;

/// Weights of a tensor the levels are fitted on (whole rows, evenly spaced): 16 levels at most
/// need far fewer samples, and this keeps fitting within a fraction of the quantization time.
const FIT_WEIGHTS: usize = 65536;
/// Lloyd iterations.
const FIT_ITERS: usize = 6;

/// Learns a grid of `spec.bits` levels for a `rows × cols` matrix from evenly spaced rows (about
/// 65k weights): importance-weighted Lloyd iterations (`element_weights(row, out)` gives each element's
/// weight), each group's scale and offset refitted on every round. Returns the table with the
/// lowest weighted error seen, the uniform one included.
pub fn learn_grid(
    weights: &[f32],
    rows: usize,
    cols: usize,
    spec: &QuantSpec,
    element_weights: &(dyn Fn(&[f32], &mut [f32]) + Sync),
) -> Grid {
    let step = rows.div_ceil(FIT_WEIGHTS.div_ceil(cols)).max(1);
    let sample: Vec<usize> = (0..rows).step_by(step).collect();
    let n = 1usize << spec.bits;
    let mut elt = vec![0f32; cols];
    let weights_of: Vec<Vec<f32>> = sample
        .iter()
        .map(|&r| {
            element_weights(&weights[r * cols..(r + 1) * cols], &mut elt);
            elt.clone()
        })
        .collect();
    let mut grid = Grid::uniform(spec);
    let mut best = (f64::INFINITY, grid.clone());
    for _ in 0..=FIT_ITERS {
        let nn = grid.nearest();
        let (num, den, total) = sample
            .par_iter()
            .zip(&weights_of)
            .fold(
                || (vec![0f64; n], vec![0f64; n], 0f64, vec![0u8; cols]),
                |(mut num, mut den, mut total, mut codes), (&r, e)| {
                    let row = &weights[r * cols..(r + 1) * cols];
                    for g in (0..cols).step_by(spec.group_size) {
                        let span = g..cols.min(g + spec.group_size);
                        let (x, e, codes) =
                            (&row[span.clone()], &e[span.clone()], &mut codes[span]);
                        let (s, o) = quantize_group_grid(x, e, &nn, spec.scheme, codes);
                        total += f64::from(error(x, e, codes, &nn, s, o));
                        if s <= 0.0 {
                            continue;
                        }
                        for ((&v, &w), &q) in x.iter().zip(e).zip(codes.iter()) {
                            num[q as usize] += f64::from(w) * f64::from(s) * f64::from(v - o);
                            den[q as usize] += f64::from(w) * f64::from(s) * f64::from(s);
                        }
                    }
                    (num, den, total, codes)
                },
            )
            .map(|(num, den, total, _)| (num, den, total))
            .reduce(
                || (vec![0f64; n], vec![0f64; n], 0f64),
                |mut a, b| {
                    a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
                    a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
                    a.2 += b.2;
                    a
                },
            );
        if total < best.0 {
            best = (total, grid.clone());
        }
        // Level update: each level moves to the weighted mean of what it codes (in level
        // units); empty levels stay.
        let mut lv: Vec<f64> = (0..n)
            .map(|k| {
                if den[k] > 0.0 {
                    num[k] / den[k]
                } else {
                    f64::from(grid.levels[k])
                }
            })
            .collect();
        lv.sort_by(f64::total_cmp);
        // Renormalise to the int8 range: scales (and offsets) absorb the map.
        let (a, b) = (lv[0], lv[n - 1]);
        let mapped: Vec<f64> = match spec.scheme {
            Scheme::Symmetric => {
                let m = a.abs().max(b.abs());
                if m <= 0.0 {
                    break;
                }
                lv.iter().map(|v| v * 127.0 / m).collect()
            }
            Scheme::Asymmetric => {
                if b <= a {
                    break;
                }
                lv.iter()
                    .map(|v| -128.0 + (v - a) * 255.0 / (b - a))
                    .collect()
            }
        };
        grid = Grid {
            levels: strictly_increasing(&mapped),
        };
    }
    best.1
}

/// Rounds sorted values in −128 ..= 127 to distinct increasing int8 levels.
fn strictly_increasing(v: &[f64]) -> Vec<i8> {
    let n = v.len() as i32;
    let mut out: Vec<i32> = v
        .iter()
        .map(|x| x.round().clamp(-128.0, 127.0) as i32)
        .collect();
    for k in 1..out.len() {
        out[k] = out[k].max(out[k - 1] + 1);
    }
    // Pushed past the top: walk back down.
    let last = out.len() - 1;
    out[last] = out[last].min(127);
    for k in (0..last).rev() {
        out[k] = out[k].min(out[k + 1] - 1);
    }
    debug_assert!(out[0] >= -128 && n <= 256);
    out.into_iter().map(|x| x as i8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussianish(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| (0..6).map(|_| u()).sum::<f32>() - 3.0)
            .collect()
    }

    #[test]
    fn grids_validate() {
        assert!(Grid::new(4, (0..16).map(|i| i * 8 - 64).collect()).is_ok());
        assert!(Grid::new(4, vec![0; 16]).is_err());
        assert!(Grid::new(3, (0..16).map(|i| i * 8 - 64).collect()).is_err());
        assert!(Grid::new(8, (0..=255).map(|i| (i - 128) as i8).collect()).is_err());
        for bits in [2u8, 3, 4] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                let spec = QuantSpec::new(bits, 32, scheme).unwrap();
                let g = Grid::uniform(&spec);
                assert!(Grid::new(bits, g.levels().to_vec()).is_ok(), "{spec:?}");
            }
        }
        assert_eq!(
            strictly_increasing(&[126.6, 127.0, 127.0]),
            vec![125, 126, 127]
        );
    }

    #[test]
    fn learned_grid_beats_uniform_on_bell_shaped_weights() {
        let (rows, cols) = (64, 256);
        let w = gaussianish(rows * cols, 7);
        let ones = |_: &[f32], o: &mut [f32]| o.fill(1.0);
        for bits in [2u8, 3, 4] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                let spec = QuantSpec::new(bits, 32, scheme).unwrap();
                let err = |g: &Grid| {
                    let nn = g.nearest();
                    let mut codes = vec![0u8; 32];
                    let e = vec![1.0f32; 32];
                    w.chunks(32)
                        .map(|x| {
                            let (s, o) = quantize_group_grid(x, &e, &nn, scheme, &mut codes);
                            f64::from(error(x, &e, &codes, &nn, s, o))
                        })
                        .sum::<f64>()
                };
                let learned = learn_grid(&w, rows, cols, &spec, &ones);
                let (eu, el) = (err(&Grid::uniform(&spec)), err(&learned));
                // The uniform integer grid's own search (what runs without `grid`).
                let z = match scheme {
                    Scheme::Symmetric => spec.sym_zero() as f32,
                    Scheme::Asymmetric => 0.0,
                };
                let mut codes = vec![0u8; 32];
                let es: f64 = w
                    .chunks(32)
                    .map(|x| {
                        let (s, o) = super::super::quantize_group(x, &spec, &mut codes);
                        x.iter()
                            .zip(&codes)
                            .map(|(&v, &q)| f64::from(v - (s * (f32::from(q) - z) + o)).powi(2))
                            .sum::<f64>()
                    })
                    .sum();
                eprintln!(
                    "{spec:?}: learned {el} vs uniform table {eu} ({:.3}) vs uniform search {es} ({:.3})",
                    el / eu,
                    el / es
                );
                assert!(el < eu * 0.99, "{spec:?}: learned {el} vs uniform {eu}");
                // The same candidates as the uniform search: on its table, as good within 2%.
                assert!(
                    eu < es * 1.02,
                    "{spec:?}: uniform table {eu} vs search {es}"
                );
                assert!(el < es * 0.99, "{spec:?}: learned {el} vs search {es}");
            }
        }
    }
}
