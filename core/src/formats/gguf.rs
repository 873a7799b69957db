//! GGUF reader (PLACEHOLDER: being written; API fixed).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

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

/// A GGUF file.
pub struct GgufFile {
    /// Metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
}

impl GgufFile {
    /// Opens and parses a GGUF file (memory-mapped).
    pub fn open(path: &Path) -> Result<Self> {
        Err(Error::model_loading(format!(
            "{}: GGUF reader not built yet",
            path.display()
        )))
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
    /// Integer metadata (any integer type).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key) {
            Some(GgufValue::U64(v)) => Some(*v),
            Some(GgufValue::I64(v)) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    /// Float metadata (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.metadata.get(key) {
            Some(GgufValue::F64(v)) => Some(*v as f32),
            _ => None,
        }
    }
    /// Dequantizes a whole tensor to f32, row-major (`dims[0]` values per row).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        Err(Error::model_loading(format!(
            "tensor {name}: GGUF reader not built yet"
        )))
    }
    /// The dims of a tensor in GGML order (`dims[0]` is the row length).
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        let _ = name;
        None
    }
}
