// The prefill half of matmul.wgsl (included at its end, so it shares its bindings, `store` and
// weight readers): `matmul_tiled` on cooperative matrices (COOP_TILED), integer dot products
// (INT_TILED) or f32/f16 tiles.
#if COOP_TILED
// Prefill on the matrix units (cooperative matrices, 16 × 16 × 16 f16 products with f32 sums):
// a workgroup of eight 32-lane subgroups computes TILE_T (128) tokens × TILE_R (128) rows. Each
// step dequantizes the tile's rows over CK (TILE_K) columns to f16 (`weights8`, every weight
// kind) and converts the tokens' CK activations to f16 (clamped to the f16 range) in workgroup
// memory, four values per store; subgroup s then multiplies tokens 32 (s / 2) .. + 32 by rows
// 64 (s % 2) .. + 64 as 2 × 4 products per 16 columns. The sums leave through workgroup memory,
// 16 rows at a time, so `store` applies the epilogue (ACCUMULATE) and edge tiles are cut.
const PER_T: u32 = 1u; // (store_tile's, unused)
const PER_R: u32 = 1u;
const CK: u32 = TILE_K; // columns per step (32 or 64, from the host)
// Tile rows are CK + 8 halves (80 or 144 bytes) apart: the eight 16-byte rows a fragment load
// reads at once then fall in different banks.
const CKV: u32 = (CK + 8u) / 4u;
const C_ROWS: u32 = 16u;
var<workgroup> a_tile: array<vec4<f16>, TILE_T * CKV>; // token t, columns 4v.. at t · CKV + v
var<workgroup> b_tile: array<vec4<f16>, TILE_R * CKV>; // row r likewise (B: column-major)
var<workgroup> c_tile: array<f32, TILE_T * C_ROWS>; // token t, row r at t · C_ROWS + r

fn f16x4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}

// One lane's share of a step: CK / 2 weights of row `r` and CK / 2 activations of token `t`
// from column `k` (zeros past the matrix).
const LANE_V: u32 = CK / 8u; // vec4s of each
struct CoopStep {
    w: array<vec4<wt>, LANE_V>,
    x: array<vec4<f32>, LANE_V>,
}

fn coop_fetch(r: u32, t: u32, k: u32) -> CoopStep {
    var s: CoopStep;
    if r < p.rows {
        for (var e = 0u; e < LANE_V; e += 2u) {
            if k + 4u * e < p.cols {
                let w = weights8(r, k + 4u * e, p.cols);
                s.w[e] = w[0];
                s.w[e + 1u] = w[1];
            }
        }
    }
    if t < p.n {
        let i = (t * p.cols + k) / 4u;
        for (var e = 0u; e < LANE_V; e++) {
            if k + 4u * e < p.cols {
                s.x[e] = x[i + e];
            }
        }
    }
    return s;
}

