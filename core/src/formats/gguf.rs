//! GGUF reader (versions 2 and 3, little-endian): metadata, tensor directory and tensor data,
//! validated against the file size on open.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 key/value count, the key/values, the
//! tensor infos, padding to `general.alignment` (default 32), then the tensor data; each tensor's
//! offset is relative to the start of the data section.

use crate::error::{Error, Result};
use crate::formats::file_bytes::FileBytes;
use crate::formats::ggml::{dequantize_row, GgmlType};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (llama.cpp writes none; a corrupt file could
/// otherwise nest millions deep and overflow the stack).
const MAX_ARRAY_DEPTH: usize = 4;
/// Output values per parallel task when dequantizing.
const VALUES_PER_TASK: usize = 1 << 16;

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

/// One entry of the tensor directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the contiguous row length.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (validated not to overflow when the file was opened).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
    /// Values per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Number of rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d))
    }
    /// Bytes of data.
    pub fn n_bytes(&self) -> u64 {
        self.ggml_type
            .bytes_for(self.n_elements())
            .unwrap_or(u64::MAX)
    }
}

/// A parsed GGUF file holding its bytes (memory-mapped under feature `native`).
pub struct GgufFile {
    /// Metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    tensors: Vec<GgufTensorInfo>,
    /// Absolute byte range of each tensor's data, parallel to `tensors`.
    ranges: Vec<Range<usize>>,
    by_name: HashMap<String, usize>,
    bytes: FileBytes,
}

impl GgufFile {
    /// Opens and parses a GGUF file (memory-mapped under feature `native`, read otherwise).
    pub fn open(path: &Path) -> Result<Self> {
        FileBytes::parse_file(path, Self::parse)
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(FileBytes::Owned(bytes))
    }

    /// Parses a GGUF file from its bytes.
    pub fn parse(bytes: FileBytes) -> Result<Self> {
        let header = parse_header(&bytes)?;
        let mut by_name = HashMap::with_capacity(header.tensors.len());
        for (i, t) in header.tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::model_loading(format!(
                    "tensor name {:?} appears twice",
                    t.name
                )));
            }
        }
        Ok(GgufFile {
            metadata: header.metadata,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            tensors: header.tensors,
            ranges: header.ranges,
            by_name,
            bytes,
        })
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Alignment of the data section and tensor offsets.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
    /// String metadata.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key) {
            Some(GgufValue::String(s)) => Some(s),
            _ => None,
        }
    }
    /// Integer metadata (any integer type; negative values give `None`).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key) {
            Some(GgufValue::U64(v)) => Some(*v),
            Some(GgufValue::I64(v)) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    /// Float metadata (f32 or f64; integers are converted too).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.metadata.get(key) {
            Some(GgufValue::F64(v)) => Some(*v as f32),
            Some(GgufValue::U64(v)) => Some(*v as f32),
            Some(GgufValue::I64(v)) => Some(*v as f32),
            _ => None,
        }
    }
    /// Array metadata, e.g. `tokenizer.ggml.tokens`.
    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        match self.metadata.get(key) {
            Some(GgufValue::Array(a)) => Some(a),
            _ => None,
        }
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    /// The directory entry of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }
    /// The dims of a tensor in GGML order (`dims[0]` is the row length).
    ///
    /// In a quantized model file (`lowbit quantize`) a matrix stored in `lowbit.weights` has its
    /// dimensions under `lowbit.dims.NAME`; they are returned for it too.
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        if let Some(t) = self.tensor_info(name) {
            return Some(t.dims.clone());
        }
        let dims = self.get_array(&format!("lowbit.dims.{name}"))?;
        dims.iter()
            .map(|d| match d {
                GgufValue::U64(v) => Some(*v),
                _ => None,
            })
            .collect()
    }

    /// The raw (still quantized) bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.index(name)?;
        Ok(&self.bytes[self.ranges[i].clone()])
    }

    /// Dequantizes a whole tensor to f32, row-major (`dims[0]` values per row).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let rows = self.tensor_info(name).map(|t| t.n_rows()).unwrap_or(0);
        self.dequantize_rows(name, 0, rows)
    }

    /// Dequantizes rows `first_row..first_row + n_rows` of tensor `name` (a row is `dims[0]`
    /// values; rows are counted over the product of the remaining dims), so large tables can be
    /// converted a slice at a time.
    ///
    /// `UNSUPPORTED_MODEL` when the tensor's type has no dequantizer; `MODEL_LOADING_FAILED`
    /// for an unknown tensor or a row range past its end.
    pub fn dequantize_rows(&self, name: &str, first_row: u64, n_rows: u64) -> Result<Vec<f32>> {
        let i = self.index(name)?;
        let info = &self.tensors[i];
        let ty = info.ggml_type;
        if !ty.can_dequantize() {
            return Err(Error::unsupported(format!(
                "tensor {name}: ggml type {ty} (id {}) cannot be dequantized",
                ty.id()
            )));
        }
        let end_row = first_row.checked_add(n_rows);
        if !matches!(end_row, Some(e) if e <= info.n_rows()) {
            return Err(Error::model_loading(format!(
                "tensor {name}: rows {first_row}..+{n_rows} out of range (it has {} rows)",
                info.n_rows()
            )));
        }
        let row_len = to_usize(info.row_len(), "row length")?;
        let row_bytes = ty
            .bytes_for(info.row_len())
            .ok_or_else(|| Error::model_loading(format!("tensor {name}: bad row length")))?;
        let row_bytes = to_usize(row_bytes, "row size")?;
        let n_out = to_usize(n_rows, "row count")?
            .checked_mul(row_len)
            .ok_or_else(|| Error::model_loading(format!("tensor {name}: size overflows")))?;
        if n_out == 0 {
            return Ok(Vec::new());
        }
        // The range lies inside the tensor, which was checked to lie inside the file.
        let start = self.ranges[i].start + to_usize(first_row, "row")? * row_bytes;
        let src = &self.bytes[start..start + to_usize(n_rows, "row count")? * row_bytes];
        let mut out = vec![0f32; n_out];
        let rows_per_task = (VALUES_PER_TASK / row_len).max(1);
        out.par_chunks_mut(rows_per_task * row_len)
            .zip(src.par_chunks(rows_per_task * row_bytes))
            .try_for_each(|(dst, src)| dequantize_row(ty, src, dst))
            .map_err(|e| Error::new(e.code, format!("tensor {name}: {}", e.message)))?;
        Ok(out)
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::model_loading(format!("tensor {name} not found")))
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::model_loading(format!("{what} {v} exceeds usize")))
}

