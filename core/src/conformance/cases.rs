//! Cases of single ops on awkward shapes: odd row counts, widths that are not powers of two,
//! every weight format, positions past 0, column views with offsets and strides, every mask.

use super::build::{CaseBuilder, Format};
use super::tolerance::{DATA, F32_MATH, LINEAR, Q8_STORAGE};
use super::{positions, Case};
use crate::backend::DType;
use crate::ops::{Activation, Im2col, NormKind, Op, TokenIds};
use crate::quant::Scheme;

/// Every single-op case.
pub(super) fn single_ops() -> Vec<Case> {
    let mut v = linear();
    v.extend(rotated());
    v.extend(grids());
    v.extend(embed());
    v.extend(norm());
    v.extend(activation());
    v.extend(glu());
    v.extend(positions::rope());
    v.extend(positions::kv_write());
    v.extend(positions::attention());
    v.extend(elementwise());
    v.extend(argmax());
    v.extend(im2col());
    v.extend(storage());
    v
}

/// Widths (multiples of 32, not powers of two) and odd row counts cycled over the formats, so
/// groups of 64 and 128 meet a shorter last group (160 = 128 + 32, 224 = 3·64 + 32).
const WIDTHS: [(usize, usize); 3] = [(7, 96), (3, 160), (13, 224)];

fn linear_case(f: Format, rows: usize, cols: usize, n: usize, bias: bool, acc: bool) -> Case {
    let shape = format!(
        "{rows}x{cols} n={n}{}{}",
        if bias { " +bias" } else { "" },
        if acc { " +=" } else { "" }
    );
    let mut b = CaseBuilder::new("linear", shape, f.name(), LINEAR);
    let w = b.weight(f, rows, cols);
    let x = b.input(n * cols);
    // Bias and accumulator of the outputs' own size, so dropping either fails by far.
    let bias = bias.then(|| b.input(rows));
    let out = if acc {
        b.input(n * rows)
    } else {
        b.zeros(n * rows)
    };
    b.op(Op::Linear {
        w,
        bias,
        x,
        out,
        n,
        accumulate: acc,
    });
    b.check_all(out);
    b.finish()
}

fn linear() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, f) in Format::all().into_iter().enumerate() {
        let (rows, cols) = WIDTHS[i % 3];
        // Decode (a matrix × vector) with a bias; prefill accumulating into a residual.
        v.push(linear_case(f, rows, cols, 1, true, false));
        v.push(linear_case(f, rows, cols, 5, false, true));
    }
    let q = Format::quant;
    for f in [
        Format::F16,
        q(4, 32, Scheme::Symmetric),
        q(8, 64, Scheme::Asymmetric),
        q(2, 128, Scheme::Asymmetric),
    ] {
        v.push(linear_case(f, 9, 160, 17, true, false));
        v.push(linear_case(f, 9, 160, 64, true, true));
    }
    // A single output row.
    v.push(linear_case(
        q(3, 32, Scheme::Symmetric),
        1,
        96,
        17,
        true,
        false,
    ));
    v
}

