//! How a load turns a model's f32 matrices into its plan's formats: the plain error-minimising
//! search, or, with calibration statistics, importance-weighted scales and error-feedback
//! rounding, optionally in a rotated basis; and per-tensor widths that override the plan's
//! roles.

use super::{
    element_importance, learn_grid, quantize_gptq, quantize_on_grid, Hessian, QuantizedMatrix,
    Rotation,
};
use crate::adapter::WeightPrecision;
use crate::backend::WeightMatrix;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Largest rotation block: a 128-wide Hadamard spreads outliers over four 32-groups, while
/// the transform stays a handful of adds per value.
pub const MAX_ROTATION_BLOCK: usize = 128;

/// Statistics of a model's linear-layer inputs on calibration text, by tensor name (matrices
/// that read the same input share one [`Hessian`]).
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// `E[x xᵀ]` accumulators by tensor name (`blk.0.attn_q.weight`, …).
    pub hessians: HashMap<String, Arc<Hessian>>,
    /// What text calibrated, for provenance: file name, its bytes' FNV-64 hash, tokens.
    pub provenance: String,
    /// The weight units of the model: the tensor names of each upload (several when stacked
    /// into one), in load order.
    pub units: Vec<Vec<String>>,
}

/// The quantization methods of a load.
#[derive(Clone, Debug, Default)]
pub struct Quantizer {
    /// Quantize each matrix in a randomized-Hadamard basis of its input dimension.
    pub rotation: bool,
    /// Error-feedback rounding against the calibration Hessian (needs `calibration`).
    pub error_feedback: bool,
    /// Calibration statistics: importance weights of the scale search (and the Hessians of
    /// error feedback).
    pub calibration: Option<Arc<Calibration>>,
    /// Per-tensor precisions that replace the plan's role precision (mixed allocation):
    /// `(pattern, precision)`, a pattern matching a tensor name equal to it or ending in
    /// `.pattern`; later pairs win.
    pub overrides: Vec<(String, WeightPrecision)>,
    /// Relative damping of error feedback (fraction of the Hessian's mean diagonal).
    pub damp: f64,
    /// Codes on a learned per-tensor grid (2-4 bits; see [`super::Grid`]) instead of the
    /// uniform one.
    pub grid: bool,
}

impl Quantizer {
    /// Whether this is the plain search with the plan's widths (what a load without options
    /// does).
    pub fn is_plain(&self) -> bool {
        !self.rotation && !self.grid && self.calibration.is_none() && self.overrides.is_empty()
    }

    /// A short tag of the methods (`rot+gptq+imp`), part of stored matrices' keys and of
    /// precision labels; empty when plain.
    pub fn tag(&self) -> String {
        let mut parts = Vec::new();
        if self.rotation {
            parts.push("rot");
        }
        if self.calibration.is_some() {
            parts.push(if self.error_feedback { "gptq" } else { "imp" });
        }
        if self.grid {
            parts.push("grid");
        }
        parts.join("+")
    }

