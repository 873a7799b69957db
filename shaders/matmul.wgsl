// out[t, row_offset + r] = Σ_c W[r, c] · x[t, c] over one row range ("piece") of a weight matrix.
// `matvec`: decode (few tokens); a workgroup reduces ROWS_PER_WG rows over WORKGROUP_SIZE lanes.
// `matmul_tiled`: prefill; a workgroup computes a TILE_T × TILE_R block of outputs, and each
// dequantized 32-column weight tile is reused by TILE_T token rows from workgroup memory.
#include common.wgsl

struct Params {
    rows: u32,       // rows in this piece
    cols: u32,       // reduction dimension, a multiple of 32
    n: u32,          // token rows of x
    out_stride: u32, // rows of the whole matrix: the stride of an output token row
    row_offset: u32, // first row of this piece within the matrix
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w_data: array<u32>;
@group(0) @binding(2) var<storage, read> w_params: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

#include weights.wgsl

fn dot8(w: array<vec4<wt>, 2>, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
    return f32(dot(w[0], vec4<wt>(x0)) + dot(w[1], vec4<wt>(x1)));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec(inv: Invocation) {
    let row0 = wg_index(inv) * ROWS_PER_WG;
    let t = inv.wid.z;
    if row0 >= p.rows {
        return;
    }
    var acc: array<f32, ROWS_PER_WG>;
    let x_row = t * p.cols / 4u;
    for (var j = inv.lid; j < p.cols / 8u; j += WORKGROUP_SIZE) {
        let x0 = x[x_row + 2u * j];
        let x1 = x[x_row + 2u * j + 1u];
        for (var k = 0u; k < ROWS_PER_WG; k++) {
            // Rows past the end repeat the last one; their sums are never written.
            let r = min(row0 + k, p.rows - 1u);
            acc[k] += dot8(weights8(r, 8u * j, p.cols), x0, x1);
        }
    }
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        let s = workgroup_sum(acc[k], inv);
        if inv.lid == 0u && row0 + k < p.rows {
            out[t * p.out_stride + p.row_offset + row0 + k] = s;
        }
    }
}

const TILE_K: u32 = 32u;
// Row stride of the tiles: 33 keeps a column read by 16 lanes on 16 different banks.
const TILE_STRIDE: u32 = TILE_K + 1u;
// Each of the 16 × 16 lanes computes TILE_T / 16 tokens × TILE_R / 16 rows.
const PER_T: u32 = TILE_T / 16u;
const PER_R: u32 = TILE_R / 16u;
var<workgroup> w_tile: array<f32, TILE_R * TILE_STRIDE>;
var<workgroup> x_tile: array<f32, TILE_T * TILE_STRIDE>;

@compute @workgroup_size(256)
fn matmul_tiled(inv: Invocation) {
    let r_base = inv.wid.x * TILE_R;
    let t_base = inv.wid.y * TILE_T;
    let tx = inv.lid % 16u;
    let ty = inv.lid / 16u;
    var acc: array<f32, PER_T * PER_R>;
    for (var k0 = 0u; k0 < p.cols; k0 += TILE_K) {
        // TILE_R rows × 4 spans of 8 columns, one span per lane and pass.
        for (var i = inv.lid; i < TILE_R * 4u; i += 256u) {
            let lr = i / 4u;
            let c = (i % 4u) * 8u;
            let r = r_base + lr;
            var w = array(vec4<wt>(), vec4<wt>());
            if r < p.rows {
                w = weights8(r, k0 + c, p.cols);
            }
            for (var e = 0u; e < 4u; e++) {
                w_tile[lr * TILE_STRIDE + c + e] = f32(w[0][e]);
                w_tile[lr * TILE_STRIDE + c + 4u + e] = f32(w[1][e]);
            }
        }
        // TILE_T token rows × 8 vec4.
        for (var i = inv.lid; i < TILE_T * 8u; i += 256u) {
            let lt = i / 8u;
            let q = i % 8u;
            let t = t_base + lt;
            var v = vec4<f32>();
            if t < p.n {
                v = x[(t * p.cols + k0) / 4u + q];
            }
            for (var e = 0u; e < 4u; e++) {
                x_tile[lt * TILE_STRIDE + 4u * q + e] = v[e];
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_K; k++) {
            var wv: array<f32, PER_R>;
            for (var i = 0u; i < PER_R; i++) {
                wv[i] = w_tile[(tx + 16u * i) * TILE_STRIDE + k];
            }
            for (var j = 0u; j < PER_T; j++) {
                let xv = x_tile[(ty * PER_T + j) * TILE_STRIDE + k];
                for (var i = 0u; i < PER_R; i++) {
                    acc[j * PER_R + i] += wv[i] * xv;
                }
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < PER_T; j++) {
        let t = t_base + ty * PER_T + j;
        for (var i = 0u; i < PER_R; i++) {
            let r = r_base + tx + 16u * i;
            if t < p.n && r < p.rows {
                out[t * p.out_stride + p.row_offset + r] = acc[j * PER_R + i];
            }
        }
    }
}
