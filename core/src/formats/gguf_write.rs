//! GGUF writer (version 3): metadata and tensors, each tensor's data aligned to
//! `general.alignment` (32) so the file memory-maps like any GGUF. Integers are written as
//! u64/i64 and floats as f64 ([`GgufValue`] keeps no narrower type), which every GGUF reader,
//! this crate's included, accepts.

use super::ggml::GgmlType;
use super::gguf::{GgufValue, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use std::io::Write;

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_of(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(b) => out.push(u8::from(*b)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            let ty = items.first().map_or(8, type_of);
            if items.iter().any(|i| type_of(i) != ty) {
                return Err(Error::invalid_config(
                    "a GGUF array must hold values of one type",
                ));
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata key.
    pub fn set(&mut self, key: &str, value: GgufValue) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
    }

    /// Adds a tensor: `dims` in GGML order (`dims[0]` contiguous), `data` its bytes in `ty`.
    ///
    /// Errors: `INVALID_CONFIG` when `data` is not the size `dims` and `ty` make.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<()> {
        let n: u64 = dims.iter().product();
        if ty.bytes_for(n) != Some(data.len() as u64) {
            return Err(Error::invalid_config(format!(
                "tensor {name}: {} bytes do not make {dims:?} of {ty:?}",
                data.len()
            )));
        }
        self.tensors.push((name.to_string(), dims, ty, data));
        Ok(())
    }

    /// The file's bytes.
    ///
    /// Errors: `INVALID_CONFIG` for a mixed-type array.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        let meta: Vec<&(String, GgufValue)> = self
            .metadata
            .iter()
            .filter(|(k, _)| k != "general.alignment")
            .collect();
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (k, v) in meta {
            put_str(&mut out, k);
            out.extend_from_slice(&type_of(v).to_le_bytes());
            put_value(&mut out, v)?;
        }
        let mut offset = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        Ok(out)
    }

    /// Writes the file to `path` (through a temporary file renamed into place, so a failed
    /// write never leaves a half file under the name).
    ///
    /// Errors: `INVALID_CONFIG` when the file cannot be written.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let tmp = path.with_extension("part");
        let io = |e: std::io::Error| {
            Error::invalid_config(format!("cannot write {}: {e}", path.display()))
        };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::GgufFile;

    #[test]
    fn written_files_read_back() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", GgufValue::String("llama".into()));
        w.set("llama.block_count", GgufValue::U64(2));
        w.set("x.f", GgufValue::F64(0.5));
        w.set(
            "tokens",
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("b".into()),
            ]),
        );
        w.set("empty", GgufValue::Array(vec![]));
        let v: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        w.add_tensor("t", vec![3], GgmlType::F32, v).unwrap();
        w.add_tensor("blob", vec![5], GgmlType::I8, vec![1, 2, 3, 4, 5])
            .unwrap();
        assert!(w
            .add_tensor("bad", vec![2], GgmlType::F32, vec![0; 7])
            .is_err());
        let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.get_u64("llama.block_count"), Some(2));
        assert_eq!(g.dequantize("t").unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(g.tensor_bytes("blob").unwrap(), &[1, 2, 3, 4, 5]);
        assert_eq!(g.get_array("tokens").map(|a| a.len()), Some(2));
        let mixed = GgufValue::Array(vec![GgufValue::U64(1), GgufValue::Bool(true)]);
        w.set("mixed", mixed);
        assert!(w.to_bytes().is_err());
    }
}
