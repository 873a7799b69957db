//! Matrices on learned grids (`Grid`: each code stands for a level of a per-matrix int8 table)
//! at 2, 3 and 4 bits, both schemes, with and without a rotation, on every kernel path that
//! reads quantized weights: the narrow and wide decode matvecs (the latter also on 8-bit
//! blocks from the norm and SwiGLU), the tiled and integer tiled prefill, the embedding lookup,
//! and weights split into row pieces (each piece carries the table). A grid of other bits than
//! the codes is refused at upload.

use crate::calls::{Calls, RmsNorm};
use crate::reference;
use crate::{
    backend, check_matmul, matmul_add_to_half, matmul_tol, matvec_backend, max_abs, max_rel,
    rand_vec, variants, variants_with,
};
use lowbit_core::quant::{learn_grid, quantize, quantize_on_grid, Grid, Rotation};
use lowbit_core::{Backend, ErrorCode, QuantSpec, QuantizedMatrix, Scheme, WeightMatrix};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

const BITS: [u8; 3] = [2, 3, 4];
const SCHEMES: [Scheme; 2] = [Scheme::Symmetric, Scheme::Asymmetric];

/// `w` quantized on a grid learned from it (in a rotated basis when `rotate`, as the quantizer
/// stores such matrices: the codes of W Rᵀ, the rotation noted).
fn grid_matrix(
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: QuantSpec,
    rotate: bool,
) -> QuantizedMatrix {
    let rot = rotate.then(|| Rotation {
        block: Rotation::block_for(cols, 256).unwrap(),
        seed: 5,
    });
    let mut data = w.to_vec();
    if let Some(r) = rot {
        r.rotate(&r.signs(cols), &mut data);
    }
    let grid = learn_grid(&data, rows, cols, &spec, &|_, o| o.fill(1.0));
    let mut q = quantize_on_grid(&data, rows, cols, spec, None, Some(&grid)).unwrap();
    assert_eq!(q.grid.as_ref().map(Grid::bits), Some(spec.bits));
    q.rotation = rot;
    q
}

/// The rows as stored (rotated basis when the matrix has a rotation): what a kernel multiplies
/// with (rotated) activations.
fn stored_rows(q: &QuantizedMatrix) -> Vec<f32> {
    let mut out = vec![0.0; q.rows * q.cols];
    for (r, row) in out.chunks_mut(q.cols).enumerate() {
        q.dequantize_stored_row(r, row);
    }
    out
}

/// `x` rotated as a linear of `q` rotates its input (unchanged without a rotation).
fn rotated_input(q: &QuantizedMatrix, x: &[f32]) -> Vec<f32> {
    let mut x = x.to_vec();
    if let Some(r) = q.rotation {
        r.rotate(&r.signs(q.cols), &mut x);
    }
    x
}

/// Kernel labels of `b` that read grid matrices, by entry point and an extra define.
fn grid_kernel(b: &WgpuBackend, entry: &str, bits: u8, extra: &str) -> bool {
    b.compiled_kernels().iter().any(|l| {
        l.starts_with(entry)
            && l.contains(&format!(",BITS={bits},"))
            && l.contains("GRID=1")
            && l.contains(extra)
    })
}

/// The narrow decode matvec (n = 1) and the f32 / f16 tiled prefill (n = 3, 17, 64), each also
/// with the residual add, on every kernel path: against the dequantized matrix, in the tolerance
/// of the uniform formats.
#[test]
fn grid_matmul_narrow_and_tiled() {
    let mut rng = StdRng::seed_from_u64(61);
    let (rows, cols) = (67, 576);
    let backends = variants();
    let w = rand_vec(&mut rng, rows * cols);
    for bits in BITS {
        for scheme in SCHEMES {
            for rotate in [false, true] {
                let spec = QuantSpec::new(bits, 64, scheme).unwrap();
                let q = grid_matrix(&w, rows, cols, spec, rotate);
                let dense = q.dequantize();
                for b in &backends {
                    let what = format!("grid {bits}-bit {scheme:?} rotated {rotate}");
                    check_matmul(
                        b,
                        WeightMatrix::Quantized(q.clone()),
                        &dense,
                        rows,
                        cols,
                        &what,
                    );
                }
            }
        }
    }
    for b in &backends {
        for bits in BITS {
            assert!(grid_kernel(b, "matvec[", bits, "WIDE=0"), "{bits}-bit");
            assert!(
                grid_kernel(b, "matmul_tiled[", bits, "INT_TILED=0"),
                "{bits}-bit"
            );
        }
        // Every matmul kernel these backends compiled was one with the table lookup.
        let k = b.compiled_kernels();
        assert!(
            k.iter()
                .all(|l| !l.starts_with("mat") || l.contains("GRID=1")),
            "{k:?}"
        );
    }
}

