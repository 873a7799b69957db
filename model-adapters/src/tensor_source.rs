//! Where a model's tensors come from: a model file (GGUF, a Hugging Face safetensors
//! checkpoint, a CTranslate2 `model.bin`), or random values of the right shape for speed
//! benchmarks of published shapes. Adapters read tensors through [`TensorSource`] by the
//! format's own names; the synthetic presets only name shapes.

use half::f16;
use lowbit_core::adapter::{LoadContext, ModelSource, WeightPrecision};
use lowbit_core::formats::{Ct2Model, GgufFile, HfFolder};
use lowbit_core::quant::{
    quantize, Grid, QuantizedMatrix, Rotation, Scheme, WeightStore, MAX_ROTATION_BLOCK,
    ROTATION_SEED,
};
use lowbit_core::{Error, Result, WeightId, WeightMatrix};
use rayon::prelude::*;

/// Converts a dense f32 matrix into the backend format the plan asks for.
pub(crate) fn to_weight(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    p: WeightPrecision,
) -> Result<WeightMatrix> {
    Ok(match p {
        WeightPrecision::F32 => WeightMatrix::F32 { rows, cols, data },
        WeightPrecision::F16 => WeightMatrix::F16 {
            rows,
            cols,
            data: data.iter().map(|&v| half::f16::from_f32(v)).collect(),
        },
        WeightPrecision::Quant(spec) => WeightMatrix::Quantized(quantize(&data, rows, cols, spec)?),
    })
}

/// Where a model's tensors come from. Shapes are row-major, outermost dimension first (a
/// `rows × cols` matrix is `[rows, cols]`, whatever order the file stores its dimensions in).
pub trait TensorSource {
    /// The shape of tensor `name`, outermost dimension first; `None` when the source has no
    /// such tensor (a random source has none: it only makes what it is asked for).
    fn dims(&self, name: &str) -> Option<Vec<usize>>;

    /// Whether the source holds tensor `name` (for optional tensors such as biases).
    fn has(&self, name: &str) -> bool {
        self.dims(name).is_some()
    }

    /// Tensor `name` converted to f32, row-major.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor, `UNSUPPORTED_MODEL` for an element
    /// type that cannot be converted.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>>;

    /// The `rows × cols` matrix `name` in precision `p` (a random source seeds it with
    /// `seed`). A tensor of more dimensions reads as `dims[0]` rows of the rest flattened
    /// (a convolution kernel `[out, in, k]` as `out × (in·k)`).
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor or one of another shape.
    fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
        seed: u64,
    ) -> Result<WeightMatrix> {
        let _ = seed;
        check_matrix(self, name, rows, cols)?;
        to_weight(self.read_f32(name)?, rows, cols, p)
    }

    /// The precision tensor `name` is stored in when its role's is `role` (a source with
    /// per-tensor widths overrides it).
    fn precision_for(&self, name: &str, role: WeightPrecision) -> WeightPrecision {
        let _ = name;
        role
    }

    /// Told that `names` were uploaded as weight `id` (several when stacked).
    fn uploaded(&self, id: WeightId, names: &[&str]) {
        let _ = (id, names);
    }

    /// The `len` values of tensor `name` (ones for a random source: norm weights that keep
    /// activations bounded).
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor or one of another size.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.read_f32(name)?;
        if v.len() != len {
            return Err(Error::model_loading(format!(
                "tensor {name} has {} values, expected {len}",
                v.len()
            )));
        }
        Ok(v)
    }
}

/// Checks that `src` holds `name` as a `rows × cols` matrix (dimensions past the first
/// flattened).
///
/// Errors: `MODEL_LOADING_FAILED` for a missing tensor or one of another shape.
fn check_matrix<S: TensorSource + ?Sized>(
    src: &S,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let dims = src
        .dims(name)
        .ok_or_else(|| Error::model_loading(format!("missing tensor {name}")))?;
    let flat_cols = dims
        .iter()
        .skip(1)
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if dims.len() < 2 || dims[0] != rows || flat_cols != Some(cols) {
        return Err(Error::model_loading(format!(
            "tensor {name} has shape {dims:?}, expected [{rows}, {cols}]"
        )));
    }
    Ok(())
}

/// The tensor source of an opened model file or folder.
pub fn tensors_of(source: &ModelSource) -> Box<dyn TensorSource + '_> {
    match source {
        ModelSource::Gguf(g) => Box::new(GgufTensors(g)),
        ModelSource::HuggingFace(h) => Box::new(SafetensorsTensors(h)),
        ModelSource::Ct2(c) => Box::new(Ct2Tensors(c.model())),
    }
}

/// The tensors of a GGUF file, by GGUF names (`blk.0.attn_q.weight`), dequantized from any
/// GGML type the reader knows.
pub struct GgufTensors<'a>(pub &'a GgufFile);