/// Matrices quantized in a rotated basis: a linear rotates its input rows, an embedding rotates
/// its rows back. Every width, both schemes, groups of 32 to 128, and blocks from 32 to 4096:
/// the ones the quantizer picks for SmolLM2 (576 → 64, 1536 → 128) and LLaMA-3-8B
/// (4096 → 128), and the largest ones a rotation may have on such shapes (1536 → 512,
/// 4096 → 4096, 14336 → 2048), at decode and prefill.
fn rotated() -> Vec<Case> {
    use Scheme::{Asymmetric as Asym, Symmetric as Sym};
    let r = Format::rotated;
    let mut v = Vec::new();
    // Rows enough that an NMSE over one token's outputs is not one unlucky output's.
    for (f, rows, cols, ns) in [
        (r(2, 32, Asym, 32), 7, 96, &[1, 5][..]),
        (r(3, 64, Sym, 64), 5, 576, &[1, 5]),
        (r(4, 128, Asym, 128), 5, 1536, &[1, 17]),
        (r(8, 32, Sym, 512), 7, 1536, &[1, 3]),
        (r(3, 32, Asym, 128), 9, 4096, &[1, 2]),
        (r(4, 64, Sym, 4096), 7, 4096, &[1, 3]),
        (r(4, 32, Asym, 2048), 5, 14336, &[1]),
    ] {
        for (i, &n) in ns.iter().enumerate() {
            // Decode with a bias; prefill accumulating into a residual.
            v.push(linear_case(f, rows, cols, n, i == 0, i > 0));
        }
    }
    for (f, cols, ids) in [
        (r(4, 32, Asym, 32), 96, vec![3, 0, 10, 3]),
        (r(8, 64, Sym, 64), 576, vec![10, 1]),
        (r(2, 32, Asym, 4096), 4096, vec![2, 9, 2]),
    ] {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        let shape = format!("11x{cols} ids=[{}]", list.join(","));
        let mut b = CaseBuilder::new("embed", shape, f.name(), DATA);
        let table = b.weight(f, 11, cols);
        let out = b.zeros(ids.len() * cols);
        b.op(Op::Embed {
            table,
            ids: TokenIds::Host(ids),
            out,
        });
        b.check_all(out);
        v.push(b.finish());
    }
    // Device ids; id 100 is outside the table: its row stays as it was, not rotated back.
    v.push(embed_device_ids(r(3, 32, Sym, 128), 256));
    v
}

/// Matrices on learned grids (table-lookup decode): every width that takes one, both schemes,
/// with and without rotation, at decode, small prefill and a prefill wide enough for tiled
/// kernels, and as embedding tables.
fn grids() -> Vec<Case> {
    use Scheme::{Asymmetric as Asym, Symmetric as Sym};
    let g = Format::grid;
    let mut v = Vec::new();
    for (f, rows, cols) in [
        (g(2, 32, Sym, 0), 7, 96),
        (g(2, 64, Asym, 0), 5, 160),
        (g(3, 32, Sym, 0), 13, 224),
        (g(3, 128, Asym, 0), 9, 576),
        (g(4, 32, Sym, 0), 7, 1536),
        (g(4, 32, Asym, 0), 13, 224),
        (g(4, 32, Sym, 128), 9, 576),
        (g(3, 32, Asym, 64), 5, 576),
        (g(2, 32, Sym, 128), 7, 1536),
        // Wide enough for the WebGPU wide matvec.
        (g(4, 32, Asym, 0), 5, 2048),
        (g(3, 64, Sym, 128), 3, 4096),
    ] {
        v.push(linear_case(f, rows, cols, 1, true, false));
        v.push(linear_case(f, rows, cols, 5, false, true));
        v.push(linear_case(f, rows, cols, 64, true, false));
    }
    for (f, cols, ids) in [
        (g(4, 32, Asym, 0), 96, vec![3, 0, 10, 3]),
        (g(2, 32, Sym, 0), 224, vec![10, 1]),
        (g(3, 64, Sym, 64), 576, vec![2, 9, 2]),
    ] {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        let shape = format!("11x{cols} ids=[{}]", list.join(","));
        let mut b = CaseBuilder::new("embed", shape, f.name(), DATA);
        let table = b.weight(f, 11, cols);
        let out = b.zeros(ids.len() * cols);
        b.op(Op::Embed {
            table,
            ids: TokenIds::Host(ids),
            out,
        });
        b.check_all(out);
        v.push(b.finish());
    }
    v.push(embed_device_ids(g(4, 32, Sym, 0), 160));
    v
}

/// An embedding of 11 rows of `cols` whose ids `[2, 7, 100, 5]` come from a device buffer at
/// an offset; id 100 is outside the table, so its output row must stay as it was.
fn embed_device_ids(f: Format, cols: usize) -> Case {
    let mut b = CaseBuilder::new(
        "embed",
        format!("11x{cols} device ids=[2,7,100,5]"),
        f.name(),
        DATA,
    );
    let table = b.weight(f, 11, cols);
    let ids = b.data(vec![9.0, 2.0, 7.0, 100.0, 5.0]);
    let out = b.input(4 * cols);
    b.op(Op::Embed {
        table,
        ids: TokenIds::Device {
            buf: ids,
            offset: 1,
            n: 4,
        },
        out,
    });
    b.check_all(out);
    b.finish()
}

