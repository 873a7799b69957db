// out[t, row_offset + r] = Σ_c W[r, c] · x[t, c] over one row range ("piece") of a weight matrix
// (ACCUMULATE: out[...] += the sum, a residual add fused into the epilogue; NORM, wide matvec
// only: x is RMS-normalised on the fly, x·g scaled by 1/rms(x), the norm fused into the load).
// `matvec`: decode (few tokens); a workgroup reduces ROWS_PER_WG rows over WORKGROUP_SIZE lanes
// (WIDE: whole 32-value blocks per lane step, 4- and 8-bit codes read as 16-byte vectors).
// `matmul_tiled`: prefill; a workgroup computes a TILE_T × TILE_R block of outputs, and each
// dequantized TILE_K-column weight tile is reused by TILE_T token rows from workgroup memory.
#include common.wgsl

struct Params {
    rows: u32,       // rows in this piece
    cols: u32,       // reduction dimension, a multiple of 32
    n: u32,          // token rows of x
    out_stride: u32, // rows of the whole matrix: the stride of an output token row
    row_offset: u32, // first row of this piece within the matrix
    eps: f32,        // NORM: RMSNorm epsilon
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

// Writes (or, ACCUMULATE, adds) output `t` of row `r` of this piece.
fn store(t: u32, r: u32, v: f32) {
    let i = t * p.out_stride + p.row_offset + r;
#if ACCUMULATE
    out[i] = out[i] + v;
#else
    out[i] = v;
#endif
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
        store(t, row0 + inv.lid, total);
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
        store(t, row0 + inv.lid, row_sums[inv.lid * WORKGROUP_SIZE]);
    }
#endif
}

#if WIDE
// Wide rows, 4- and 8-bit codes: each lane takes whole 32-value blocks, read as 16-byte vectors
// through a second view of the same buffer (`w_vec`; 4-bit rows are cols / 2 bytes and 8-bit
// rows cols bytes, both multiples of 16). The block's eight activation vectors and their sum
// are loaded once and reused by every row of the workgroup; the scale multiplies the block's
// integer-weighted sum once, and the bias multiplies Σx.
@group(0) @binding(5) var<storage, read> w_vec: array<vec4<u32>>;
#if NORM
@group(0) @binding(6) var<storage, read> norm_w: array<vec4<f32>>;
#endif

fn nib_dot(wd: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let v = vec4<u32>(wd);
    let lo = vec4<f32>((v >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
    let hi = vec4<f32>((v >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
    return dot(lo, xa) + dot(hi, xb);
}

fn byte_dot(wd: u32, xa: vec4<f32>) -> f32 {
    return dot(vec4<f32>((vec4<u32>(wd) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u)), xa);
}
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec(inv: Invocation) {
    let row0 = wg_index(inv) * ROWS_PER_WG;
    let t = inv.wid.z;
    if row0 >= p.rows {
        return;
    }
    var acc: array<f32, ROWS_PER_WG>;
    let x_row = t * p.cols / 4u;
#if WIDE
    let nb = p.cols / 32u;
    var sq = 0.0; // NORM: this lane's share of Σx²
    for (var b = inv.lid; b < nb; b += WORKGROUP_SIZE) {
        let xo = x_row + 8u * b;
        var xs: array<vec4<f32>, 8>;
        for (var i = 0u; i < 8u; i++) {
            let v = x[xo + i];
#if NORM
            sq += dot(v, v);
            xs[i] = v * norm_w[8u * b + i];
#else
            xs[i] = v;
#endif
        }
        let x0 = xs[0];
        let x1 = xs[1];
        let x2 = xs[2];
        let x3 = xs[3];
        let x4 = xs[4];
        let x5 = xs[5];
        let x6 = xs[6];
        let x7 = xs[7];
        let sx = dot((x0 + x1) + (x2 + x3) + ((x4 + x5) + (x6 + x7)), vec4<f32>(1.0));
        for (var k = 0u; k < ROWS_PER_WG; k++) {
            // Rows past the end repeat the last one; their sums are never written.
            let r = min(row0 + k, p.rows - 1u);
            let sb = group_params(r, (32u * b) / GROUP_SIZE, p.cols);
            var q = 0.0;
            if BITS == 4u {
                let w = w_vec[r * nb + b];
                q = (nib_dot(w.x, x0, x1) + nib_dot(w.y, x2, x3))
                    + (nib_dot(w.z, x4, x5) + nib_dot(w.w, x6, x7));
            } else {
                let wa = w_vec[2u * (r * nb + b)];
                let wb = w_vec[2u * (r * nb + b) + 1u];
                q = ((byte_dot(wa.x, x0) + byte_dot(wa.y, x1)) + (byte_dot(wa.z, x2) + byte_dot(wa.w, x3)))
                    + ((byte_dot(wb.x, x4) + byte_dot(wb.y, x5)) + (byte_dot(wb.z, x6) + byte_dot(wb.w, x7)));
            }
            acc[k] += sb.x * q + sb.y * sx;
        }
    }
#if NORM
    // Every lane's sums scale by the same 1/rms, so scaling before the row reduction is exact
    // up to rounding.
    let inv_rms = inverseSqrt(workgroup_sum(sq, inv) / f32(p.cols) + p.eps);
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        acc[k] *= inv_rms;
    }
#endif
#else
    // Narrow rows: each lane takes 8 columns at a time.
    for (var j = inv.lid; j < p.cols / 8u; j += WORKGROUP_SIZE) {
        let x0 = x[x_row + 2u * j];
        let x1 = x[x_row + 2u * j + 1u];
        for (var k = 0u; k < ROWS_PER_WG; k++) {
            // Rows past the end repeat the last one; their sums are never written.
            let r = min(row0 + k, p.rows - 1u);
            acc[k] += dot8(weights8(r, 8u * j, p.cols), x0, x1);
        }
    }
#endif
    reduce_rows(acc, row0, t, inv);
}

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
                store(t, r, acc[j * PER_R + i]);
            }
        }
    }
}