impl TensorSource for GgufTensors<'_> {
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        // GGML lists the contiguous dimension first.
        let d = self.0.tensor_dims(name)?;
        Some(d.iter().rev().map(|&x| x as usize).collect())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.0.dequantize(name)
    }
}

/// The tensors of a Hugging Face checkpoint, by Hugging Face names
/// (`encoder.layer.0.attention.self.query.weight`), from F32, F16 or BF16.
pub struct SafetensorsTensors<'a>(pub &'a HfFolder);

impl TensorSource for SafetensorsTensors<'_> {
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        let t = self.0.tensor(name)?;
        Some(t.shape.iter().map(|&x| x as usize).collect())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.0.tensor_f32(name)
    }
}

/// The variables of a CTranslate2 model, by CTranslate2 names
/// (`encoder/layer_0/self_attention/linear_0/weight`, aliases followed), from f32, f16, bf16
/// or int8/int16 weights divided by their scales.
pub struct Ct2Tensors<'a>(pub &'a Ct2Model);

impl TensorSource for Ct2Tensors<'_> {
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        let v = self.0.variable(name)?;
        Some(v.shape.iter().map(|&x| x as usize).collect())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.0.variable_f32(name)
    }
}

/// Random values of the right shape (speed benchmarks of published shapes): every matrix
/// asked for is made, every vector is ones; it holds no named tensors.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomTensors {
    /// Integer matrices are stored in a rotated basis of their input dimension, with the
    /// rotation the quantizer would give them (`quantization.rotation`), so the backends'
    /// rotation of the activations is part of what is measured.
    pub rotation: bool,
    /// Integer matrices of 2-4 bits carry a grid of levels (`quantization.grid = learned`), so
    /// the backends' table-lookup decode is part of what is measured.
    pub grid: bool,
}

impl TensorSource for RandomTensors {
    fn dims(&self, _name: &str) -> Option<Vec<usize>> {
        None
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        Err(Error::model_loading(format!(
            "a random model has no stored tensor {name}"
        )))
    }

    fn matrix(
        &self,
        _name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
        seed: u64,
    ) -> Result<WeightMatrix> {
        let mut w = random_weight(rows, cols, p, seed)?;
        if let (true, WeightMatrix::Quantized(q)) = (self.rotation, &mut w) {
            q.rotation = Rotation::block_for(cols, MAX_ROTATION_BLOCK).map(|block| Rotation {
                block,
                seed: ROTATION_SEED,
            });
        }
        if let (true, WeightMatrix::Quantized(q)) = (self.grid, &mut w) {
            if q.spec.bits <= 4 {
                // A bell-shaped table like learned ones: levels denser near zero.
                let n = 1usize << q.spec.bits;
                let levels = (0..n)
                    .map(|k| {
                        let t = (2 * k + 1) as f32 / n as f32 - 1.0;
                        (127.0 * t * t.abs().sqrt()).round() as i8
                    })
                    .collect();
                q.grid = Some(Grid::new(q.spec.bits, levels)?);
                let scale = f16::from_f32(1.0 / (cols as f32).sqrt() / 127.0);
                q.scales.iter_mut().for_each(|s| *s = scale);
            }
        }
        Ok(w)
    }

    fn vector(&self, _name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(vec![1.0; len])
    }
}

/// SplitMix64: a fast, good-enough stream of random words.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform values in `[-a, a)` from a seed, in parallel.
fn random_f32(n: usize, a: f32, seed: u64) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let r = splitmix(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

/// A random weight matrix in precision `p`: random packed codes with small scales for integer
/// formats (no quantization search: the values are irrelevant to speed).
pub(crate) fn random_weight(
    rows: usize,
    cols: usize,
    p: WeightPrecision,
    seed: u64,
) -> Result<WeightMatrix> {
    // Scales keep activations bounded through many layers of random weights.
    let a = 1.0 / (cols as f32).sqrt();
    Ok(match p {
        WeightPrecision::F32 => WeightMatrix::F32 {
            rows,
            cols,
            data: random_f32(rows * cols, a, seed),
        },
        WeightPrecision::F16 => WeightMatrix::F16 {
            rows,
            cols,
            data: random_f32(rows * cols, a, seed)
                .into_par_iter()
                .map(f16::from_f32)
                .collect(),
        },
        WeightPrecision::Quant(spec) => {
            if !cols.is_multiple_of(32) {
                return Err(Error::invalid_config(format!(
                    "cols {cols} is not a multiple of 32"
                )));
            }
            let words = rows * cols * spec.bits as usize / 32;
            let groups = rows * cols.div_ceil(spec.group_size);
            let data: Vec<u32> = (0..words)
                .into_par_iter()
                .map(|i| splitmix(seed.wrapping_mul(31) ^ i as u64) as u32)
                .collect();
            let step = a / spec.max_code() as f32 * 2.0;
            let scales = vec![f16::from_f32(step); groups];
            let offsets = match spec.scheme {
                Scheme::Symmetric => Vec::new(),
                Scheme::Asymmetric => vec![f16::from_f32(-a); groups],
            };
            WeightMatrix::Quantized(QuantizedMatrix {
                rows,
                cols,
                spec,
                data,
                scales,
                offsets,
                rotation: None,
                grid: None,
            })
        }
    })
}

/// A source whose matrices come from the load context's [`WeightStore`] when it holds them (an
/// earlier load's quantization of the same file, plan and methods), else from `inner`,
/// quantized by the context's [`lowbit_core::quant::Quantizer`] and noted in the store.
pub struct StoredTensors<'a> {
    /// Where tensors the store lacks come from.
    pub inner: &'a dyn TensorSource,
    /// The load context.
    pub ctx: std::cell::RefCell<&'a mut LoadContext>,
}