@compute @workgroup_size(256)
fn matmul_tiled(inv: Invocation, grp: Group) {
    let r_base = grp.wid.x * TILE_R;
    let t_base = grp.wid.y * TILE_T;
#if GRID
    load_grid();
#endif
    let st = (inv.sg_id / 2u) * 32u;
    let sr = (inv.sg_id % 2u) * 64u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c02 = coop_mat16x16<f32, C>();
    var c03 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>();
    var c13 = coop_mat16x16<f32, C>();
    // Loads: lane l takes CK / 2 columns of row l / 2 and of token l / 2. A step's loads are
    // requested before the previous step's products (software pipelining), so the memory
    // latency overlaps the matrix units' work.
    let lr = inv.lid / 2u;
    let lh = (inv.lid % 2u) * (CK / 2u);
    let r = r_base + lr;
    let t = t_base + lr;
    let o = lr * CKV + lh / 4u;
    var s = coop_fetch(r, t, lh);
    for (var k0 = 0u; k0 < p.cols; k0 += CK) {
        for (var e = 0u; e < LANE_V; e++) {
            b_tile[o + e] = vec4<f16>(s.w[e]);
            a_tile[o + e] = f16x4(s.x[e]);
        }
        workgroupBarrier();
        if k0 + CK < p.cols {
            s = coop_fetch(r, t, k0 + CK + lh);
        }
        for (var kv = 0u; kv < CK / 4u; kv += 4u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&a_tile[st * CKV + kv], CKV);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&a_tile[(st + 16u) * CKV + kv], CKV);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&b_tile[sr * CKV + kv], CKV);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&b_tile[(sr + 16u) * CKV + kv], CKV);
            let b2 = coopLoad<coop_mat16x16<f16, B>>(&b_tile[(sr + 32u) * CKV + kv], CKV);
            let b3 = coopLoad<coop_mat16x16<f16, B>>(&b_tile[(sr + 48u) * CKV + kv], CKV);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12);
            c13 = coopMultiplyAdd(a1, b3, c13);
        }
        workgroupBarrier();
    }
    // Rows 16q .. 16q + 16 per round: fragment q % 4 of the subgroups whose 64 rows hold them.
    for (var q = 0u; q < TILE_R / C_ROWS; q++) {
        if sr / 64u == q / 4u {
            let oc = st * C_ROWS;
            switch q % 4u {
                case 0u: {
                    coopStoreT(c00, &c_tile[oc], C_ROWS);
                    coopStoreT(c10, &c_tile[oc + 16u * C_ROWS], C_ROWS);
                }
                case 1u: {
                    coopStoreT(c01, &c_tile[oc], C_ROWS);
                    coopStoreT(c11, &c_tile[oc + 16u * C_ROWS], C_ROWS);
                }
                case 2u: {
                    coopStoreT(c02, &c_tile[oc], C_ROWS);
                    coopStoreT(c12, &c_tile[oc + 16u * C_ROWS], C_ROWS);
                }
                default: {
                    coopStoreT(c03, &c_tile[oc], C_ROWS);
                    coopStoreT(c13, &c_tile[oc + 16u * C_ROWS], C_ROWS);
                }
            }
        }
        workgroupBarrier();
        for (var i = inv.lid; i < TILE_T * C_ROWS; i += 256u) {
            let t = t_base + i / C_ROWS;
            let r = r_base + q * C_ROWS + i % C_ROWS;
            if t < p.n && r < p.rows {
                store(t, r, c_tile[i]);
            }
        }
        workgroupBarrier();
    }
}
#else
#if INT_TILED
// Prefill on 2-, 3-, 4- and 8-bit codes with 8-bit activations: a step takes one 32-value
// block. The tile's weight codes are unpacked once into words of four 8-bit codes (the order
// of the decode matvec's integer dot products, ORDER) and each token's block is quantized once
// (q8.wgsl, as the decode matvec quantizes), so each lane's PER_T × PER_R outputs take 8
// integer dot products of four codes per block instead of 32 multiply-adds of dequantized
// values. The result is the dequantized weights times the quantized activations, as decode.
#include q8.wgsl
const PER_T: u32 = TILE_T / 16u;
const PER_R: u32 = TILE_R / 16u;
// k-major, as the f32 tiles: word k of row lr at k · TILE_R + lr, of token lt at k · TILE_T + lt.
var<workgroup> wq_tile: array<u32, 8 * TILE_R>;
var<workgroup> wp_tile: array<vec2<f32>, TILE_R>; // (group scale, block_bias)
var<workgroup> xq_tile: array<u32, 8 * TILE_T>;
var<workgroup> xp_tile: array<vec2<f32>, TILE_T>; // (d, d · Σq)

// The eight code words of block `b` of row `r` (`BITS` words of `w_data`; 3-bit: the planes),
// as `dot_word` gives them to the integer dot products (GRID: words of levels).
fn code_words(r: u32, b: u32, cols: u32) -> array<u32, 8> {
    var out: array<u32, 8>;
    let nb = cols / 32u;
    if BITS == 3u {
        let base = 3u * r * nb;
        let w = vec4<u32>(w_data[base + 2u * b], w_data[base + 2u * b + 1u], w_data[base + 2u * nb + b], 0u);
        for (var m = 0u; m < 8u; m++) {
            out[m] = dot_word(code3(w, m));
        }
        return out;
    }
    let base = (r * nb + b) * BITS;
    if BITS == 2u {
        let wx = w_data[base];
        let wy = w_data[base + 1u];
#if GRID
        let a = grid_pair_words(wx);
        let c = grid_pair_words(wy);
        return array(a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w);
#else
        for (var k = 0u; k < 4u; k++) {
            out[k] = dot_word((wx >> (2u * k)) & LO_PAIRS);
            out[4u + k] = dot_word((wy >> (2u * k)) & LO_PAIRS);
        }
#endif
    } else if BITS == 4u {
        for (var k = 0u; k < 4u; k++) {
            let w = w_data[base + k];
#if GRID
            let h = grid_nibble_words(w);
            out[2u * k] = h.x;
            out[2u * k + 1u] = h.y;
#else
            out[2u * k] = dot_word(w & LO_NIBBLES);
            out[2u * k + 1u] = dot_word((w >> 4u) & LO_NIBBLES);
#endif
        }
    } else {
        for (var k = 0u; k < 8u; k++) {
            out[k] = w_data[base + k] ^ SIGN_BYTES;
        }
    }
    return out;
}

