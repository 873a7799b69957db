// Block-diagonal randomized Hadamard rotation of activation rows (core's `quant::Rotation`), the
// input side of a matrix quantized in a rotated basis. Per block of BLOCK columns:
//   rotate:            x ← H · diag(s) · x / √BLOCK   (a linear's input, `Rotation::rotate`)
//   INVERSE (unrotate): x ← diag(s) · H · x / √BLOCK  (a looked-up row, `Rotation::unrotate`)
// with H the Sylvester Hadamard matrix, applied as the unnormalised fast Walsh–Hadamard transform
// in workgroup memory (BLOCK f32: 16 KiB at the largest block, 4096, WebGPU's guaranteed
// workgroup storage). Signs: bit c % 32 of word c / 32 of `signs` set means −1 for column c.
// The butterflies add and subtract in the CPU backend's order, so results match it bit for bit.
//
// One workgroup per (row, block). IN_PLACE: `dst` is read and written (an embedding's output);
// else `src` is read and `dst` written. IDS: row r is only rotated when the f32 token id
// `ids[id_offset + r]` lies in the table, as the embedding kernel wrote only those rows.
#include common.wgsl

struct Params {
    cols: u32,       // values per row (a multiple of BLOCK)
    rows: u32,       // rows
    scale: f32,      // 1 / √BLOCK, as the host rounds it
    table_rows: u32, // IDS: rows of the embedding table
    id_offset: u32,  // IDS: first id in `ids`
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> signs: array<u32>;
#if IN_PLACE
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
#if IDS
@group(0) @binding(3) var<storage, read> ids: array<f32>;
#endif
#else
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
#endif

var<workgroup> blk: array<f32, BLOCK>;

// The sign of column `c` times the scale (exactly ±scale, as the CPU's `s * scale`).
fn signed_scale(c: u32) -> f32 {
    let neg = ((signs[c / 32u] >> (c % 32u)) & 1u) == 1u;
    return select(p.scale, -p.scale, neg);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rotate(inv: Invocation, grp: Group) {
    let per_row = p.cols / BLOCK;
    let i = wg_index(grp);
    let r = i / per_row;
    let c0 = (i % per_row) * BLOCK;
    let base = r * p.cols + c0;
    // Every lane reaches every barrier: rows past the end (a folded dispatch) and rows of ids
    // outside the table only skip their loads and stores.
    var live = r < p.rows;
#if IDS
    if live {
        live = u32(ids[p.id_offset + r]) < p.table_rows;
    }
#endif
    if live {
        for (var k = inv.lid; k < BLOCK; k += WORKGROUP_SIZE) {
#if IN_PLACE
            let v = dst[base + k];
#else
            let v = src[base + k];
#endif
#if INVERSE
            blk[k] = v;
#else
            blk[k] = v * signed_scale(c0 + k);
#endif
        }
    }
    workgroupBarrier();
    // Stage h pairs j and j + h, j running over the lower halves of blocks of 2h.
    for (var h = 1u; h < BLOCK; h <<= 1u) {
        for (var t = inv.lid; t < BLOCK / 2u; t += WORKGROUP_SIZE) {
            let j = ((t & ~(h - 1u)) << 1u) | (t & (h - 1u));
            let a = blk[j];
            let b = blk[j + h];
            blk[j] = a + b;
            blk[j + h] = a - b;
        }
        workgroupBarrier();
    }
    if live {
        for (var k = inv.lid; k < BLOCK; k += WORKGROUP_SIZE) {
#if INVERSE
            dst[base + k] = blk[k] * signed_scale(c0 + k);
#else
            dst[base + k] = blk[k];
#endif
        }
    }
}