    /// The precision of tensor `name`: its override, else `role` (the plan's).
    pub fn precision_for(&self, name: &str, role: WeightPrecision) -> WeightPrecision {
        self.overrides
            .iter()
            .rev()
            .find(|(pat, _)| {
                name == pat
                    || name
                        .strip_suffix(pat.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            })
            .map_or(role, |(_, p)| *p)
    }

    /// Quantizes tensor `name` (`rows × cols`, row-major f32) to `p` with this quantizer's
    /// methods. Dense precisions and matrices whose columns do not fit a rotation are made as
    /// usual; a tensor the calibration did not see gets the plain search.
    ///
    /// Errors: `INVALID_CONFIG` from the quantizers (bad shapes; a singular Hessian).
    pub fn quantize(
        &self,
        name: &str,
        mut data: Vec<f32>,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
    ) -> Result<WeightMatrix> {
        let spec = match p {
            WeightPrecision::F32 => return Ok(WeightMatrix::F32 { rows, cols, data }),
            WeightPrecision::F16 => {
                return Ok(WeightMatrix::F16 {
                    rows,
                    cols,
                    data: data.iter().map(|&v| half::f16::from_f32(v)).collect(),
                })
            }
            WeightPrecision::Quant(spec) => spec,
        };
        let rotation = if self.rotation {
            Rotation::block_for(cols, MAX_ROTATION_BLOCK).map(|block| Rotation {
                block,
                seed: ROTATION_SEED,
            })
        } else {
            None
        };
        if let Some(rot) = rotation {
            rot.rotate(&rot.signs(cols), &mut data);
        }
        let hessian = self
            .calibration
            .as_ref()
            .and_then(|c| c.hessians.get(name))
            .filter(|h| h.dim == cols && h.rows > 0);
        // A table that is also looked up (a tied embedding) is not fitted to one layer's inputs
        // by error feedback: its rows are read directly too.
        let feedback = self.error_feedback && !name.contains("token_embd");
        // Importance of each input column: the calibration Hessian's diagonal, in the basis
        // the matrix is quantized in.
        let rotated_hessian = match (hessian, rotation) {
            (Some(h), Some(rot)) => Some(h.rotated(&rot)),
            _ => None,
        };
        let diag: Option<Vec<f32>> = match (&rotated_hessian, hessian) {
            (Some(r), _) => Some((0..cols).map(|i| r[i * cols + i] as f32).collect()),
            (None, Some(h)) => Some(h.diag()),
            (None, None) => None,
        };
        let grid = (self.grid && spec.bits <= 4).then(|| {
            let diag = diag.as_deref();
            learn_grid(&data, rows, cols, &spec, &|row, out| {
                element_importance(row, diag, out)
            })
        });
        let mut q: QuantizedMatrix = match (hessian, feedback) {
            (Some(h), true) => {
                let mean = rotated_hessian.unwrap_or_else(|| h.mean());
                let damp = if self.damp > 0.0 { self.damp } else { 0.01 };
                quantize_gptq(&data, rows, cols, spec, &mean, damp, grid.as_ref())?
            }
            _ => quantize_on_grid(&data, rows, cols, spec, diag.as_deref(), grid.as_ref())?,
        };
        q.rotation = rotation;
        Ok(WeightMatrix::Quantized(q))
    }
}

/// The seed of every rotation a quantizer makes: matrices that read the same input (stacked
/// q|k|v, gate|up) must share their rotation, and one rotation per width is what a backend
/// then applies to an activation.
pub const ROTATION_SEED: u64 = 0x6c6f_7762_6974_0001;

/// Parses per-tensor width overrides `NAME=BITS` (comma- or newline-separated, `#` comments),
/// `NAME` a tensor name or a `*`-free suffix such as `ffn_down.weight` matching every layer's.
/// Returns `(pattern, bits)` pairs in order; later pairs win.
///
/// Errors: `INVALID_CONFIG` for a malformed pair or a width other than 2, 3, 4, 5, 6, 8, 16, 32.
pub fn parse_overrides(text: &str) -> Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for item in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
    {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (name, bits) = item.split_once('=').ok_or_else(|| {
            Error::invalid_config(format!("width override `{item}`: expected NAME=BITS"))
        })?;
        let bits: u32 = bits.trim().parse().map_err(|_| {
            Error::invalid_config(format!("width override `{item}`: BITS must be a number"))
        })?;
        if !matches!(bits, 2..=6 | 8 | 16 | 32) {
            return Err(Error::invalid_config(format!(
                "width override `{item}`: bits must be 2, 3, 4, 5, 6, 8, 16 or 32"
            )));
        }
        out.push((name.trim().to_string(), bits));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantSpec, Scheme};

    #[test]
    fn plain_quantizer_matches_the_search_and_rotation_round_trips() {
        let (rows, cols) = (4, 128);
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 20.0 + if i % 50 == 0 { 9.0 } else { 0.0 })
            .collect();
        let p = WeightPrecision::Quant(QuantSpec::new(3, 32, Scheme::Symmetric).unwrap());
        let plain = Quantizer::default();
        let rotated = Quantizer {
            rotation: true,
            ..Default::default()
        };
        let err = |q: &Quantizer| {
            let WeightMatrix::Quantized(m) = q.quantize("w", data.clone(), rows, cols, p).unwrap()
            else {
                panic!("quantized")
            };
            let d = m.dequantize();
            data.iter()
                .zip(&d)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
        };
        let (e0, e1) = (err(&plain), err(&rotated));
        // Outliers spread over the block quantize better rotated.
        assert!(e1 < e0, "rotated {e1} vs plain {e0}");
        assert_eq!(rotated.tag(), "rot");
        assert!(plain.is_plain());
    }

    #[test]
    fn overrides_parse_and_reject() {
        let o =
            parse_overrides("ffn_down.weight=4, blk.0.attn_q.weight=8\n# c\ntoken_embd.weight=4")
                .unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(o[1], ("blk.0.attn_q.weight".into(), 8));
        assert!(parse_overrides("x=7").is_err());
        let p = |b| WeightPrecision::from_bits(b, 32, Scheme::Symmetric).unwrap();
        let q = Quantizer {
            overrides: vec![
                ("ffn_down.weight".into(), p(4)),
                ("blk.3.ffn_down.weight".into(), p(8)),
            ],
            ..Default::default()
        };
        assert_eq!(q.precision_for("blk.0.ffn_down.weight", p(2)), p(4));
        assert_eq!(q.precision_for("blk.3.ffn_down.weight", p(2)), p(8));
        assert_eq!(q.precision_for("blk.0.xffn_down.weight", p(2)), p(2));
        assert_eq!(q.precision_for("blk.0.ffn_up.weight", p(2)), p(2));
        assert!(parse_overrides("x").is_err());
        assert!(parse_overrides("x=a").is_err());
    }
}