impl TensorSource for StoredTensors<'_> {
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.dims(name)
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.inner.read_f32(name)
    }

    fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        p: WeightPrecision,
        seed: u64,
    ) -> Result<WeightMatrix> {
        let tag = self.ctx.borrow().quantizer.tag();
        let label = match (tag.is_empty(), p) {
            (false, WeightPrecision::Quant(_)) => format!("{}+{tag}", p.label()),
            _ => p.label(),
        };
        let key = WeightStore::key(name, rows, cols, &label);
        if let Some(w) = self.ctx.borrow_mut().store.take(&key, rows, cols) {
            return Ok(w);
        }
        let plain = self.ctx.borrow().quantizer.is_plain();
        let w = if plain {
            self.inner.matrix(name, rows, cols, p, seed)?
        } else {
            check_matrix(self.inner, name, rows, cols)?;
            let data = self.inner.read_f32(name)?;
            self.ctx
                .borrow()
                .quantizer
                .quantize(name, data, rows, cols, p)?
        };
        self.ctx.borrow_mut().store.keep(key, &w);
        Ok(w)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.inner.vector(name, len)
    }

    fn precision_for(&self, name: &str, role: WeightPrecision) -> WeightPrecision {
        self.ctx.borrow().quantizer.precision_for(name, role)
    }

    fn uploaded(&self, id: WeightId, names: &[&str]) {
        self.ctx
            .borrow_mut()
            .uploads
            .push((id, names.iter().map(|n| n.to_string()).collect()));
    }
}

#[cfg(test)]
mod tests {
    //! Every source on a real file of its format (CI fetches them first): shapes in row-major
    //! order, matrices equal to the reader's f32 values (or within the quantizer's error),
    //! shape and size mismatches refused.

    use super::*;
    use lowbit_core::{ErrorCode, QuantSpec};
    use std::path::{Path, PathBuf};

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn open(rel: &str) -> ModelSource {
        ModelSource::open(&models().join(rel)).unwrap()
    }

    fn dense(w: WeightMatrix) -> Vec<f32> {
        match w {
            WeightMatrix::F32 { data, .. } => data,
            WeightMatrix::F16 { data, .. } => data.iter().map(|v| v.to_f32()).collect(),
            WeightMatrix::Quantized(q) => q.dequantize(),
        }
    }