/// The wide decode matvec (integer dot products of levels against 8-bit activation blocks) on
/// f32 rows (rotated ones too), on 8-bit blocks from a norm (XQ8) and from SwiGLU (word
/// scales), and the integer tiled prefill: against the dequantized (stored) rows times the
/// activations quantized per 32-value block, as the uniform formats are checked.
#[test]
fn grid_wide_matvec_and_int_prefill() {
    let mut rng = StdRng::seed_from_u64(62);
    let (rows, cols) = (13usize, 2080);
    let mut wide: Vec<WgpuBackend> = variants_with(true);
    wide.push(matvec_backend(true, false));
    let int = WgpuBackend::new(&WgpuOptions {
        int_prefill: true,
        ..WgpuOptions::software()
    })
    .unwrap();
    let w = rand_vec(&mut rng, rows * cols);
    let xv = rand_vec(&mut rng, cols);
    let gv: Vec<f32> = rand_vec(&mut rng, cols).iter().map(|v| 1.0 + v).collect();
    let act = |x: &[f32]| reference::q8_blocks(x);
    for bits in BITS {
        for (group, scheme) in [(32usize, Scheme::Symmetric), (128, Scheme::Asymmetric)] {
            for rotate in [false, true] {
                let spec = QuantSpec::new(bits, group, scheme).unwrap();
                let q = grid_matrix(&w, rows, cols, spec, rotate);
                let what = format!("grid {bits}-bit g{group} {scheme:?} rotated {rotate}");
                let stored = stored_rows(&q);
                let (want, mag) =
                    reference::matmul(&stored, rows, cols, &act(&rotated_input(&q, &xv)), 1);
                let (exact, _) = reference::matmul(&q.dequantize(), rows, cols, &xv, 1);
                for b in &wide {
                    let id = b.upload_weight(WeightMatrix::Quantized(q.clone())).unwrap();
                    let (x, out) = (b.upload(&xv).unwrap(), b.alloc_f32(rows).unwrap());
                    b.matmul(id, x, out, 1).unwrap();
                    let got = b.read_now(out, 0, rows).unwrap();
                    let err = max_rel(&got, &want, &mag, 1e-3);
                    assert!(
                        err < matmul_tol(b),
                        "{what} {:?}: relative error {err}",
                        b.paths()
                    );
                    let loss = max_rel(&got, &exact, &mag, 1e-3);
                    assert!(loss < 2e-2, "{what}: q8 activations off by {loss}");
                    if !rotate {
                        // A norm writing 8-bit blocks for the matvec.
                        let normed = reference::rms_norm(&xv, &gv, cols, 1e-5);
                        let want_n = reference::matmul(&stored, rows, cols, &act(&normed), 1).0;
                        let (_, mag_n) = reference::matmul(&stored, rows, cols, &normed, 1);
                        let (g, scratch) = (b.upload(&gv).unwrap(), b.alloc_scratch(cols).unwrap());
                        let norm = RmsNorm {
                            weight: g,
                            dim: cols,
                            eps: 1e-5,
                        };
                        b.rms_norm_matmul(x, &norm, scratch, id, out, 1).unwrap();
                        let err =
                            max_rel(&b.read_now(out, 0, rows).unwrap(), &want_n, &mag_n, 1e-3);
                        assert!(err < matmul_tol(b), "norm + {what} {:?}: {err}", b.paths());
                        // SwiGLU writing 8-bit words with their own scales, residual add.
                        let guv = rand_vec(&mut rng, 2 * cols);
                        let o0 = rand_vec(&mut rng, rows);
                        let h = reference::silu_mul(&guv[..cols], &guv[cols..]);
                        let (mut want_s, mag_s) =
                            reference::matmul(&stored, rows, cols, &act(&h), 1);
                        for (w, o) in want_s.iter_mut().zip(&o0) {
                            *w += o;
                        }
                        let gu = b.upload(&guv).unwrap();
                        b.write(out, 0, &o0).unwrap();
                        b.swiglu_matmul_add(gu, scratch, id, out, 1, cols).unwrap();
                        let err =
                            max_rel(&b.read_now(out, 0, rows).unwrap(), &want_s, &mag_s, 1e-3);
                        assert!(
                            err < matmul_tol(b),
                            "swiglu + {what} {:?}: {err}",
                            b.paths()
                        );
                        for buf in [g, scratch, gu] {
                            b.free(buf);
                        }
                    }
                    b.free(x);
                    b.free(out);
                }
                // The integer tiled prefill, two tokens and 70 (two token tiles).
                let id = int
                    .upload_weight(WeightMatrix::Quantized(q.clone()))
                    .unwrap();
                for n in [2usize, 70] {
                    let xs = rand_vec(&mut rng, n * cols);
                    let xr = rotated_input(&q, &xs);
                    let (want, mag) = reference::matmul(&stored, rows, cols, &act(&xr), n);
                    let got = matmul_add_to_half(&int, id, &xs, n, rows);
                    // f32 sums of exact integer block sums: f32 rounding only.
                    let err = max_rel(&got, &want, &mag, 1e-3);
                    assert!(err < 1e-5, "int prefill {what} n={n}: relative error {err}");
                }
            }
        }
    }
    for bits in BITS {
        for b in &wide {
            assert!(grid_kernel(b, "matvec[", bits, "WIDE=1"), "{bits}-bit wide");
        }
        assert!(
            grid_kernel(&wide[0], "matvec[", bits, "XQ8=1"),
            "{bits}-bit XQ8"
        );
        assert!(
            grid_kernel(&int, "matmul_tiled[", bits, "INT_TILED=1"),
            "{bits}-bit int"
        );
    }
}