fn embed() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, f) in Format::all().into_iter().enumerate() {
        let cols = WIDTHS[i % 3].1;
        let mut b = CaseBuilder::new("embed", format!("11x{cols} ids=[3,0,10,3]"), f.name(), DATA);
        let table = b.weight(f, 11, cols);
        let out = b.zeros(4 * cols);
        b.op(Op::Embed {
            table,
            ids: TokenIds::Host(vec![3, 0, 10, 3]),
            out,
        });
        b.check_all(out);
        v.push(b.finish());
    }
    v.push(embed_device_ids(
        Format::quant(4, 32, Scheme::Asymmetric),
        96,
    ));
    v
}

fn norm() -> Vec<Case> {
    let mut v = Vec::new();
    for kind in [NormKind::Rms, NormKind::Layer] {
        for with_bias in [false, true] {
            for (rows, dim, in_place) in [(1, 96, false), (7, 224, false), (3, 160, true)] {
                let name = match kind {
                    NormKind::Rms => "rms",
                    NormKind::Layer => "layer",
                };
                let shape = format!(
                    "{name} {rows}x{dim}{}{}",
                    if with_bias { " +bias" } else { "" },
                    if in_place { " in place" } else { "" }
                );
                let mut b = CaseBuilder::new("norm", shape, "f32", F32_MATH);
                // Off-centre rows, so LayerNorm's mean matters.
                let xs = b.uniform(rows * dim, -0.7, 1.3);
                let x = b.data(xs);
                let wd = b.uniform(dim, 0.5, 1.5);
                let weight = b.data(wd);
                let bias = with_bias.then(|| b.input(dim));
                let out = if in_place { x } else { b.zeros(rows * dim) };
                b.op(Op::Norm {
                    kind,
                    x,
                    out,
                    weight,
                    bias,
                    rows,
                    dim,
                    eps: 1e-5,
                });
                b.check_all(out);
                v.push(b.finish());
            }
        }
    }
    v
}

const ACTIVATIONS: [Activation; 4] = [
    Activation::Silu,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::QuickGelu,
];

fn activation() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, act) in ACTIVATIONS.into_iter().enumerate() {
        let in_place = i % 2 == 1;
        let shape = format!(
            "{} len=97{}",
            act.name(),
            if in_place { " in place" } else { "" }
        );
        let mut b = CaseBuilder::new("activation", shape, "f32", F32_MATH);
        let xs = b.random(97, 5.0);
        let x = b.data(xs);
        let out = if in_place { x } else { b.zeros(97) };
        b.op(Op::Activation {
            act,
            x,
            out,
            len: 97,
        });
        b.check_all(out);
        v.push(b.finish());
    }
    v
}

fn glu() -> Vec<Case> {
    let mut v = Vec::new();
    for act in [Activation::Silu, Activation::Gelu] {
        for (n, width) in [(1, 96), (3, 160), (7, 224)] {
            let shape = format!("{} n={n} width={width}", act.name());
            let mut b = CaseBuilder::new("glu", shape, "f32", F32_MATH);
            let xs = b.random(n * 2 * width, 3.0);
            let x = b.data(xs);
            let out = b.zeros(n * width);
            b.op(Op::Glu {
                act,
                x,
                out,
                n,
                width,
            });
            b.check_all(out);
            v.push(b.finish());
        }
    }
    v
}

fn elementwise() -> Vec<Case> {
    let mut v = Vec::new();
    let mut b = CaseBuilder::new("add", "len=97", "f32", F32_MATH);
    let dst = b.input(97);
    let src = b.input(97);
    b.op(Op::Add { dst, src, len: 97 });
    b.check_all(dst);
    v.push(b.finish());

    // Gemma's embedding scale (√640) over an odd length.
    let mut b = CaseBuilder::new("scale", "len=97 x25.3", "f32", F32_MATH);
    let x = b.input(97);
    b.op(Op::Scale {
        x,
        len: 97,
        factor: 640f32.sqrt(),
    });
    b.check_all(x);
    v.push(b.finish());

    let mut b = CaseBuilder::new("copy", "40 values src@7 dst@3", "f32", DATA);
    let src = b.input(100);
    let dst = b.input(50);
    b.op(Op::Copy {
        src,
        src_offset: 7,
        dst,
        dst_offset: 3,
        len: 40,
    });
    b.check_all(dst);
    v.push(b.finish());

    for (rows, len, spread) in [(3, 160, 10.0), (1, 7, 1.0)] {
        let shape = format!("{rows}x{len} ±{spread}");
        let mut b = CaseBuilder::new("softmax", shape, "f32", F32_MATH);
        let mut xs = b.random(rows * len, spread);
        // A row far from 0: exp() must not overflow.
        for v in xs.iter_mut().take(len) {
            *v += 80.0;
        }
        let x = b.data(xs);
        b.op(Op::Softmax { x, rows, len });
        b.check_all(x);
        v.push(b.finish());
    }
    v
}