/// Everything read before the tensor data.
struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    alignment: u64,
    data_offset: u64,
    tensors: Vec<GgufTensorInfo>,
    ranges: Vec<Range<usize>>,
}

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(4, "magic")?;
    if magic != b"GGUF" {
        return Err(Error::model_loading(format!(
            "bad magic {magic:02x?} (expected \"GGUF\"): not a GGUF file"
        )));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::model_loading(
                "unsupported GGUF version 1 (re-convert the model with a current llama.cpp)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::model_loading(
                "unsupported big-endian GGUF file (only little-endian is read)",
            ))
        }
        v => {
            return Err(Error::model_loading(format!(
                "unsupported GGUF version {v} (2 and 3 are read)"
            )))
        }
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Smallest encodings: a key/value is an 8-byte key length, a 4-byte type and a 1-byte value;
    // a tensor info an 8-byte name length, a 4-byte dim count, one 8-byte dim, a 4-byte type
    // and an 8-byte offset.
    let n_kv = r.count(n_kv, 13, "metadata key/values")?;
    let n_tensors = r.count(n_tensors, 32, "tensors")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key_at = r.pos;
        let key = r.utf8_string("metadata key")?;
        let ty = r.u32("metadata value type")?;
        let value = r
            .value(ty, 0)
            .map_err(|e| Error::model_loading(format!("metadata {key:?}: {}", e.message)))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Error::model_loading(format!(
                "metadata key {key:?} at offset {key_at} appears twice"
            )));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U64(a)) if a.is_power_of_two() => *a,
        Some(v) => {
            return Err(Error::model_loading(format!(
                "general.alignment = {v:?} is not a power of two"
            )))
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        tensors.push(r.tensor_info()?);
    }
    let data_offset = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::model_loading("data section offset overflows"))?;

    let file_len = buf.len() as u64;
    let mut ranges = Vec::with_capacity(tensors.len());
    for t in &tensors {
        ranges.push(tensor_range(t, alignment, data_offset, file_len)?);
    }
    Ok(Header {
        version,
        metadata,
        alignment,
        data_offset,
        tensors,
        ranges,
    })
}

