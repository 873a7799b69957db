//! safetensors reader: a u64 little-endian header length, a JSON header mapping tensor names to
//! `{dtype, shape, data_offsets}` (plus an optional `__metadata__` string map), then the data.
//! Shapes are row-major: the LAST dimension is contiguous (the opposite of GGML's `dims`).

use crate::error::{Error, Result};
use crate::formats::file_bytes::FileBytes;
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// Largest JSON header accepted (the reference implementation's limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A safetensors element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SafeDtype {
    /// bool, one byte.
    Bool,
    /// u8.
    U8,
    /// i8.
    I8,
    /// 8-bit float, e5m2.
    F8E5M2,
    /// 8-bit float, e4m3.
    F8E4M3,
    /// i16.
    I16,
    /// u16.
    U16,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// i32.
    I32,
    /// u32.
    U32,
    /// f32.
    F32,
    /// f64.
    F64,
    /// i64.
    I64,
    /// u64.
    U64,
}

impl SafeDtype {
    /// Parses the header's dtype string (`F32`, `BF16`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        use SafeDtype::*;
        Some(match name {
            "BOOL" => Bool,
            "U8" => U8,
            "I8" => I8,
            "F8_E5M2" => F8E5M2,
            "F8_E4M3" => F8E4M3,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "F64" => F64,
            "I64" => I64,
            "U64" => U64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        use SafeDtype::*;
        match self {
            Bool | U8 | I8 | F8E5M2 | F8E4M3 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }
}

impl fmt::Display for SafeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeTensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: SafeDtype,
    /// Shape, row-major (last dimension contiguous).
    pub shape: Vec<u64>,
    /// Byte range of the data, relative to the end of the header.
    pub data_offsets: (u64, u64),
}

impl SafeTensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

/// A parsed safetensors file holding its bytes (memory-mapped under feature `native`).
pub struct SafeTensors {
    metadata: BTreeMap<String, String>,
    tensors: Vec<SafeTensorInfo>,
    /// Absolute byte range of each tensor's data, parallel to `tensors`.
    ranges: Vec<Range<usize>>,
    by_name: HashMap<String, usize>,
    bytes: FileBytes,
}

impl SafeTensors {
    /// Opens and parses a safetensors file (memory-mapped under feature `native`).
    pub fn open(path: &Path) -> Result<Self> {
        FileBytes::parse_file(path, Self::parse)
    }

    /// Parses a safetensors file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(FileBytes::Owned(bytes))
    }

    /// Parses a safetensors file from its bytes.
    pub fn parse(bytes: FileBytes) -> Result<Self> {
        let fail = |m: String| Error::model_loading(format!("safetensors: {m}"));
        let file_len = bytes.len() as u64;
        let Some(len_bytes) = bytes.get(..8) else {
            return Err(fail(format!(
                "truncated header: file has {file_len} bytes, the header length needs 8"
            )));
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(len_bytes);
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(fail(format!(
                "header length {header_len} runs past the end of the file ({file_len} bytes)"
            )));
        }
        let data_start = 8 + header_len as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..data_start])
                .map_err(|e| fail(format!("header is not a JSON object: {e}")))?;
        let data_len = file_len - data_start as u64;

        let mut metadata = BTreeMap::new();
        let mut entries = Vec::with_capacity(header.len());
        for (name, value) in header {
            if name == "__metadata__" {
                let map = value
                    .as_object()
                    .ok_or_else(|| fail("__metadata__ is not an object".into()))?;
                for (k, v) in map {
                    let v = v
                        .as_str()
                        .ok_or_else(|| fail(format!("__metadata__.{k} is not a string")))?;
                    metadata.insert(k.clone(), v.to_owned());
                }
                continue;
            }
            let info =
                tensor_info(&name, &value).map_err(|m| fail(format!("tensor {name}: {m}")))?;
            let (begin, end) = info.data_offsets;
            if end > data_len {
                return Err(fail(format!(
                    "tensor {name}: data {begin}..{end} runs past the end of the data ({data_len} bytes)"
                )));
            }
            entries.push((info, data_start + begin as usize..data_start + end as usize));
        }
        // Sorted whatever order the JSON map keeps (serde_json's `preserve_order` may be on).
        entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.name.clone(), i))
            .collect();
        let (tensors, ranges) = entries.into_iter().unzip();
        Ok(SafeTensors {
            metadata,
            tensors,
            ranges,
            by_name,
            bytes,
        })
    }

    /// The `__metadata__` string map (empty if absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &[SafeTensorInfo] {
        &self.tensors
    }
    /// The entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.index(name)?;
        Ok(&self.bytes[self.ranges[i].clone()])
    }

    /// Tensor `name` converted to f32 (row-major), for F32, F16 and BF16 tensors;
    /// `UNSUPPORTED_MODEL` for other dtypes.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let i = self.index(name)?;
        let raw = &self.bytes[self.ranges[i].clone()];
        Ok(match self.tensors[i].dtype {
            SafeDtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            SafeDtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            SafeDtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::unsupported(format!(
                    "safetensors tensor {name}: dtype {other} cannot be converted to f32"
                )))
            }
        })
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::model_loading(format!("safetensors: tensor {name} not found")))
    }
}

impl fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeTensors")
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// Reads one header entry; the data range is checked against the shape but not yet the file.
fn tensor_info(name: &str, v: &serde_json::Value) -> std::result::Result<SafeTensorInfo, String> {
    let obj = v.as_object().ok_or("entry is not an object")?;
    let dtype_name = obj
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or("missing dtype")?;
    let dtype =
        SafeDtype::from_name(dtype_name).ok_or_else(|| format!("unknown dtype {dtype_name:?}"))?;
    let shape = obj
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("missing shape")?
        .iter()
        .map(|d| {
            d.as_u64()
                .ok_or("shape entry is not a non-negative integer")
        })
        .collect::<std::result::Result<Vec<u64>, _>>()?;
    let offsets = obj
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .ok_or("missing data_offsets")?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => (
            b.as_u64().ok_or("data_offsets are not integers")?,
            e.as_u64().ok_or("data_offsets are not integers")?,
        ),
        _ => return Err("data_offsets must hold two integers".into()),
    };
    let size = shape
        .iter()
        .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if end < begin || end - begin != size {
        return Err(format!(
            "data_offsets [{begin}, {end}] do not hold {size} bytes of {dtype} {shape:?}"
        ));
    }
    Ok(SafeTensorInfo {
        name: name.to_owned(),
        dtype,
        shape,
        data_offsets: (begin, end),
    })
}
