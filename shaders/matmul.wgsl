// out[t, row_offset + r] = Σ_c W[r, c] · x[t, c] over one row range ("piece") of a weight matrix.
// `matvec`: decode (few tokens); a workgroup reduces ROWS_PER_WG rows over WORKGROUP_SIZE lanes
// (WIDE: 32 columns per lane step, for rows of at least 32 · WORKGROUP_SIZE values).
// `matmul_tiled`: prefill; a workgroup computes a TILE_T × TILE_R block of outputs, and each
// dequantized TILE_K-column weight tile is reused by TILE_T token rows from workgroup memory.
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

var<workgroup> row_sums: array<f32, ROWS_PER_WG * WORKGROUP_SIZE>;

// Sums `acc[k]` over the workgroup for every k at once and writes the rows' outputs.
fn reduce_rows(acc: array<f32, ROWS_PER_WG>, row0: u32, t: u32, inv: Invocation) {
#if USE_SUBGROUPS
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        let s = subgroupAdd(acc[k]);
        if inv.sg_lane == 0u {
            row_sums[k * WORKGROUP_SIZE + inv.sg_id] = s;
        }
    }
    workgroupBarrier();
    if inv.lid < ROWS_PER_WG && row0 + inv.lid < p.rows {
        var total = 0.0;
        for (var i = 0u; i < inv.sg_count; i++) {
            total += row_sums[inv.lid * WORKGROUP_SIZE + i];
        }
        out[t * p.out_stride + p.row_offset + row0 + inv.lid] = total;
    }
#else
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        row_sums[k * WORKGROUP_SIZE + inv.lid] = acc[k];
    }
    workgroupBarrier();
    for (var h = WORKGROUP_SIZE / 2u; h > 0u; h >>= 1u) {
        if inv.lid < h {
            for (var k = 0u; k < ROWS_PER_WG; k++) {
                row_sums[k * WORKGROUP_SIZE + inv.lid] += row_sums[k * WORKGROUP_SIZE + inv.lid + h];
            }
        }
        workgroupBarrier();
    }
    if inv.lid < ROWS_PER_WG && row0 + inv.lid < p.rows {
        out[t * p.out_stride + p.row_offset + row0 + inv.lid] = row_sums[inv.lid * WORKGROUP_SIZE];
    }
#endif
}

#if !WIDE
// Narrow rows (fewer than 32 · WORKGROUP_SIZE columns): each lane takes 8 columns at a time.
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
    reduce_rows(acc, row0, t, inv);
}
#else
// Wide rows: each lane takes 32 columns at a time, reading their BITS words of codes whole
// (16 bytes for 4-bit) and the group parameters once; the 32 activations are reused by every
// row of the workgroup.
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec(inv: Invocation) {
    let row0 = wg_index(inv) * ROWS_PER_WG;
    let t = inv.wid.z;
    if row0 >= p.rows {
        return;
    }
    var acc: array<f32, ROWS_PER_WG>;
    let x_row = t * p.cols / 4u;
    for (var j = inv.lid; j < p.cols / 32u; j += WORKGROUP_SIZE) {
        var xv: array<vec4<f32>, 8>;
        for (var i = 0u; i < 8u; i++) {
            xv[i] = x[x_row + 8u * j + i];
        }
        for (var k = 0u; k < ROWS_PER_WG; k++) {
            let r = min(row0 + k, p.rows - 1u);
            acc[k] += dot32(r, 32u * j, p.cols, xv);
        }
    }
    reduce_rows(acc, row0, t, inv);
}
#endif

// TILE_K (16 or 32, from the host: the tiles must fit the workgroup memory) columns per step.
// Tiles are stored k-major, so lanes with consecutive tx read consecutive words (no bank
// conflicts) and the loads fill them with consecutive rows / tokens per lane.
// Each of the 16 × 16 lanes computes PER_T tokens × PER_R rows in registers.
const PER_T: u32 = TILE_T / 16u;
const PER_R: u32 = TILE_R / 16u;
const SPANS: u32 = TILE_K / 8u;
var<workgroup> w_tile: array<f32, TILE_K * TILE_R>;
var<workgroup> x_tile: array<f32, TILE_K * TILE_T>;

@compute @workgroup_size(256)
fn matmul_tiled(inv: Invocation) {
    let r_base = inv.wid.x * TILE_R;
    let t_base = inv.wid.y * TILE_T;
    let tx = inv.lid % 16u;
    let ty = inv.lid / 16u;
    var acc: array<f32, PER_T * PER_R>;
    for (var k0 = 0u; k0 < p.cols; k0 += TILE_K) {
        // TILE_R rows × SPANS spans of 8 columns, dequantized once.
        for (var i = inv.lid; i < TILE_R * SPANS; i += 256u) {
            let lr = i % TILE_R;
            let c = (i / TILE_R) * 8u;
            let r = r_base + lr;
            var w = array(vec4<wt>(), vec4<wt>());
            if r < p.rows {
                w = weights8(r, k0 + c, p.cols);
            }
            for (var e = 0u; e < 4u; e++) {
                w_tile[(c + e) * TILE_R + lr] = f32(w[0][e]);
                w_tile[(c + 4u + e) * TILE_R + lr] = f32(w[1][e]);
            }
        }
        // TILE_T token rows × TILE_K / 4 vec4.
        for (var i = inv.lid; i < TILE_T * (TILE_K / 4u); i += 256u) {
            let lt = i % TILE_T;
            let q = i / TILE_T;
            let t = t_base + lt;
            var v = vec4<f32>();
            if t < p.n {
                v = x[(t * p.cols + k0) / 4u + q];
            }
            for (var e = 0u; e < 4u; e++) {
                x_tile[(4u * q + e) * TILE_T + lt] = v[e];
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_K; k++) {
            var wv: array<f32, PER_R>;
            for (var i = 0u; i < PER_R; i++) {
                wv[i] = w_tile[k * TILE_R + tx + 16u * i];
            }
            for (var j = 0u; j < PER_T; j++) {
                let xv = x_tile[k * TILE_T + ty * PER_T + j];
                for (var i = 0u; i < PER_R; i++) {
                    acc[j * PER_R + i] = fma(wv[i], xv, acc[j * PER_R + i]);
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