/// Checks a tensor's shape, type and placement; returns its absolute byte range.
fn tensor_range(
    t: &GgufTensorInfo,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<Range<usize>> {
    let name = &t.name;
    let ty = t.ggml_type;
    let fail = |what: String| Err(Error::model_loading(format!("tensor {name}: {what}")));
    let rows = t
        .dims
        .iter()
        .skip(1)
        .try_fold(1u64, |a, &d| a.checked_mul(d));
    let n = match rows.and_then(|r| r.checked_mul(t.row_len())) {
        Some(n) if n <= i64::MAX as u64 => n,
        _ => return fail(format!("dims {:?} overflow", t.dims)),
    };
    if !t.row_len().is_multiple_of(ty.block_size() as u64) {
        return fail(format!(
            "row length {} is not a multiple of the {ty} block size {}",
            t.row_len(),
            ty.block_size()
        ));
    }
    if !t.offset.is_multiple_of(alignment) {
        return fail(format!(
            "offset {} is not a multiple of the alignment {alignment}",
            t.offset
        ));
    }
    let size = match ty.bytes_for(n) {
        Some(s) => s,
        None => return fail(format!("size of {n} {ty} values overflows")),
    };
    let start = data_offset.checked_add(t.offset);
    let end = start.and_then(|s| s.checked_add(size));
    match (start, end) {
        (Some(s), Some(e)) if e <= file_len => Ok(s as usize..e as usize),
        _ => fail(format!(
            "data ({size} bytes at data offset {} + {}) runs past the end of the file ({file_len} bytes)",
            data_offset, t.offset
        )),
    }
}

/// A bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::model_loading(format!(
                "truncated header: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks a count of items of at least `min_bytes` each against the bytes left, so a
    /// corrupt count can never drive a huge allocation.
    fn count(&self, n: u64, min_bytes: usize, what: &str) -> Result<usize> {
        let max = self.remaining() / min_bytes;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(Error::model_loading(format!(
                "absurd count of {what}: {n} at offset {}, but only {} bytes remain (truncated or corrupt file)",
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn raw_string(&mut self, what: &str) -> Result<&'a [u8]> {
        let at = self.pos;
        let len = self.u64(what)?;
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => self.take(n, what),
            _ => Err(Error::model_loading(format!(
                "{what}: string length {len} at offset {at} runs past the end of the file ({} bytes)",
                self.buf.len()
            ))),
        }
    }

    fn utf8_string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let raw = self.raw_string(what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| Error::model_loading(format!("{what} at offset {at} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        use GgufValue::*;
        Ok(match ty {
            0 => U64(self.array::<1>("u8")?[0].into()),
            1 => I64((self.array::<1>("i8")?[0] as i8).into()),
            2 => U64(u16::from_le_bytes(self.array("u16")?).into()),
            3 => I64(i16::from_le_bytes(self.array("i16")?).into()),
            4 => U64(self.u32("u32")?.into()),
            5 => I64(i32::from_le_bytes(self.array("i32")?).into()),
            6 => F64(f32::from_le_bytes(self.array("f32")?).into()),
            7 => Bool(self.array::<1>("bool")?[0] != 0),
            // Values (unlike keys and tensor names) tolerate invalid UTF-8: some converters
            // write raw byte tokens, and one bad token should not make a model unloadable.
            8 => String(
                std::string::String::from_utf8_lossy(self.raw_string("string")?).into_owned(),
            ),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::model_loading(format!(
                        "arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {}",
                        self.pos
                    )));
                }
                let elem_ty = self.u32("array element type")?;
                let min_bytes = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(Error::model_loading(format!(
                            "unknown array element type {other} at offset {}",
                            self.pos - 4
                        )))
                    }
                };
                let n = self.u64("array length")?;
                let n = self.count(n, min_bytes, "array elements")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Array(items)
            }
            10 => U64(self.u64("u64")?),
            11 => I64(i64::from_le_bytes(self.array("i64")?)),
            12 => F64(f64::from_le_bytes(self.array("f64")?)),
            other => {
                return Err(Error::model_loading(format!(
                    "unknown value type {other} at offset {}",
                    self.pos - 4
                )))
            }
        })
    }

    fn tensor_info(&mut self) -> Result<GgufTensorInfo> {
        let name = self.utf8_string("tensor name")?;
        let fail = |what: String| Error::model_loading(format!("tensor {name}: {what}"));
        let n_dims = self.u32("tensor dim count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(fail(format!("{n_dims} dims (1..={MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dim")?);
        }
        let type_at = self.pos;
        let type_id = self.u32("tensor type")?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            fail(format!(
                "unknown ggml type id {type_id} at offset {type_at}"
            ))
        })?;
        let offset = self.u64("tensor offset")?;
        Ok(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    /// A minimal v3 file: one u32 key and one 4-value f32 tensor.
    fn tiny() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(b"k.x");
        b.extend(4u32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(b"t");
        b.extend(1u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().next_multiple_of(32), 0);
        for v in [1.0f32, -2.0, 0.5, 3.25] {
            b.extend(v.to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_hand_built_file() {
        let g = GgufFile::from_bytes(tiny()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_u64("k.x"), Some(7));
        assert_eq!(g.tensor_dims("t"), Some(vec![4]));
        assert_eq!(g.dequantize("t").unwrap(), vec![1.0, -2.0, 0.5, 3.25]);
        assert_eq!(g.dequantize_rows("t", 0, 1).unwrap().len(), 4);
        assert!(g.dequantize_rows("t", 1, 1).is_err());
    }

    #[test]
    fn version_one_and_bad_magic_are_refused() {
        let mut b = tiny();
        b[4] = 1;
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert_eq!(e.code, ErrorCode::ModelLoadingFailed);
        assert!(e.message.contains("version 1"), "{e}");
        let mut b = tiny();
        b[0] = b'X';
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert!(e.message.contains("magic"), "{e}");
    }
}
