//! CTranslate2 `model.bin` reader (binary versions 2 to 6; ctranslate2 ≥ 3 writes 6).
//!
//! Layout, all little-endian (`python/ctranslate2/specs/model_spec.py` `_serialize`, read by
//! `src/models/model.cc` `Model::load`): u32 binary version; from version 2 the spec name
//! (a string) and a u32 spec revision; u32 variable count; per variable its name (string), u8
//! rank, `rank` u32 dimensions (row-major, last contiguous), then from version 4 a u8 dtype id
//! and a u32 byte count (before version 4 a u8 item width and a u32 element count), then the
//! data; from version 3 a u32 alias count and (alias, target) string pairs. A string is a u16
//! length that counts a trailing NUL, then that many bytes.
//!
//! Quantized weights: an int8 `…weight` has a `…weight_scale` of one f32 per row and holds
//! `round(value * scale)`; an int16 weight has one scalar scale (ctranslate2's default is 1000
//! when the file has none). Integer variables without a scale (`num_heads`, flags) are plain
//! integers.

use crate::error::{Error, Result};
use crate::formats::file_bytes::FileBytes;
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// Newest binary version this reader knows (ctranslate2's `CURRENT_BINARY_VERSION`).
pub const MAX_BINARY_VERSION: u32 = 6;

/// ctranslate2's scale for int16 weights saved without one (`Quantize::global_int16_scale`).
const DEFAULT_INT16_SCALE: f32 = 1000.0;

/// Largest rank accepted; ctranslate2's variables have at most 4 dimensions.
const MAX_RANK: usize = 8;

/// A CTranslate2 element type (the ids of its `DataType` enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ct2Dtype {
    /// f32 (id 0).
    F32,
    /// i8 (id 1): quantized weights, flags, strings.
    I8,
    /// i16 (id 2): quantized weights, small integer attributes.
    I16,
    /// i32 (id 3).
    I32,
    /// IEEE half (id 4).
    F16,
    /// bfloat16 (id 5).
    BF16,
}

impl Ct2Dtype {
    /// The type of dtype id `id`.
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Ct2Dtype::F32,
            1 => Ct2Dtype::I8,
            2 => Ct2Dtype::I16,
            3 => Ct2Dtype::I32,
            4 => Ct2Dtype::F16,
            5 => Ct2Dtype::BF16,
            _ => return None,
        })
    }

    /// The type binary versions before 4 inferred from an item width.
    fn from_item_size(size: u8) -> Option<Self> {
        Some(match size {
            4 => Ct2Dtype::F32,
            2 => Ct2Dtype::I16,
            1 => Ct2Dtype::I8,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Ct2Dtype::I8 => 1,
            Ct2Dtype::I16 | Ct2Dtype::F16 | Ct2Dtype::BF16 => 2,
            Ct2Dtype::F32 | Ct2Dtype::I32 => 4,
        }
    }
}

