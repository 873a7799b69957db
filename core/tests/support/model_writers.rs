//! Writers of small model files for tests: CTranslate2 `model.bin` (the layout of
//! ctranslate2's `model_spec.py` `_serialize`) and safetensors.

#![allow(dead_code)] // each test binary uses part of it

/// One variable to write: name, shape, dtype id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
/// and the little-endian data.
pub struct Var {
    pub name: String,
    pub shape: Vec<u32>,
    pub dtype: u8,
    pub data: Vec<u8>,
}

impl Var {
    pub fn f32(name: &str, shape: &[u32], values: &[f32]) -> Var {
        Var::raw(
            name,
            shape,
            0,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }
    pub fn f16(name: &str, shape: &[u32], values: &[f32]) -> Var {
        let data = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        Var::raw(name, shape, 4, data)
    }
    pub fn bf16(name: &str, shape: &[u32], values: &[f32]) -> Var {
        let data = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        Var::raw(name, shape, 5, data)
    }
    pub fn i8(name: &str, shape: &[u32], values: &[i8]) -> Var {
        Var::raw(name, shape, 1, values.iter().map(|&v| v as u8).collect())
    }
    pub fn i16(name: &str, shape: &[u32], values: &[i16]) -> Var {
        Var::raw(
            name,
            shape,
            2,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }
    pub fn i32(name: &str, shape: &[u32], values: &[i32]) -> Var {
        Var::raw(
            name,
            shape,
            3,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }
    pub fn raw(name: &str, shape: &[u32], dtype: u8, data: Vec<u8>) -> Var {
        Var {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            data,
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A binary-version-6 `model.bin`.
pub fn ct2(spec: &str, revision: u32, vars: &[Var], aliases: &[(&str, &str)]) -> Vec<u8> {
    ct2_version(6, spec, revision, vars, aliases)
}

/// A `model.bin` of binary `version` (2 to 6): before 4 each variable states an item width
/// and an element count instead of a dtype id and a byte count; before 3 there are no
/// aliases.
pub fn ct2_version(
    version: u32,
    spec: &str,
    revision: u32,
    vars: &[Var],
    aliases: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&version.to_le_bytes());
    string(&mut out, spec);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
    for v in vars {
        string(&mut out, &v.name);
        out.push(v.shape.len() as u8);
        for d in &v.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        if version >= 4 {
            out.push(v.dtype);
            out.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
        } else {
            let width: u32 = match v.dtype {
                0 | 3 => 4,
                2 | 4 | 5 => 2,
                _ => 1,
            };
            out.push(width as u8);
            out.extend_from_slice(&(v.data.len() as u32 / width).to_le_bytes());
        }
        out.extend_from_slice(&v.data);
    }
    if version >= 3 {
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (alias, target) in aliases {
            string(&mut out, alias);
            string(&mut out, target);
        }
    }
    out
}

/// A safetensors file of F32 tensors `(name, shape, values)`.
pub fn safetensors(tensors: &[(&str, &[u64], &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let begin = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}
