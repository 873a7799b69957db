//! WGSL sources and their specialisation: a kernel is a shader file, an entry point and a set of
//! constants ([`KernelKey`]); the preprocessor turns the constants into WGSL `const`
//! declarations and resolves `#include`, `#if NAME` / `#if !NAME` / `#elif` / `#else` / `#endif`
//! on boolean constants, so one source serves every variant.

use lowbit_core::{Error, ErrorCode, Result};
use std::fmt::Write;

/// A WGSL source file of `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderFile {
    /// Quantized and dense matvec / tiled matmul.
    Matmul,
    /// Embedding lookup.
    Embed,
    /// RMSNorm.
    Norm,
    /// Rotary position embedding.
    Rope,
    /// Decode and prefill attention.
    Attention,
    /// add, silu_mul, swiglu (any GLU), activation, copy.
    Elementwise,
    /// Row-wise softmax.
    Softmax,
    /// Convolution columns (im2col).
    Im2col,
    /// Token selection (argmax).
    Sample,
    /// Randomized Hadamard rotation of activation rows.
    Rotate,
}

impl ShaderFile {
    fn source(self) -> &'static str {
        match self {
            ShaderFile::Matmul => include_str!("../../../shaders/matmul.wgsl"),
            ShaderFile::Embed => include_str!("../../../shaders/embed.wgsl"),
            ShaderFile::Norm => include_str!("../../../shaders/norm.wgsl"),
            ShaderFile::Rope => include_str!("../../../shaders/rope.wgsl"),
            ShaderFile::Attention => include_str!("../../../shaders/attention.wgsl"),
            ShaderFile::Elementwise => include_str!("../../../shaders/elementwise.wgsl"),
            ShaderFile::Softmax => include_str!("../../../shaders/softmax.wgsl"),
            ShaderFile::Im2col => include_str!("../../../shaders/im2col.wgsl"),
            ShaderFile::Sample => include_str!("../../../shaders/sample.wgsl"),
            ShaderFile::Rotate => include_str!("../../../shaders/rotate.wgsl"),
        }
    }
}

/// Files that `#include` may name.
fn include_source(name: &str) -> Option<&'static str> {
    match name {
        "common.wgsl" => Some(include_str!("../../../shaders/common.wgsl")),
        "weights.wgsl" => Some(include_str!("../../../shaders/weights.wgsl")),
        "q8.wgsl" => Some(include_str!("../../../shaders/q8.wgsl")),
        "q8_out.wgsl" => Some(include_str!("../../../shaders/q8_out.wgsl")),
        "activation.wgsl" => Some(include_str!("../../../shaders/activation.wgsl")),
        "matmul_tiled.wgsl" => Some(include_str!("../../../shaders/matmul_tiled.wgsl")),
        _ => None,
    }
}

/// A specialisation constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Define {
    /// Emitted as `const NAME: u32 = Vu;`.
    U32(u32),
    /// Emitted as `const NAME: bool = V;` and usable in `#if`.
    Bool(bool),
}

/// Identifies one compiled pipeline: the pipeline and shader-module caches are keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// Source file.
    pub file: ShaderFile,
    /// Entry point.
    pub entry: &'static str,
    /// Constants, in a fixed order per kernel.
    pub defines: Vec<(&'static str, Define)>,
}

impl KernelKey {
    /// A readable name such as `matvec[BITS=3,GROUP_SIZE=128,...]`, used in logs and profiles.
    pub fn label(&self) -> String {
        let mut s = format!("{}[", self.entry);
        for (i, (k, v)) in self.defines.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match v {
                Define::U32(n) => write!(s, "{k}={n}"),
                Define::Bool(b) => write!(s, "{k}={}", u8::from(*b)),
            }
            .expect("writing to a String");
        }
        s.push(']');
        s
    }

    /// The specialised WGSL text.
    pub fn source(&self) -> Result<String> {
        specialise(self.file.source(), &self.defines)
    }
}