/// Embedding lookups from a grid table (rotated rows are rotated back), and a grid matrix split
/// into row pieces, each with its own copy of the table: lookups and matmuls.
#[test]
fn grid_embedding_lookup_and_pieces() {
    let mut rng = StdRng::seed_from_u64(63);
    let b = backend(false, false);
    let (rows, cols) = (300, 96);
    let w = rand_vec(&mut rng, rows * cols);
    let tokens = [7u32, 299, 0, 7, 150];
    for bits in BITS {
        for scheme in SCHEMES {
            for rotate in [false, true] {
                let q = grid_matrix(
                    &w,
                    rows,
                    cols,
                    QuantSpec::new(bits, 32, scheme).unwrap(),
                    rotate,
                );
                let dense = q.dequantize();
                let id = b.upload_weight(WeightMatrix::Quantized(q)).unwrap();
                let out = b.alloc_f32(tokens.len() * cols).unwrap();
                b.embed(id, &tokens, out).unwrap();
                let got = b.read_now(out, 0, tokens.len() * cols).unwrap();
                for (i, &t) in tokens.iter().enumerate() {
                    let want = &dense[t as usize * cols..(t as usize + 1) * cols];
                    // The dequantization formula once in f32 (exact up to fma), then for a
                    // rotated table the inverse rotation.
                    let err = max_abs(&got[i * cols..(i + 1) * cols], want);
                    assert!(
                        err < 1e-6,
                        "{bits}-bit {scheme:?} rotated {rotate} token {t}: {err}"
                    );
                }
                b.free(out);
            }
        }
    }
    for bits in BITS {
        assert!(grid_kernel(&b, "embed[", bits, ""), "{bits}-bit embed");
    }

    // Pieces: 3-bit rows of 1536 values are 576 bytes, so 4 KiB bindings hold 7 rows.
    let (rows, cols) = (45, 1536);
    let w = rand_vec(&mut rng, rows * cols);
    let q = grid_matrix(
        &w,
        rows,
        cols,
        QuantSpec::new(3, 128, Scheme::Asymmetric).unwrap(),
        false,
    );
    let dense = q.dequantize();
    let b = WgpuBackend::new(&WgpuOptions {
        max_binding_bytes: Some(4096),
        f16: Some(false),
        ..WgpuOptions::software()
    })
    .unwrap();
    let id = b.upload_weight(WeightMatrix::Quantized(q.clone())).unwrap();
    assert_eq!(b.weight_pieces(id), Some(7));
    check_matmul(
        &b,
        WeightMatrix::Quantized(q),
        &dense,
        rows,
        cols,
        "grid pieces",
    );
    let tokens = [0u32, 44, 6, 7, 20];
    let out = b.alloc_f32(tokens.len() * cols).unwrap();
    b.embed(id, &tokens, out).unwrap();
    let got = b.read_now(out, 0, tokens.len() * cols).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        let want = &dense[t as usize * cols..(t as usize + 1) * cols];
        assert!(
            max_abs(&got[i * cols..(i + 1) * cols], want) < 1e-6,
            "token {t}"
        );
    }
}

/// A grid whose width is not the codes' is refused with `INVALID_CONFIG`, not a panic or
/// wrong results; so is one on 8-bit codes.
#[test]
fn grid_of_other_bits_is_refused_at_upload() {
    let mut rng = StdRng::seed_from_u64(64);
    let b = backend(false, false);
    let (rows, cols) = (8, 64);
    let w = rand_vec(&mut rng, rows * cols);
    for (bits, grid_bits) in [(4u8, 3u8), (3, 2), (2, 4), (8, 4)] {
        let spec = QuantSpec::new(bits, 32, Scheme::Asymmetric).unwrap();
        let mut q = quantize(&w, rows, cols, spec).unwrap();
        let gspec = QuantSpec::new(grid_bits, 32, Scheme::Asymmetric).unwrap();
        q.grid = Some(Grid::uniform(&gspec));
        let err = b.upload_weight(WeightMatrix::Quantized(q)).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidConfig,
            "{bits}-bit codes, {grid_bits}-bit grid: {err:?}"
        );
    }
}