    fn expect_loading_error<T>(r: Result<T>, needle: &str) {
        match r {
            Ok(_) => panic!("expected an error mentioning {needle:?}"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}");
                assert!(e.message.contains(needle), "{needle:?} not in {e}");
            }
        }
    }

    #[test]
    fn gguf_names_and_row_major_dims() {
        let src = open("SmolLM2-135M-Instruct.Q4_1.gguf");
        let t = tensors_of(&src);
        // SmolLM2-135M: dim 576, 3 kv heads of 64, FFN 1536; GGML stores [cols, rows].
        assert_eq!(t.dims("blk.0.attn_q.weight"), Some(vec![576, 576]));
        assert_eq!(t.dims("blk.0.attn_k.weight"), Some(vec![192, 576]));
        assert_eq!(t.dims("blk.0.ffn_down.weight"), Some(vec![576, 1536]));
        assert!(t.has("blk.29.ffn_up.weight") && !t.has("blk.30.ffn_up.weight"));
        let ModelSource::Gguf(g) = &src else {
            unreachable!()
        };
        let w = t
            .matrix("blk.0.attn_k.weight", 192, 576, WeightPrecision::F32, 0)
            .unwrap();
        assert_eq!(dense(w), g.dequantize("blk.0.attn_k.weight").unwrap());
        expect_loading_error(
            t.matrix("blk.0.attn_k.weight", 576, 192, WeightPrecision::F32, 0),
            "expected [576, 192]",
        );
        assert_eq!(t.vector("blk.0.attn_norm.weight", 576).unwrap().len(), 576);
        expect_loading_error(t.vector("blk.0.attn_norm.weight", 575), "expected 575");
        expect_loading_error(t.vector("blk.0.nothing", 576), "not found");
    }

    #[test]
    fn safetensors_hf_names_and_quantization() {
        let src = open("all-MiniLM-L6-v2");
        let t = tensors_of(&src);
        let ffn_up = "encoder.layer.0.intermediate.dense.weight";
        assert_eq!(t.dims(ffn_up), Some(vec![1536, 384]));
        assert!(t.has("pooler.dense.bias") && !t.has("lm_head.weight"));
        let ModelSource::HuggingFace(hf) = &src else {
            unreachable!()
        };
        let reference = hf.tensor_f32(ffn_up).unwrap();
        let f32w = t
            .matrix(ffn_up, 1536, 384, WeightPrecision::F32, 0)
            .unwrap();
        assert_eq!(dense(f32w), reference);
        // 8-bit groups of 32: the quantizer's error, far below the weights' own size.
        let spec = QuantSpec::new(8, 32, Scheme::Asymmetric).unwrap();
        let q = t
            .matrix(ffn_up, 1536, 384, WeightPrecision::Quant(spec), 0)
            .unwrap();
        assert!(matches!(&q, WeightMatrix::Quantized(m) if m.spec == spec));
        assert_eq!(q.shape(), (1536, 384));
        let back = dense(q);
        let rms = |v: &mut dyn Iterator<Item = f32>| {
            let (s, n) = v.fold((0f64, 0usize), |(s, n), x| (s + f64::from(x * x), n + 1));
            (s / n as f64).sqrt()
        };
        let err = rms(&mut reference.iter().zip(&back).map(|(r, b)| r - b));
        let size = rms(&mut reference.iter().copied());
        assert!(
            err < 0.01 * size && err > 0.0,
            "rms error {err} for rms {size}"
        );
        expect_loading_error(
            t.matrix(ffn_up, 384, 1536, WeightPrecision::F32, 0),
            "has shape [1536, 384], expected [384, 1536]",
        );
        let ln = t.vector("embeddings.LayerNorm.weight", 384).unwrap();
        assert_eq!(ln, hf.tensor_f32("embeddings.LayerNorm.weight").unwrap());
        // A vector is not a matrix.
        expect_loading_error(
            t.matrix(
                "embeddings.LayerNorm.weight",
                384,
                1,
                WeightPrecision::F32,
                0,
            ),
            "has shape [384]",
        );
    }

    #[test]
    fn ct2_names_f16_and_flattened_kernels() {
        let src = open("whisper-tiny.en/model.bin");
        let t = tensors_of(&src);
        let qkv = "encoder/layer_0/self_attention/linear_0/weight";
        assert_eq!(t.dims(qkv), Some(vec![1152, 384]));
        let ModelSource::Ct2(c) = &src else {
            unreachable!()
        };
        // The file's f16 values survive f16 → f32 → f16 bit for bit.
        let WeightMatrix::F16 { data, .. } =
            t.matrix(qkv, 1152, 384, WeightPrecision::F16, 0).unwrap()
        else {
            panic!("not f16")
        };
        let stored = c.model().variable_bytes(qkv).unwrap();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(bytes == stored, "f16 values changed on the way through f32");
        // A convolution kernel [out, in, k] reads as out × (in·k).
        let conv = t
            .matrix("encoder/conv1/weight", 384, 240, WeightPrecision::F32, 0)
            .unwrap();
        assert_eq!(
            dense(conv),
            c.model().variable_f32("encoder/conv1/weight").unwrap()
        );
        expect_loading_error(
            t.matrix("encoder/conv1/weight", 384, 80, WeightPrecision::F32, 0),
            "has shape [384, 80, 3]",
        );
        // Aliases and integer attributes.
        assert!(t.has("decoder/projection/weight"));
        assert_eq!(t.vector("decoder/num_heads", 1).unwrap(), [6.0]);
    }

    #[test]
    fn random_makes_what_it_is_asked() {
        let t = RandomTensors::default();
        assert!(!t.has("anything"));
        assert_eq!(t.vector("norm", 5).unwrap(), [1.0; 5]);
        let a = dense(t.matrix("w", 4, 64, WeightPrecision::F32, 7).unwrap());
        let b = dense(t.matrix("w", 4, 64, WeightPrecision::F32, 7).unwrap());
        let c = dense(t.matrix("w", 4, 64, WeightPrecision::F32, 8).unwrap());
        assert_eq!(a.len(), 256);
        assert!(
            a == b && a != c,
            "seeded: same seed same values, another seed others"
        );
        let bound = 1.0 / 8.0; // 1/sqrt(cols)
        assert!(a.iter().all(|v| v.abs() <= bound));
        expect_loading_error(t.read_f32("w"), "no stored tensor");
    }
}