fn argmax_case(what: &str, xs: Vec<f32>, out_offset: usize) -> Case {
    let mut b = CaseBuilder::new("argmax", format!("len={} {what}", xs.len()), "f32", 0.0);
    let len = xs.len();
    let x = b.data(xs);
    let out = b.zeros(out_offset + 2);
    b.op(Op::Argmax {
        x,
        len,
        out,
        out_offset,
    });
    b.check_index(out, out_offset);
    b.finish()
}

fn argmax() -> Vec<Case> {
    let mut b = CaseBuilder::new("argmax", "inputs", "f32", 0.0);
    let random = b.random(97, 1.0);
    let mut ties = b.random(160, 1.0);
    ties[10] = 5.0;
    ties[40] = 5.0;
    ties[150] = 5.0;
    let mut nan = b.random(64, 1.0);
    nan[0] = f32::NAN;
    nan[20] = f32::NAN;
    nan[33] = 2.0;
    let inf = vec![
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        -3.0,
        f32::NEG_INFINITY,
    ];
    vec![
        argmax_case("random", random, 0),
        argmax_case("ties first", ties, 1),
        argmax_case("NaN never wins", nan, 0),
        argmax_case("all NaN", vec![f32::NAN; 8], 3),
        argmax_case("-inf", inf, 0),
    ]
}

fn im2col() -> Vec<Case> {
    let shapes = [
        (
            "conv1d k3 s1 p1",
            Im2col {
                channels: 5,
                height: 1,
                width: 23,
                kernel_h: 1,
                kernel_w: 3,
                stride: 1,
                pad: 1,
            },
        ),
        (
            "conv1d k3 s2 p1",
            Im2col {
                channels: 4,
                height: 1,
                width: 24,
                kernel_h: 1,
                kernel_w: 3,
                stride: 2,
                pad: 1,
            },
        ),
        (
            "patches 4x4",
            Im2col {
                channels: 3,
                height: 12,
                width: 12,
                kernel_h: 4,
                kernel_w: 4,
                stride: 4,
                pad: 0,
            },
        ),
        (
            "conv2d k3 s2 p1",
            Im2col {
                channels: 2,
                height: 7,
                width: 9,
                kernel_h: 3,
                kernel_w: 3,
                stride: 2,
                pad: 1,
            },
        ),
    ];
    shapes
        .into_iter()
        .map(|(name, s)| {
            let shape = format!("{name} {}x{}x{}", s.channels, s.height, s.width);
            let mut b = CaseBuilder::new("im2col", shape, "f32", DATA);
            let x = b.input(s.channels * s.height * s.width);
            // Prefilled: padding positions must be written as 0.
            let out = b.input(s.out_rows() * s.row_len());
            b.op(Op::Im2col { x, out, shape: s });
            b.check_all(out);
            b.finish()
        })
        .collect()
}

/// Typed buffers: values written as f32 and read back through F16 and Q8Block storage.
fn storage() -> Vec<Case> {
    [(DType::F16, DATA, 100), (DType::Q8Block, Q8_STORAGE, 96)]
        .into_iter()
        .map(|(dtype, tol, len)| {
            let mut b = CaseBuilder::new("storage", format!("len={len}"), dtype.name(), tol);
            let d = b.random(len, 3.0);
            let buf = b.typed(dtype, d);
            b.check_all(buf);
            b.finish()
        })
        .collect()
}