fn shader_error(msg: String) -> Error {
    Error::new(
        ErrorCode::WebgpuNotSupported,
        format!("shader preprocessing: {msg}"),
    )
}

/// Specialises `source` with `defines` (see the module docs).
pub fn specialise(source: &str, defines: &[(&'static str, Define)]) -> Result<String> {
    let mut out = String::new();
    if defines.contains(&("USE_F16", Define::Bool(true))) {
        out.push_str("enable f16;\n");
    }
    if defines.contains(&("COOP_TILED", Define::Bool(true))) {
        out.push_str("enable wgpu_cooperative_matrix;\n");
    }
    for (name, v) in defines {
        match v {
            Define::U32(n) => writeln!(out, "const {name}: u32 = {n}u;"),
            Define::Bool(b) => writeln!(out, "const {name}: bool = {b};"),
        }
        .expect("writing to a String");
    }
    expand(source, defines, &mut out, 0)?;
    Ok(out)
}

/// One open `#if`: whether the enclosing text is live, whether a branch was taken, whether the
/// current branch is live.
struct Cond {
    parent: bool,
    taken: bool,
    live: bool,
}

fn expand(src: &str, defines: &[(&str, Define)], out: &mut String, depth: u32) -> Result<()> {
    if depth > 4 {
        return Err(shader_error("#include nested too deeply".into()));
    }
    let flag = |expr: &str| -> Result<bool> {
        let (neg, name) = match expr.strip_prefix('!') {
            Some(n) => (true, n.trim()),
            None => (false, expr),
        };
        match defines.iter().find(|(k, _)| *k == name) {
            Some((_, Define::Bool(b))) => Ok(*b != neg),
            Some(_) => Err(shader_error(format!(
                "`#if {name}`: not a boolean constant"
            ))),
            None => Err(shader_error(format!("`#if {name}`: constant not defined"))),
        }
    };
    let mut stack: Vec<Cond> = Vec::new();
    let live = |stack: &[Cond]| stack.last().is_none_or(|c| c.live);
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#if ") {
            let parent = live(&stack);
            let v = parent && flag(rest.trim())?;
            stack.push(Cond {
                parent,
                taken: v,
                live: v,
            });
        } else if let Some(rest) = t.strip_prefix("#elif ") {
            let c = stack
                .last_mut()
                .ok_or_else(|| shader_error("#elif without #if".into()))?;
            let v = c.parent && !c.taken && flag(rest.trim())?;
            c.live = v;
            c.taken |= v;
        } else if t == "#else" {
            let c = stack
                .last_mut()
                .ok_or_else(|| shader_error("#else without #if".into()))?;
            c.live = c.parent && !c.taken;
            c.taken = true;
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| shader_error("#endif without #if".into()))?;
        } else if !live(&stack) {
            continue;
        } else if let Some(name) = t.strip_prefix("#include ") {
            let inc = include_source(name.trim())
                .ok_or_else(|| shader_error(format!("unknown include `{name}`")))?;
            expand(inc, defines, out, depth + 1)?;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(shader_error("unterminated #if".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditionals_and_constants() {
        let src = "#if A\na\n#elif B\nb\n#else\nc\n#endif\n#if !A\nnot_a\n#endif\nend";
        let d = |a, b| {
            vec![
                ("A", Define::Bool(a)),
                ("B", Define::Bool(b)),
                ("N", Define::U32(3)),
            ]
        };
        let body = |a, b| {
            let s = specialise(src, &d(a, b)).unwrap();
            s.lines().skip(3).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(body(true, true), "a end");
        assert_eq!(body(false, true), "b not_a end");
        assert_eq!(body(false, false), "c not_a end");
        assert!(specialise(src, &d(true, false))
            .unwrap()
            .contains("const N: u32 = 3u;"));
        assert!(specialise("#if X\n#endif", &[]).is_err());
        assert!(specialise("#if A\n", &d(true, true)).is_err());
    }

    /// Every variant of the rotation kernel parses and validates in naga: each direction, in
    /// place or not, with and without the id check, at the smallest and largest blocks.
    #[test]
    fn rotate_kernel_validates_in_naga() {
        use wgpu::naga;
        for (block, wg) in [(32u32, 16u32), (4096, 256)] {
            for (inverse, in_place, ids) in [
                (false, false, false),
                (true, true, false),
                (true, true, true),
            ] {
                let d = vec![
                    ("WORKGROUP_SIZE", Define::U32(wg)),
                    ("USE_SUBGROUPS", Define::Bool(false)),
                    ("BLOCK", Define::U32(block)),
                    ("INVERSE", Define::Bool(inverse)),
                    ("IN_PLACE", Define::Bool(in_place)),
                    ("IDS", Define::Bool(ids)),
                ];
                let src = specialise(ShaderFile::Rotate.source(), &d).unwrap();
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&src)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::empty(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("block {block}: {}", e.emit_to_string(&src)));
            }
        }
    }

    /// The cooperative-matrix prefill kernel (`COOP_TILED`) runs only on GPUs with
    /// `VK_KHR_cooperative_matrix` (CI's lavapipe has none), so naga's parser and validator check
    /// every variant here: each weight kind and width (2-4 bits also on a learned grid), with
    /// and without the residual add, at 32 and 64 columns per step.
    #[test]
    fn coop_prefill_kernel_validates_in_naga() {
        use wgpu::naga;
        let kinds = [
            (0u32, 8u32, false),
            (0, 4, false),
            (0, 3, false),
            (0, 2, false),
            (0, 4, true),
            (0, 3, true),
            (0, 2, true),
            (1, 8, false),
            (2, 8, false),
        ];
        let steps = kinds
            .iter()
            .flat_map(|&(k, b, g)| [(k, b, g, 32u32), (k, b, g, 64)]);
        for (kind, bits, grid, tile_k) in steps {
            for accumulate in [false, true] {
                let d = vec![
                    ("WORKGROUP_SIZE", Define::U32(256)),
                    ("USE_SUBGROUPS", Define::Bool(true)),
                    ("WEIGHT_KIND", Define::U32(kind)),
                    ("BITS", Define::U32(bits)),
                    ("GROUP_SIZE", Define::U32(32)),
                    ("ASYMMETRIC", Define::Bool(accumulate)),
                    ("GRID", Define::Bool(grid)),
                    ("USE_F16", Define::Bool(true)),
                    ("ROWS_PER_WG", Define::U32(4)),
                    ("VEC2", Define::Bool(bits == 2)),
                    ("CODES3", Define::Bool(bits == 3)),
                    ("ORDER", Define::U32(0)),
                    ("TILE_T", Define::U32(128)),
                    ("TILE_R", Define::U32(128)),
                    ("TILE_K", Define::U32(tile_k)),
                    ("COOP_TILED", Define::Bool(true)),
                    ("INT_TILED", Define::Bool(false)),
                    ("WIDE", Define::Bool(false)),
                    ("UNROLL", Define::U32(1)),
                    ("ACCUMULATE", Define::Bool(accumulate)),
                    ("NORM", Define::Bool(false)),
                    ("XQ8", Define::Bool(false)),
                    ("WORD_SCALES", Define::Bool(false)),
                    ("ROPE", Define::Bool(false)),
                    ("SWIGLU", Define::Bool(false)),
                    ("NORM_OUT", Define::Bool(false)),
                    ("RMS_IN", Define::Bool(false)),
                    ("OUT_ORDER", Define::U32(0)),
                    ("BIAS", Define::Bool(accumulate)),
                ];
                let src = specialise(ShaderFile::Matmul.source(), &d).unwrap();
                assert!(src.contains("enable wgpu_cooperative_matrix;"));
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&src)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| {
                    panic!(
                        "kind {kind} bits {bits} grid {grid} k {tile_k}: {}",
                        e.emit_to_string(&src)
                    )
                });
                assert!(module.entry_points.iter().any(|e| e.name == "matmul_tiled"));
            }
        }
    }
}