impl fmt::Display for Ct2Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One variable of a `model.bin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ct2Variable {
    /// Scoped name, e.g. `encoder/layer_0/self_attention/linear_0/weight`.
    pub name: String,
    /// Element type.
    pub dtype: Ct2Dtype,
    /// Shape, row-major (last dimension contiguous); empty for a scalar.
    pub shape: Vec<u64>,
}

impl Ct2Variable {
    /// Number of elements (1 for a scalar).
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A parsed `model.bin` holding its bytes (memory-mapped under feature `native`).
pub struct Ct2Model {
    binary_version: u32,
    spec: String,
    spec_revision: u32,
    variables: Vec<Ct2Variable>,
    /// Absolute byte range of each variable's data, parallel to `variables`.
    ranges: Vec<Range<usize>>,
    by_name: HashMap<String, usize>,
    aliases: BTreeMap<String, String>,
    bytes: FileBytes,
}

/// A bounds-checked cursor over the file; every read past the end is an error naming what
/// was being read.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                fail(format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-prefixed string; the length counts a trailing NUL, and like ctranslate2 the
    /// string ends at the first NUL.
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let raw = self.take(n, what)?;
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8(raw.to_vec()).map_err(|_| fail(format!("{what} is not UTF-8")))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

fn fail(message: String) -> Error {
    Error::model_loading(format!("CTranslate2 model.bin: {message}"))
}

impl Ct2Model {
    /// Opens and parses a `model.bin` (memory-mapped under feature `native`).
    pub fn open(path: &Path) -> Result<Self> {
        FileBytes::parse_file(path, Self::parse)
    }

    /// Parses a `model.bin` held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(FileBytes::Owned(bytes))
    }

    /// Whether `bytes` start like a `model.bin`: a known binary version followed by a
    /// plausible spec-name length. A cheap check for format recognition; [`Ct2Model::parse`]
    /// validates the rest.
    pub fn looks_like(bytes: &[u8]) -> bool {
        let Some(head) = bytes.get(..6) else {
            return false;
        };
        let version = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let name_len = u16::from_le_bytes([head[4], head[5]]);
        (2..=MAX_BINARY_VERSION).contains(&version) && (2..=256).contains(&name_len)
    }

    /// Parses a `model.bin` from its bytes, checking every size against the file.
    ///
    /// Errors: `UNSUPPORTED_MODEL` for a binary version this reader does not know (or one
    /// without a spec name), `MODEL_LOADING_FAILED` for anything truncated or inconsistent.
    pub fn parse(bytes: FileBytes) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
        };
        let binary_version = c.u32("binary version")?;
        if !(2..=MAX_BINARY_VERSION).contains(&binary_version) {
            return Err(Error::unsupported(format!(
                "CTranslate2 model.bin: binary version {binary_version}; this reader knows 2 to {MAX_BINARY_VERSION}"
            )));
        }
        let spec = c.string("spec name")?;
        if spec.is_empty() {
            return Err(fail("empty spec name".into()));
        }
        let spec_revision = c.u32("spec revision")?;
        let count = c.u32("variable count")? as usize;
        // Each variable takes at least a name length, a rank, a dtype and a byte count.
        if count > c.remaining() / 8 {
            return Err(fail(format!(
                "truncated: {count} variables need at least {} bytes, {} remain",
                count.saturating_mul(8),
                c.remaining()
            )));
        }
        let mut variables = Vec::with_capacity(count);
        let mut ranges = Vec::with_capacity(count);
        let mut by_name = HashMap::with_capacity(count);
        for i in 0..count {
            let name = c.string(&format!("name of variable {i}"))?;
            let what = |m: String| fail(format!("variable {name:?}: {m}"));
            let rank = c.u8("rank")? as usize;
            if rank > MAX_RANK {
                return Err(what(format!("rank {rank} is above {MAX_RANK}")));
            }
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(u64::from(c.u32("dimension")?));
            }
            let (dtype, n_bytes) = if binary_version >= 4 {
                let id = c.u8("dtype")?;
                let dtype =
                    Ct2Dtype::from_id(id).ok_or_else(|| what(format!("unknown dtype id {id}")))?;
                (dtype, u64::from(c.u32("byte count")?))
            } else {
                let size = c.u8("item size")?;
                let dtype = Ct2Dtype::from_item_size(size)
                    .ok_or_else(|| what(format!("unknown item size {size}")))?;
                (dtype, u64::from(c.u32("element count")?) * u64::from(size))
            };
            let expected = shape
                .iter()
                .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| what(format!("shape {shape:?} overflows")))?;
            if n_bytes != expected {
                return Err(what(format!(
                    "{n_bytes} bytes of data do not hold {dtype} {shape:?} ({expected} bytes)"
                )));
            }
            let start = c.pos;
            c.take(n_bytes as usize, &format!("the data of variable {name:?}"))?;
            if by_name.insert(name.clone(), variables.len()).is_some() {
                return Err(fail(format!("variable {name:?} appears twice")));
            }
            variables.push(Ct2Variable { name, dtype, shape });
            ranges.push(start..c.pos);
        }
        let mut aliases = BTreeMap::new();
        if binary_version >= 3 {
            let n = c.u32("alias count")? as usize;
            if n > c.remaining() / 4 {
                return Err(fail(format!(
                    "truncated: {n} aliases need at least {} bytes, {} remain",
                    n.saturating_mul(4),
                    c.remaining()
                )));
            }
            for _ in 0..n {
                let alias = c.string("alias")?;
                let target = c.string("alias target")?;
                if !by_name.contains_key(&target) {
                    return Err(fail(format!(
                        "alias {alias:?} names {target:?}, which is not a variable"
                    )));
                }
                if by_name.contains_key(&alias) {
                    return Err(fail(format!("alias {alias:?} is also a variable")));
                }
                aliases.insert(alias, target);
            }
        }
        Ok(Ct2Model {
            binary_version,
            spec,
            spec_revision,
            variables,
            ranges,
            by_name,
            aliases,
            bytes,
        })
    }

    /// The binary version (6 for files of ctranslate2 ≥ 3).
    pub fn binary_version(&self) -> u32 {
        self.binary_version
    }
    /// The spec name, e.g. `WhisperSpec`.
    pub fn spec(&self) -> &str {
        &self.spec
    }
    /// The spec revision (bumped when a spec renames its weights).
    pub fn spec_revision(&self) -> u32 {
        self.spec_revision
    }

    /// The architecture the spec describes: its name without `Spec` (and `Model`), lower-case
    /// (`WhisperSpec` → `whisper`, `TransformerDecoderModelSpec` → `transformerdecoder`).
    pub fn architecture(&self) -> String {
        let s = self.spec.strip_suffix("Spec").unwrap_or(&self.spec);
        let s = s.strip_suffix("Model").unwrap_or(s);
        s.to_ascii_lowercase()
    }

    /// All stored variables, in file order (sorted by name, as ctranslate2 writes them).
    pub fn variables(&self) -> &[Ct2Variable] {
        &self.variables
    }

    /// Aliases and the variables they name (a tied output projection, for instance).
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// The variable `name`, following an alias.
    pub fn variable(&self, name: &str) -> Option<&Ct2Variable> {
        self.index(name).map(|i| &self.variables[i])
    }

    /// The raw little-endian bytes of variable `name` (following an alias).
    pub fn variable_bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.require(name)?;
        Ok(&self.bytes[self.ranges[i].clone()])
    }

    /// Variable `name` (following an alias) as f32, row-major: float types converted, an
    /// int8 or int16 weight (a name ending in `weight`) divided by its `…_scale`, other
    /// integers as they are.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing variable, a quantized weight without its
    /// scale or a scale of the wrong shape.
    pub fn variable_f32(&self, name: &str) -> Result<Vec<f32>> {
        let i = self.require(name)?;
        let var = &self.variables[i];
        let values = self.converted(i);
        let quantized = matches!(var.dtype, Ct2Dtype::I8 | Ct2Dtype::I16);
        // Scales belong to the stored variable: an alias shares its target's scale.
        if quantized && var.name.ends_with("weight") {
            return self.dequantize(var, values);
        }
        Ok(values)
    }

    /// Variable `i`'s elements converted to f32 as stored: no scale applied.
    fn converted(&self, i: usize) -> Vec<f32> {
        let raw = &self.bytes[self.ranges[i].clone()];
        match self.variables[i].dtype {
            Ct2Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Ct2Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Ct2Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Ct2Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            Ct2Dtype::I8 => raw.iter().map(|&b| f32::from(b as i8)).collect(),
            Ct2Dtype::I16 => raw
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
        }
    }

    /// Divides the integer codes of weight `var` by its scale: per row for int8, one scalar
    /// for int16.
    fn dequantize(&self, var: &Ct2Variable, mut values: Vec<f32>) -> Result<Vec<f32>> {
        let scale_name = format!("{}_scale", var.name);
        // The scale is read as stored, never dequantized itself: an alias can point a
        // scale back at a weight (its own or another's), which would otherwise recurse
        // without end.
        let scales = match self.index(&scale_name) {
            Some(s) if self.variables[s].name == var.name => {
                return Err(fail(format!(
                    "{scale_name:?} is the weight {:?} itself",
                    var.name
                )))
            }
            Some(s) => self.converted(s),
            None if var.dtype == Ct2Dtype::I16 => vec![DEFAULT_INT16_SCALE],
            None => {
                return Err(fail(format!(
                    "int8 weight {:?} has no {scale_name:?}",
                    var.name
                )))
            }
        };
        let rows = var.shape.first().copied().unwrap_or(1) as usize;
        let per_row = match scales.len() {
            1 => values.len(),
            n if n == rows && rows > 0 => values.len() / rows,
            n => {
                return Err(fail(format!(
                    "{scale_name:?} holds {n} scales for a weight of shape {:?}",
                    var.shape
                )))
            }
        };
        if scales.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(fail(format!(
                "{scale_name:?} holds a zero or non-finite scale"
            )));
        }
        if per_row > 0 {
            for (row, s) in values.chunks_mut(per_row).zip(scales.iter().cycle()) {
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
        Ok(values)
    }

    fn index(&self, name: &str) -> Option<usize> {
        let target = self.aliases.get(name).map_or(name, String::as_str);
        self.by_name.get(target).copied()
    }

    fn require(&self, name: &str) -> Result<usize> {
        self.index(name)
            .ok_or_else(|| fail(format!("variable {name:?} not found")))
    }
}

impl fmt::Debug for Ct2Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ct2Model")
            .field("spec", &self.spec)
            .field("binary_version", &self.binary_version)
            .field("variables", &self.variables.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}