@compute @workgroup_size(256)
fn matmul_tiled(inv: Invocation, grp: Group) {
    let r_base = grp.wid.x * TILE_R;
    let t_base = grp.wid.y * TILE_T;
    let tx = inv.lid % 16u;
    let ty = inv.lid / 16u;
#if GRID
    load_grid();
    fill_grid_lut(inv.lid, 256u);
    workgroupBarrier();
#endif
    var acc: array<f32, PER_T * PER_R>;
    for (var b = 0u; b < p.cols / 32u; b++) {
        for (var lr = inv.lid; lr < TILE_R; lr += 256u) {
            let r = r_base + lr;
            var words: array<u32, 8>;
            var sb = vec2<f32>(0.0);
            if r < p.rows {
                words = code_words(r, b, p.cols);
                let g = group_params(r, (32u * b) / GROUP_SIZE, p.cols);
                sb = vec2<f32>(g.x, block_bias(g));
            }
            for (var k = 0u; k < 8u; k++) {
                wq_tile[k * TILE_R + lr] = words[k];
            }
            wp_tile[lr] = sb;
        }
        for (var lt = inv.lid; lt < TILE_T; lt += 256u) {
            let t = t_base + lt;
            var bx: BlockX;
            if t < p.n {
                var xs: array<vec4<f32>, 8>;
                for (var i = 0u; i < 8u; i++) {
                    xs[i] = x[t * (p.cols / 4u) + 8u * b + i];
                }
                bx = quantize_block(xs, ORDER);
            }
            for (var k = 0u; k < 8u; k++) {
                xq_tile[k * TILE_T + lt] = bx.q[k];
            }
            xp_tile[lt] = vec2<f32>(bx.d, bx.sx);
        }
        workgroupBarrier();
        var isum: array<i32, PER_T * PER_R>;
        for (var k = 0u; k < 8u; k++) {
            var wv: array<u32, PER_R>;
            for (var i = 0u; i < PER_R; i++) {
                wv[i] = wq_tile[k * TILE_R + tx + 16u * i];
            }
            for (var j = 0u; j < PER_T; j++) {
                let xv = xq_tile[k * TILE_T + ty * PER_T + j];
                for (var i = 0u; i < PER_R; i++) {
                    isum[j * PER_R + i] += dot4I8Packed(wv[i], xv);
                }
            }
        }
        for (var j = 0u; j < PER_T; j++) {
            let xp = xp_tile[ty * PER_T + j];
            for (var i = 0u; i < PER_R; i++) {
                let wp = wp_tile[tx + 16u * i];
                acc[j * PER_R + i] += wp.x * (xp.x * f32(isum[j * PER_R + i])) + wp.y * xp.y;
            }
        }
        workgroupBarrier();
    }
    store_tile(acc, r_base + tx, t_base + ty * PER_T);
}
#else
#if !WIDE
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
fn matmul_tiled(inv: Invocation, grp: Group) {
    let r_base = grp.wid.x * TILE_R;
    let t_base = grp.wid.y * TILE_T;
    let tx = inv.lid % 16u;
    let ty = inv.lid / 16u;
#if GRID
    load_grid();
#endif
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
    store_tile(acc, r_base + tx, t_base + ty * PER_T);
}
#endif
#endif
#endif

#if !WIDE
// Stores a lane's tile of the tiled matmuls: tokens t0 .. t0 + PER_T, rows r0 + 16i.
fn store_tile(acc: array<f32, PER_T * PER_R>, r0: u32, t0: u32) {
    for (var j = 0u; j < PER_T; j++) {
        let t = t0 + j;
        for (var i = 0u; i < PER_R; i++) {
            let r = r0 + 16u * i;
            if t < p.n && r < p.rows {
                store(t, r, acc[j * PER_R + i]);
            }
        }
    }
}
#endif
