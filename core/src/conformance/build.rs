//! [`CaseBuilder`]: how cases are written: seeded random buffers and weights, then ops over
//! them, then what to compare.

use super::{BufferInit, Case, Check, CheckKind};
use crate::backend::{BufferId, DType, WeightId, WeightMatrix};
use crate::ops::Op;
use crate::quant::{
    learn_grid, quantize, quantize_on_grid, QuantSpec, Rotation, Scheme, ROTATION_SEED,
};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A weight format of [`Op::Linear`] and [`Op::Embed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    F32,
    F16,
    Quant(QuantSpec),
    /// Quantized in a randomized-Hadamard basis of the input dimension ([`Rotation`]) as
    /// `quantization.rotation` makes matrices: blocks of the largest power of two up to this
    /// many columns (at least 32) that divides the matrix's columns.
    Rotated(QuantSpec, usize),
    /// On a learned grid ([`crate::quant::Grid`], fitted to the weight as
    /// `quantization.grid = learned` fits it), rotated as [`Format::Rotated`] when the block is
    /// not 0.
    Grid(QuantSpec, usize),
}

impl Format {
    /// `f32`, `f16`, `q4_sym_g32`, `q3_asym_g128`, `q4_asym_g32_rot64`, …
    pub fn name(self) -> String {
        match self {
            Format::F32 => "f32".into(),
            Format::F16 => "f16".into(),
            Format::Rotated(s, block) => format!("{}_rot{block}", Format::Quant(s).name()),
            Format::Grid(s, 0) => format!("{}_grid", Format::Quant(s).name()),
            Format::Grid(s, block) => format!("{}_grid_rot{block}", Format::Quant(s).name()),
            Format::Quant(s) => format!(
                "q{}_{}_g{}",
                s.bits,
                match s.scheme {
                    Scheme::Symmetric => "sym",
                    Scheme::Asymmetric => "asym",
                },
                s.group_size
            ),
        }
    }

    /// A quantized format (`bits` 2 to 6 or 8; `group` a multiple of 32).
    pub fn quant(bits: u8, group: usize, scheme: Scheme) -> Format {
        Format::Quant(QuantSpec {
            bits,
            group_size: group,
            scheme,
        })
    }

    /// `quant(bits, group, scheme)` in a rotated basis of blocks of up to `block` columns (a
    /// power of two from 32 to 4096).
    pub fn rotated(bits: u8, group: usize, scheme: Scheme, block: usize) -> Format {
        match Format::quant(bits, group, scheme) {
            Format::Quant(s) => Format::Rotated(s, block),
            f => f,
        }
    }

    /// `quant(bits, group, scheme)` on a learned grid, rotated in blocks of up to `block`
    /// columns unless `block` is 0.
    pub fn grid(bits: u8, group: usize, scheme: Scheme, block: usize) -> Format {
        match Format::quant(bits, group, scheme) {
            Format::Quant(s) => Format::Grid(s, block),
            f => f,
        }
    }

    /// F32, F16 and every quantized format: ints 2/3/4/5/6/8, sym and asym, groups 32/64/128.
    pub fn all() -> Vec<Format> {
        let mut v = vec![Format::F32, Format::F16];
        for bits in [2, 3, 4, 5, 6, 8] {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                for group in [32, 64, 128] {
                    v.push(Format::quant(bits, group, scheme));
                }
            }
        }
        v
    }
}

/// Builds one [`Case`]; the random values come from a generator seeded by the case's name, so
/// every run (and every backend) sees the same inputs.
pub(super) struct CaseBuilder {
    case: Case,
    rng: StdRng,
}

/// FNV-1a of the case's name: a seed that does not depend on the order cases are built in.
fn seed(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl CaseBuilder {
    pub fn new(op: &str, shape: impl Into<String>, format: impl Into<String>, tol: f64) -> Self {
        let (shape, format) = (shape.into(), format.into());
        let rng = StdRng::seed_from_u64(seed(&[op, &shape, &format]));
        CaseBuilder {
            case: Case {
                op: op.into(),
                shape,
                format,
                tolerance: tol,
                buffers: Vec::new(),
                weights: Vec::new(),
                ops: Vec::new(),
                checks: Vec::new(),
            },
            rng,
        }
    }

    /// `len` values uniform in `[-scale, scale]`.
    pub fn random(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|_| self.rng.gen_range(-scale..=scale))
            .collect()
    }

    /// `len` values uniform in `[lo, hi]`.
    pub fn uniform(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.rng.gen_range(lo..=hi)).collect()
    }

    fn push(&mut self, b: BufferInit) -> BufferId {
        self.case.buffers.push(b);
        BufferId(self.case.buffers.len() as u32 - 1)
    }

    /// An f32 buffer holding `data`.
    pub fn data(&mut self, data: Vec<f32>) -> BufferId {
        self.typed(DType::F32, data)
    }

    /// A buffer of `dtype` holding `data`.
    pub fn typed(&mut self, dtype: DType, data: Vec<f32>) -> BufferId {
        self.push(BufferInit {
            dtype,
            len: data.len(),
            data: Some(data),
            scratch: false,
        })
    }

    /// An f32 buffer of `len` values uniform in `[-1, 1]`.
    pub fn input(&mut self, len: usize) -> BufferId {
        let d = self.random(len, 1.0);
        self.data(d)
    }

    /// A zeroed f32 buffer.
    pub fn zeros(&mut self, len: usize) -> BufferId {
        self.push(BufferInit {
            dtype: DType::F32,
            len,
            data: None,
            scratch: false,
        })
    }

    /// A scratch buffer (never checked: a backend may leave it unwritten).
    pub fn scratch(&mut self, len: usize) -> BufferId {
        self.push(BufferInit {
            dtype: DType::F32,
            len,
            data: None,
            scratch: true,
        })
    }

    /// A random `rows × cols` weight in `format` (`cols` a multiple of 32 for quantized ones),
    /// uniform in `±sqrt(3 / cols)`: unit-variance inputs give unit-variance outputs, so a
    /// recorded model stays in the range real ones work in.
    pub fn weight(&mut self, format: Format, rows: usize, cols: usize) -> WeightId {
        let data = self.random(rows * cols, (3.0 / cols.max(1) as f32).sqrt());
        let w = match format {
            Format::F32 => WeightMatrix::F32 { rows, cols, data },
            Format::F16 => WeightMatrix::F16 {
                rows,
                cols,
                data: data.iter().map(|&v| f16::from_f32(v)).collect(),
            },
            // The suite's own shapes are valid; a refusal would be a bug in a case, shown as an
            // f32 weight of the wrong size that the backend then rejects.
            Format::Quant(spec) => match quantize(&data, rows, cols, spec) {
                Ok(q) => WeightMatrix::Quantized(q),
                Err(_) => WeightMatrix::F32 {
                    rows,
                    cols,
                    data: Vec::new(),
                },
            },
            // As the quantizer makes them: the codes of W Rᵀ (every row rotated), the rotation
            // noted; the reference dequantizes rows of W again.
            Format::Rotated(spec, max_block) => {
                let rot = Rotation::block_for(cols, max_block).map(|block| Rotation {
                    block,
                    seed: ROTATION_SEED,
                });
                let mut rotated = data;
                if let Some(r) = rot {
                    r.rotate(&r.signs(cols), &mut rotated);
                }
                match (rot, quantize(&rotated, rows, cols, spec)) {
                    (Some(r), Ok(mut q)) => {
                        q.rotation = Some(r);
                        WeightMatrix::Quantized(q)
                    }
                    _ => WeightMatrix::F32 {
                        rows,
                        cols,
                        data: Vec::new(),
                    },
                }
            }
            Format::Grid(spec, max_block) => {
                let rot = (max_block > 0)
                    .then(|| Rotation::block_for(cols, max_block))
                    .flatten()
                    .map(|block| Rotation {
                        block,
                        seed: ROTATION_SEED,
                    });
                let mut data = data;
                if let Some(r) = rot {
                    r.rotate(&r.signs(cols), &mut data);
                }
                let grid = learn_grid(&data, rows, cols, &spec, &|_, o| o.fill(1.0));
                match quantize_on_grid(&data, rows, cols, spec, None, Some(&grid)) {
                    Ok(mut q) => {
                        q.rotation = rot;
                        WeightMatrix::Quantized(q)
                    }
                    Err(_) => WeightMatrix::F32 {
                        rows,
                        cols,
                        data: Vec::new(),
                    },
                }
            }
        };
        self.case.weights.push(w);
        WeightId(self.case.weights.len() as u32 - 1)
    }

    /// Appends an op.
    pub fn op(&mut self, op: Op) {
        self.case.ops.push(op);
    }

    /// Compares `len` values of `buf` from `offset` by NMSE.
    pub fn check(&mut self, buf: BufferId, offset: usize, len: usize) {
        self.check_as(buf, offset, len, CheckKind::Values);
    }

    /// Compares the whole buffer by NMSE.
    pub fn check_all(&mut self, buf: BufferId) {
        let len = self.case.buffers[buf.0 as usize].len;
        self.check(buf, 0, len);
    }

    /// Requires the index at `buf[offset]` to equal the reference's.
    pub fn check_index(&mut self, buf: BufferId, offset: usize) {
        self.check_as(buf, offset, 1, CheckKind::Index);
    }

    fn check_as(&mut self, buf: BufferId, offset: usize, len: usize, kind: CheckKind) {
        self.case.checks.push(Check {
            buf: buf.0 as usize,
            offset,
            len,
            kind,
        });
    }

    /// The finished case.
    pub fn finish(self) -> super::Case {
        self.case
    }
}
