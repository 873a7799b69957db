// out[t, row_offset + r] = Σ_c W[r, c] · x[t, c] over one row range ("piece") of a weight matrix
// (ACCUMULATE: out[...] += the sum, a residual add fused into the epilogue; NORM, narrow
// decode matvec only: x is RMS-normalised on the fly, x·g summed and scaled by 1/rms(x) after;
// ROPE: the q|k|v epilogue below; SWIGLU: the gate|up epilogue below, writing silu(gate)·up
// as 8-bit words with their own scales, which the down matvec reads with WORD_SCALES;
// NORM_OUT: the residual add's epilogue also prepares the next RMSNorm's input, which RMS_IN
// reads; see below; BIAS: bias[row] is added to every sum, with the plain store or ACCUMULATE).
// `matvec`: decode (few tokens); a workgroup reduces ROWS_PER_WG rows over WORKGROUP_SIZE lanes
// (WIDE: whole 32-value blocks per lane step, 2-, 3-, 4- and 8-bit codes against 8-bit activations
// in the codes' order ORDER, see q8.wgsl).
// `matmul_tiled` (matmul_tiled.wgsl, included at the end): prefill; a workgroup computes a
// TILE_T × TILE_R block of outputs, and each
// dequantized TILE_K-column weight tile is reused by TILE_T token rows from workgroup memory.
#include common.wgsl

struct Params {
    rows: u32,       // rows in this piece
    cols: u32,       // reduction dimension, a multiple of 32
    n: u32,          // token rows of x
    out_stride: u32, // rows of the whole matrix: the stride of an output token row
    row_offset: u32, // first row of this piece within the matrix
    eps: f32,        // NORM, RMS_IN: RMSNorm epsilon
    parts: u32,      // RMS_IN: partial sums of squares after the input words (NORM_OUT)
#if ROPE
    pos: u32,        // the token's position
    head_dim: u32,
    q_dim: u32,      // rows of q; then kv_dim rows of k, kv_dim of v
    kv_dim: u32,
    adjacent: u32,   // 1: RoPE pairs (2i, 2i+1); 0: (i, i + head_dim/2)
#endif
}

@group(0) @binding(0) var<uniform> p: Params;
#if !WIDE
@group(0) @binding(1) var<storage, read> w_data: array<u32>;
#endif
@group(0) @binding(2) var<storage, read> w_params: array<u32>;
#if XQ8
// The activations already quantized by their producer (see q8.wgsl), in this format's order.
@group(0) @binding(3) var<storage, read> xq8: array<vec4<u32>>;
#else
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
#endif
#if SWIGLU
@group(0) @binding(4) var<storage, read_write> hq8: array<vec4<u32>>;
#else
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif
#if NORM_OUT
// The residual add of one decode token (wide, ACCUMULATE, one piece) that also prepares the
// next RMSNorm's input: `out` is the residual stream x; each workgroup writes its rows of
// g · x (g: the next norm's weights `norm_g`) to `xn` as 8-bit words with their own scales in
// the next matvec's code order OUT_ORDER (q8.wgsl's word scales, 16 words per 32 values),
// and its rows' Σx² as partial sum `wg` after the words (f32 bits). The next matvec (RMS_IN)
// sums the partials for 1/rms(x) and scales its sums by it: its rows are g · x / rms(x).
@group(0) @binding(5) var<storage, read> norm_g: array<f32>;
@group(0) @binding(6) var<storage, read_write> xn: array<vec4<u32>>;
#endif
#if BIAS
// A linear map's bias (the plain store or ACCUMULATE epilogue, no other binding after `out`).
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif
#if NORM
// The RMSNorm fused into a narrow decode matvec: its weights (x · g is summed, 1/rms applied after).
@group(0) @binding(5) var<storage, read> norm_w: array<vec4<f32>>;
#endif
#if ROPE
// The q|k|v projection of one decode token (wide or narrow): RoPE(q) goes to `out`, RoPE(k) and v to
// row `pos` of the caches. A workgroup's rows come in RoPE pairs (`logical_row`), so each
// pair's two sums meet in one workgroup. Bindings after the fused norm's weights, if any.
#if NORM
@group(0) @binding(6) var<storage, read> rope_table: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<f32>;
#else
@group(0) @binding(5) var<storage, read> rope_table: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>;
#endif
var<workgroup> row_total: array<f32, ROWS_PER_WG>;

// The matrix row that physical row `r` of this dispatch computes: rows 2j and 2j + 1 are the
// two members of RoPE pair j (pairs counted head by head over q, k and v alike).
fn logical_row(r: u32) -> u32 {
    let half = p.head_dim / 2u;
    let f = (r / 2u) % half;
    let base = (r / 2u / half) * p.head_dim;
    if p.adjacent != 0u {
        return base + 2u * f + (r & 1u);
    }
    return base + f + (r & 1u) * half;
}

// The rotation of the RoPE pair that lane `lid` (< ROWS_PER_WG / 2) writes, read when the
// workgroup starts so the epilogue does not wait for memory.
fn rope_rotation(row0: u32, lid: u32) -> vec2<f32> {
    let r = row0 + 2u * lid;
    if lid < ROWS_PER_WG / 2u && r < p.rows && logical_row(r) < p.q_dim + p.kv_dim {
        return rope_table[p.pos * (p.head_dim / 2u) + (r / 2u) % (p.head_dim / 2u)];
    }
    return vec2<f32>(1.0, 0.0);
}

// Writes this workgroup's rows (lane k < ROWS_PER_WG holds the sum of physical row row0 + k)
// as rotated q, rotated k and v; `cs` is the lane's `rope_rotation`.
fn rope_store(total: f32, row0: u32, lid: u32, cs: vec2<f32>) {
    if lid < ROWS_PER_WG {
        row_total[lid] = total;
    }
    workgroupBarrier();
    let r = row0 + 2u * lid;
    if lid < ROWS_PER_WG / 2u && r < p.rows {
        var v = vec2<f32>(row_total[2u * lid], row_total[2u * lid + 1u]);
        let a = logical_row(r);
        let b = logical_row(r + 1u);
        v = vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
        let kv = p.pos * p.kv_dim;
        if a < p.q_dim {
            out[a] = v.x;
            out[b] = v.y;
        } else if a < p.q_dim + p.kv_dim {
            k_cache[kv + a - p.q_dim] = v.x;
            k_cache[kv + b - p.q_dim] = v.y;
        } else {
            v_cache[kv + a - p.q_dim - p.kv_dim] = v.x;
            v_cache[kv + b - p.q_dim - p.kv_dim] = v.y;
        }
    }
}
#else
#if SWIGLU
// The gate|up matvec of one decode token (wide, one piece: gate rows, then as many up rows):
// workgroup g makes stored word g of the SwiGLU output in the down matvec's code order
// OUT_ORDER (q8.wgsl), from its eight rows: the gate rows of the word's four values, then
// their up rows.
var<workgroup> row_total: array<f32, ROWS_PER_WG>;

fn logical_row(r: u32) -> u32 {
    let g = r / 8u;
    let k = r % 8u;
    let v = 32u * (g / 8u) + word_values(g % 8u, OUT_ORDER)[k % 4u];
    return select(v, p.rows / 2u + v, k >= 4u);
}

// Lane k < 8 holds the sum of row k of word g: writes silu(gate) · up as the word's codes and
// its scale.
fn swiglu_store(total: f32, g: u32, lid: u32) {
    if lid < 8u {
        row_total[lid] = total;
    }
    workgroupBarrier();
    if lid == 0u && 8u * g < p.rows {
        let gate = vec4<f32>(row_total[0], row_total[1], row_total[2], row_total[3]);
        let up = vec4<f32>(row_total[4], row_total[5], row_total[6], row_total[7]);
        let h = vec4<f32>(silu(gate.x), silu(gate.y), silu(gate.z), silu(gate.w)) * up;
        let sw = scaled_word(h);
        let b = g / 8u;
        let w = g % 8u;
        hq8[4u * b + w / 4u][w % 4u] = sw.x;
        hq8[4u * b + 2u + w / 4u][w % 4u] = sw.y;
    }
}
#else
#if NORM_OUT
var<workgroup> row_total: array<f32, ROWS_PER_WG>;
var<workgroup> row_sq: array<f32, ROWS_PER_WG>;

// Physical row r computes value r % 4 of stored word r / 4 of `xn` (in OUT_ORDER), so each
// workgroup (ROWS_PER_WG a multiple of 4) makes whole words.
fn logical_row(r: u32) -> u32 {
    let g = r / 4u;
    return 32u * (g / 8u) + word_values(g % 8u, OUT_ORDER)[r % 4u];
}

// The next norm's weight of lane `lid`'s row, read when the workgroup starts.
fn norm_weight(row0: u32, lid: u32) -> f32 {
    if lid < ROWS_PER_WG && row0 + lid < p.rows {
        return norm_g[logical_row(row0 + lid)];
    }
    return 0.0;
}

// Lane k < ROWS_PER_WG holds x, the new residual value of physical row row0 + k, and `g`, its
// norm weight: stores x, then this workgroup's words of g · x and its partial Σx².
fn norm_out_store(x: f32, g: f32, row0: u32, lid: u32) {
    let live = lid < ROWS_PER_WG && row0 + lid < p.rows;
    if live {
        out[p.row_offset + logical_row(row0 + lid)] = x;
    }
    if lid < ROWS_PER_WG {
        row_total[lid] = select(0.0, g * x, live);
        row_sq[lid] = select(0.0, x * x, live);
    }
    workgroupBarrier();
    let word = row0 / 4u + lid;
    if lid < ROWS_PER_WG / 4u && 4u * word < p.rows {
        let h = vec4<f32>(row_total[4u * lid], row_total[4u * lid + 1u], row_total[4u * lid + 2u], row_total[4u * lid + 3u]);
        let sw = scaled_word(h);
        let b = word / 8u;
        let w = word % 8u;
        xn[4u * b + w / 4u][w % 4u] = sw.x;
        xn[4u * b + 2u + w / 4u][w % 4u] = sw.y;
    }
    if lid == ROWS_PER_WG / 4u {
        var s = 0.0;
        for (var k = 0u; k < ROWS_PER_WG; k++) {
            s += row_sq[k];
        }
        let part = row0 / ROWS_PER_WG;
        xn[p.rows / 8u + part / 4u][part % 4u] = bitcast<u32>(s);
    }
}
#else
fn logical_row(r: u32) -> u32 {
    return r;
}
#endif
#endif
#endif

#include weights.wgsl

fn dot8(w: array<vec4<wt>, 2>, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
    return f32(dot(w[0], vec4<wt>(x0)) + dot(w[1], vec4<wt>(x1)));
}

#if !SWIGLU
// Writes (or, ACCUMULATE, adds) output `t` of row `r` of this piece.
fn store(t: u32, r: u32, sum: f32) {
    let i = t * p.out_stride + p.row_offset + r;
#if BIAS
    let v = sum + bias[p.row_offset + r];
#else
    let v = sum;
#endif
#if ACCUMULATE
    out[i] = out[i] + v;
#else
    out[i] = v;
#endif
}

// ACCUMULATE in the matvec: the value lane `lid` (< ROWS_PER_WG) adds its row's sum to, read
// when the workgroup starts so the epilogue does not wait for memory (each workgroup owns its
// rows); 0 otherwise.
fn residual(t: u32, row0: u32, lid: u32) -> f32 {
#if ACCUMULATE
    if lid < ROWS_PER_WG && row0 + lid < p.rows {
        return out[t * p.out_stride + p.row_offset + logical_row(row0 + lid)];
    }
#endif
    return 0.0;
}
#endif

var<workgroup> row_sums: array<f32, ROWS_PER_WG * WORKGROUP_SIZE>;

// Sums `acc[k]` over the workgroup for every k at once: lane k < ROWS_PER_WG gets row k's.
fn reduce_rows(acc: array<f32, ROWS_PER_WG>, inv: Invocation) -> f32 {
#if USE_SUBGROUPS
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        let s = subgroupAdd(acc[k]);
        if inv.sg_lane == 0u {
            row_sums[k * WORKGROUP_SIZE + inv.sg_id] = s;
        }
    }
    workgroupBarrier();
    var total = 0.0;
    if inv.lid < ROWS_PER_WG {
        for (var i = 0u; i < inv.sg_count; i++) {
            total += row_sums[inv.lid * WORKGROUP_SIZE + i];
        }
    }
    return total;
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
    return row_sums[min(inv.lid, ROWS_PER_WG - 1u) * WORKGROUP_SIZE];
#endif
}

// Words of four 8-bit codes, as the integer dot products take them (the wide matvec and the
// integer tiled matmul): 4-bit codes are masked out of a code word as its even values then its
// odd ones, 2-bit codes as bit pair k (values k, k+4, k+8, k+12), 8-bit codes are offset by 128
// to signed bytes (`block_bias` adds the 128 back).
const LO_NIBBLES: u32 = 0x0f0f0f0fu;
const LO_PAIRS: u32 = 0x03030303u;
const SIGN_BYTES: u32 = 0x80808080u;

// Word m of a 3-bit block's codes (pair words in .xy, high word in .z; see weights.wgsl):
// values 16j + k, +4, +8, +12 for m = 4j + k, as 2-bit codes are taken.
fn code3(w: vec4<u32>, m: u32) -> u32 {
    let pairs = select(w.y, w.x, m < 4u);
    return ((pairs >> (2u * (m % 4u))) & LO_PAIRS) | (((w.z >> m) & 0x01010101u) << 2u);
}

#if GRID
// The integer paths' level table (wide matvec, integer prefill): built once per workgroup by
// `fill_grid_lut`, indexed by a byte of codes, entries of levels as unsigned bytes (`grid_byte`;
// L(q) below), laid out so a lookup per code byte and a few shifts give the level words:
// 4-bit, byte b: L(b & 15) | L(b >> 4) << 16 (`grid_nibble_words`);
// 2-bit, byte b: L((b >> 2i) & 3) at byte i, i = 0..3 (`grid_pair_words`);
// 3-bit, index c0 | c1 << 3 (two codes; < 64): L(c0) | L(c1) << 8 (`dot_word`).
var<workgroup> grid_lut: array<u32, 256>;

// Fills `grid_lut` (after `load_grid`), lane `lid` of `lanes`. Every lane of the workgroup
// must call it and then reach a workgroupBarrier before the table is read.
fn fill_grid_lut(lid: u32, lanes: u32) {
    for (var i = lid; i < 256u; i += lanes) {
        var e: u32;
        if BITS == 4u {
            e = grid_byte(i & 15u) | (grid_byte(i >> 4u) << 16u);
        } else if BITS == 2u {
            e = (grid_byte(i & 3u) | (grid_byte((i >> 2u) & 3u) << 8u))
                | ((grid_byte((i >> 4u) & 3u) << 16u) | (grid_byte(i >> 6u) << 24u));
        } else {
            e = grid_byte(i & 7u) | (grid_byte((i >> 3u) & 7u) << 8u);
        }
        grid_lut[i] = e;
    }
}

// 4-bit: the level words of code word `w`'s even values and its odd ones, the words the
// uniform path takes as `w & LO_NIBBLES` and `(w >> 4) & LO_NIBBLES`.
fn grid_nibble_words(w: u32) -> vec2<u32> {
    // Byte j of s01: L(n0), L(n2), L(n1), L(n3) (n_i: nibble i of w); s23 likewise n4..n7.
    let s01 = grid_lut[w & 255u] | (grid_lut[(w >> 8u) & 255u] << 8u);
    let s23 = grid_lut[(w >> 16u) & 255u] | (grid_lut[w >> 24u] << 8u);
    return vec2<u32>((s01 & 0xffffu) | (s23 << 16u), (s01 >> 16u) | (s23 & 0xffff0000u));
}

// 2-bit: the level words of code word `w`'s bit pairs k = 0..3, the words the uniform path
// takes as `(w >> 2k) & LO_PAIRS`: byte k of the lookups of w's bytes 0..3 (a 4 × 4 byte
// transpose).
fn grid_pair_words(w: u32) -> vec4<u32> {
    let t0 = grid_lut[w & 255u];
    let t1 = grid_lut[(w >> 8u) & 255u];
    let t2 = grid_lut[(w >> 16u) & 255u];
    let t3 = grid_lut[w >> 24u];
    // Bytes 0 and 2 (u0, u2), 1 and 3 (u1, u3) of two lookups, interleaved.
    let u0 = (t0 & 0x00ff00ffu) | ((t1 << 8u) & 0xff00ff00u);
    let u1 = ((t0 >> 8u) & 0x00ff00ffu) | (t1 & 0xff00ff00u);
    let u2 = (t2 & 0x00ff00ffu) | ((t3 << 8u) & 0xff00ff00u);
    let u3 = ((t2 >> 8u) & 0x00ff00ffu) | (t3 & 0xff00ff00u);
    return vec4<u32>(
        (u0 & 0xffffu) | (u2 << 16u),
        (u1 & 0xffffu) | (u3 << 16u),
        (u0 >> 16u) | (u2 & 0xffff0000u),
        (u1 >> 16u) | (u3 & 0xffff0000u),
    );
}
#endif

// A word of four codes as the integer dot products take it: the codes, or (GRID, 3-bit codes
// only: 2- and 4-bit codes go through `grid_pair_words`, `grid_nibble_words`) their levels as
// signed bytes.
fn dot_word(m: u32) -> u32 {
#if GRID
    // Byte 0 of x: c0 | c1 << 3, byte 2: c2 | c3 << 3 (c_i: byte i of m, < 8).
    let x = m | (m >> 5u);
    return grid_lut[x & 63u] | (grid_lut[(x >> 16u) & 63u] << 16u);
#else
    return m;
#endif
}

// The bias that pairs with the integer sum of a block's codes: (scale, bias) of its group.
fn block_bias(sb: vec2<f32>) -> f32 {
    if BITS < 8u {
        return sb.y;
    }
    return sb.y + 128.0 * sb.x;
}

#if WIDE
// Wide rows, 2-, 3-, 4- and 8-bit codes: each lane takes whole 32-value blocks, read as
// vectors (`w_vec`, in place of `w_data`; a block is 8, 12, 16 or 32 bytes: one 8-byte vector
// (VEC2, 2-bit), three words (CODES3, 3-bit), one or two 16-byte vectors). The block's activations are 8-bit quantized (see
// q8.wgsl: once per workgroup here, or with XQ8 once by their producer), and every row of the
// workgroup takes integer dot products of four codes at a time (`dot4I8Packed`: one
// instruction where the device has integer dot products). The result is exactly the
// dequantized row times the quantized activations; the group scale multiplies the block's
// integer sum once, the bias `d · Σ xq`.
#if VEC2
@group(0) @binding(1) var<storage, read> w_vec: array<vec2<u32>>;
#elif CODES3
// 3-bit rows: the planes of weights.wgsl, read as words (a block's two pair words and its
// high word).
@group(0) @binding(1) var<storage, read> w_vec: array<u32>;
#else
@group(0) @binding(1) var<storage, read> w_vec: array<vec4<u32>>;
#endif

// Code vectors per row and block (2-bit: one 8-byte vector, held in .xy; 4-bit: one 16-byte
// vector; 8-bit: two).
const CODE_VECS: u32 = max(1u, BITS / 4u);
// UNROLL (from the host: 32 bytes of codes per row, 2 blocks for 4-bit and 4 for 2-bit rows
// longer than the lanes, else 1): blocks per lane whose codes are all requested before any is
// used. A decode step chains its matvecs, so a kernel's time is mostly memory latency unless
// each lane has its loads in flight at once.

// Code vector `v` of block `b` of row `r` (`nb` blocks per row).
fn code_vec(r: u32, nb: u32, b: u32, v: u32) -> vec4<u32> {
#if VEC2
    return vec4<u32>(w_vec[r * nb + b], 0u, 0u);
#elif CODES3
    let base = 3u * r * nb;
    return vec4<u32>(w_vec[base + 2u * b], w_vec[base + 2u * b + 1u], w_vec[base + 2u * nb + b], 0u);
#else
    return w_vec[CODE_VECS * (r * nb + b) + v];
#endif
}

#include q8.wgsl

#if XQ8
#if WORD_SCALES
// A block with a scale per word (q8.wgsl); `sx` = Σ_w s_w · Σq_w, the block sum the codes
// stand for.
struct BlockXW {
    q: array<u32, 8>,
    s: array<f32, 8>,
    sx: f32,
}

fn load_block(b: u32) -> BlockXW {
    let a = xq8[4u * b];
    let c = xq8[4u * b + 1u];
    let s0 = bitcast<vec4<f32>>(xq8[4u * b + 2u]);
    let s1 = bitcast<vec4<f32>>(xq8[4u * b + 3u]);
    var out: BlockXW;
    out.q = array(a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w);
    out.s = array(s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w);
    var sx = 0.0;
    for (var k = 0u; k < 8u; k++) {
        sx += out.s[k] * f32(dot4I8Packed(out.q[k], 0x01010101u));
    }
    out.sx = sx;
    return out;
}
#else
fn load_block(b: u32) -> BlockX {
    return unpack_block(xq8[3u * b], xq8[3u * b + 1u], xq8[3u * b + 2u]);
}
#endif
#else
// Block `b` of activation row `x_row` (vec4 index), quantized.
fn load_block(x_row: u32, b: u32) -> BlockX {
    var xs: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        xs[i] = x[x_row + 8u * b + i];
    }
    return quantize_block(xs, ORDER);
}
#endif

// Σ code · q over one block: 2-, 3- and 4-bit codes go in as they are (GRID: their levels);
// 8-bit codes go in as signed bytes code - 128 (`block_bias` adds the 128 back).
fn block_dot(c: array<vec4<u32>, CODE_VECS>, q: array<u32, 8>) -> i32 {
    if BITS == 3u {
        var s = 0;
        for (var m = 0u; m < 8u; m++) {
            s += dot4I8Packed(dot_word(code3(c[0], m)), q[m]);
        }
        return s;
    }
    if BITS == 2u {
        // Bit pair k of both words: values k, k+4, k+8, k+12 of each word's 16.
        let w = c[0].xy;
#if GRID
        let a = grid_pair_words(w.x);
        let b = grid_pair_words(w.y);
        return ((dot4I8Packed(a.x, q[0]) + dot4I8Packed(b.x, q[4])) + (dot4I8Packed(a.y, q[1]) + dot4I8Packed(b.y, q[5])))
            + ((dot4I8Packed(a.z, q[2]) + dot4I8Packed(b.z, q[6])) + (dot4I8Packed(a.w, q[3]) + dot4I8Packed(b.w, q[7])));
#else
        var s = 0;
        for (var k = 0u; k < 4u; k++) {
            s += dot4I8Packed(dot_word((w.x >> (2u * k)) & LO_PAIRS), q[k])
                + dot4I8Packed(dot_word((w.y >> (2u * k)) & LO_PAIRS), q[4u + k]);
        }
        return s;
#endif
    }
    if BITS == 4u {
        let w = c[0];
#if GRID
        let a = grid_nibble_words(w.x);
        let b = grid_nibble_words(w.y);
        let d = grid_nibble_words(w.z);
        let e = grid_nibble_words(w.w);
        return (dot4I8Packed(a.x, q[0]) + dot4I8Packed(a.y, q[1])) + (dot4I8Packed(b.x, q[2]) + dot4I8Packed(b.y, q[3]))
            + (dot4I8Packed(d.x, q[4]) + dot4I8Packed(d.y, q[5])) + (dot4I8Packed(e.x, q[6]) + dot4I8Packed(e.y, q[7]));
#else
        return (dot4I8Packed(dot_word(w.x & LO_NIBBLES), q[0]) + dot4I8Packed(dot_word((w.x >> 4u) & LO_NIBBLES), q[1]))
            + (dot4I8Packed(dot_word(w.y & LO_NIBBLES), q[2]) + dot4I8Packed(dot_word((w.y >> 4u) & LO_NIBBLES), q[3]))
            + (dot4I8Packed(dot_word(w.z & LO_NIBBLES), q[4]) + dot4I8Packed(dot_word((w.z >> 4u) & LO_NIBBLES), q[5]))
            + (dot4I8Packed(dot_word(w.w & LO_NIBBLES), q[6]) + dot4I8Packed(dot_word((w.w >> 4u) & LO_NIBBLES), q[7]));
#endif
    }
    let wa = c[0] ^ vec4<u32>(SIGN_BYTES);
    let wb = c[CODE_VECS - 1u] ^ vec4<u32>(SIGN_BYTES);
    return ((dot4I8Packed(wa.x, q[0]) + dot4I8Packed(wa.y, q[1])) + (dot4I8Packed(wa.z, q[2]) + dot4I8Packed(wa.w, q[3])))
        + ((dot4I8Packed(wb.x, q[4]) + dot4I8Packed(wb.y, q[5])) + (dot4I8Packed(wb.z, q[6]) + dot4I8Packed(wb.w, q[7])));
}

#if WORD_SCALES
// `block_dot` with each word's products scaled by the word's own scale.
fn scaled_dot(c: array<vec4<u32>, CODE_VECS>, x: BlockXW) -> f32 {
    if BITS == 3u {
        var s = 0.0;
        for (var m = 0u; m < 8u; m++) {
            s += x.s[m] * f32(dot4I8Packed(dot_word(code3(c[0], m)), x.q[m]));
        }
        return s;
    }
    if BITS == 2u {
        let w = c[0].xy;
#if GRID
        let a = grid_pair_words(w.x);
        let b = grid_pair_words(w.y);
        return ((x.s[0] * f32(dot4I8Packed(a.x, x.q[0])) + x.s[4] * f32(dot4I8Packed(b.x, x.q[4])))
            + (x.s[1] * f32(dot4I8Packed(a.y, x.q[1])) + x.s[5] * f32(dot4I8Packed(b.y, x.q[5]))))
            + ((x.s[2] * f32(dot4I8Packed(a.z, x.q[2])) + x.s[6] * f32(dot4I8Packed(b.z, x.q[6])))
            + (x.s[3] * f32(dot4I8Packed(a.w, x.q[3])) + x.s[7] * f32(dot4I8Packed(b.w, x.q[7]))));
#else
        var s = 0.0;
        for (var k = 0u; k < 4u; k++) {
            s += x.s[k] * f32(dot4I8Packed(dot_word((w.x >> (2u * k)) & LO_PAIRS), x.q[k]))
                + x.s[4u + k] * f32(dot4I8Packed(dot_word((w.y >> (2u * k)) & LO_PAIRS), x.q[4u + k]));
        }
        return s;
#endif
    }
    if BITS == 4u {
        let w = c[0];
#if GRID
        let a = grid_nibble_words(w.x);
        let b = grid_nibble_words(w.y);
        let d = grid_nibble_words(w.z);
        let e = grid_nibble_words(w.w);
        return (x.s[0] * f32(dot4I8Packed(a.x, x.q[0])) + x.s[1] * f32(dot4I8Packed(a.y, x.q[1])))
            + (x.s[2] * f32(dot4I8Packed(b.x, x.q[2])) + x.s[3] * f32(dot4I8Packed(b.y, x.q[3])))
            + (x.s[4] * f32(dot4I8Packed(d.x, x.q[4])) + x.s[5] * f32(dot4I8Packed(d.y, x.q[5])))
            + (x.s[6] * f32(dot4I8Packed(e.x, x.q[6])) + x.s[7] * f32(dot4I8Packed(e.y, x.q[7])));
#else
        return (x.s[0] * f32(dot4I8Packed(dot_word(w.x & LO_NIBBLES), x.q[0])) + x.s[1] * f32(dot4I8Packed(dot_word((w.x >> 4u) & LO_NIBBLES), x.q[1])))
            + (x.s[2] * f32(dot4I8Packed(dot_word(w.y & LO_NIBBLES), x.q[2])) + x.s[3] * f32(dot4I8Packed(dot_word((w.y >> 4u) & LO_NIBBLES), x.q[3])))
            + (x.s[4] * f32(dot4I8Packed(dot_word(w.z & LO_NIBBLES), x.q[4])) + x.s[5] * f32(dot4I8Packed(dot_word((w.z >> 4u) & LO_NIBBLES), x.q[5])))
            + (x.s[6] * f32(dot4I8Packed(dot_word(w.w & LO_NIBBLES), x.q[6])) + x.s[7] * f32(dot4I8Packed(dot_word((w.w >> 4u) & LO_NIBBLES), x.q[7])));
#endif
    }
    let wa = c[0] ^ vec4<u32>(SIGN_BYTES);
    let wb = c[CODE_VECS - 1u] ^ vec4<u32>(SIGN_BYTES);
    return ((x.s[0] * f32(dot4I8Packed(wa.x, x.q[0])) + x.s[1] * f32(dot4I8Packed(wa.y, x.q[1])))
        + (x.s[2] * f32(dot4I8Packed(wa.z, x.q[2])) + x.s[3] * f32(dot4I8Packed(wa.w, x.q[3]))))
        + ((x.s[4] * f32(dot4I8Packed(wb.x, x.q[4])) + x.s[5] * f32(dot4I8Packed(wb.y, x.q[5])))
        + (x.s[6] * f32(dot4I8Packed(wb.z, x.q[6])) + x.s[7] * f32(dot4I8Packed(wb.w, x.q[7]))));
}
#endif
#endif
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec(inv: Invocation, grp: Group) {
    let row0 = wg_index(grp) * ROWS_PER_WG;
    let t = grp.wid.z;
    if row0 >= p.rows {
        return;
    }
#if GRID
    load_grid();
#endif
    var acc: array<f32, ROWS_PER_WG>;
    let x_row = t * p.cols / 4u;
    var sq = 0.0; // NORM: this lane's share of Σx²
    // The matrix rows of this workgroup's physical rows, worked out once. Rows past the end
    // repeat the last one; their sums are never written.
    var rows: array<u32, ROWS_PER_WG>;
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        rows[k] = logical_row(min(row0 + k, p.rows - 1u));
    }
    // The epilogue's own reads, requested now.
#if ROPE
    let cs = rope_rotation(row0, inv.lid);
#else
#if !SWIGLU
    let res = residual(t, row0, inv.lid);
#endif
#endif
#if NORM_OUT
    let g = norm_weight(row0, inv.lid);
#endif
#if RMS_IN
    // The producer's partial sums of squares (after the words), requested now, summed after
    // the loop.
    var ss = vec4<f32>(0.0);
    for (var i = inv.lid; i < p.parts / 4u; i += WORKGROUP_SIZE) {
        ss += bitcast<vec4<f32>>(xq8[p.cols / 8u + i]);
    }
#endif
#if WIDE
    let nb = p.cols / 32u;
#if GRID
    // Steps over a uniform count (lanes past the end take block nb - 1 again, unused), so the
    // first can build `grid_lut` while its codes are on their way.
    for (var s0 = 0u; s0 < nb; s0 += UNROLL * WORKGROUP_SIZE) {
        let b0 = s0 + inv.lid;
#else
    for (var b0 = inv.lid; b0 < nb; b0 += UNROLL * WORKGROUP_SIZE) {
#endif
        // Every code and scale of this step first (past the end: block b0 again, unused).
        var codes: array<array<vec4<u32>, CODE_VECS>, UNROLL * ROWS_PER_WG>;
        var sbs: array<vec2<f32>, UNROLL * ROWS_PER_WG>;
        for (var u = 0u; u < UNROLL; u++) {
            var b = b0 + u * WORKGROUP_SIZE;
#if GRID
            b = select(min(b0, nb - 1u), b, b < nb);
#else
            b = select(b0, b, b < nb);
#endif
            for (var k = 0u; k < ROWS_PER_WG; k++) {
                let r = rows[k];
                for (var v = 0u; v < CODE_VECS; v++) {
                    codes[u * ROWS_PER_WG + k][v] = code_vec(r, nb, b, v);
                }
                sbs[u * ROWS_PER_WG + k] = group_params(r, (32u * b) / GROUP_SIZE, p.cols);
            }
        }
#if GRID
        if s0 == 0u {
            fill_grid_lut(inv.lid, WORKGROUP_SIZE);
            workgroupBarrier();
        }
#endif
        for (var u = 0u; u < UNROLL; u++) {
            let b = b0 + u * WORKGROUP_SIZE;
            if b < nb {
#if XQ8
                let bx = load_block(b);
#else
                let bx = load_block(x_row, b);
#endif
                for (var k = 0u; k < ROWS_PER_WG; k++) {
                    let i = u * ROWS_PER_WG + k;
#if WORD_SCALES
                    let dq = scaled_dot(codes[i], bx);
#else
                    let dq = bx.d * f32(block_dot(codes[i], bx.q));
#endif
                    acc[k] += sbs[i].x * dq + block_bias(sbs[i]) * bx.sx;
                }
            }
        }
    }
#else
    // Narrow rows: each lane takes 8 columns at a time (NORM: of x · g, gathering Σx²).
    for (var j = inv.lid; j < p.cols / 8u; j += WORKGROUP_SIZE) {
        var x0 = x[x_row + 2u * j];
        var x1 = x[x_row + 2u * j + 1u];
#if NORM
        sq += dot(x0, x0) + dot(x1, x1);
        x0 *= norm_w[2u * j];
        x1 *= norm_w[2u * j + 1u];
#endif
        for (var k = 0u; k < ROWS_PER_WG; k++) {
            let r = rows[k];
            acc[k] += dot8(weights8(r, 8u * j, p.cols), x0, x1);
        }
    }
#endif
#if NORM
    // Every lane's sums scale by the same 1/rms, so scaling before the row reduction is exact
    // up to rounding.
    let inv_rms = inverseSqrt(workgroup_sum(sq, inv) / f32(p.cols) + p.eps);
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        acc[k] *= inv_rms;
    }
#endif
#if RMS_IN
    let inv_rms = inverseSqrt(workgroup_sum((ss.x + ss.y) + (ss.z + ss.w), inv) / f32(p.cols) + p.eps);
    for (var k = 0u; k < ROWS_PER_WG; k++) {
        acc[k] *= inv_rms;
    }
#endif
    let total = reduce_rows(acc, inv);
#if ROPE
    rope_store(total, row0, inv.lid, cs);
#else
#if SWIGLU
    swiglu_store(total, row0 / 8u, inv.lid);
#else
#if NORM_OUT
    norm_out_store(res + total, g, row0, inv.lid);
#else
    if inv.lid < ROWS_PER_WG && row0 + inv.lid < p.rows {
#if BIAS
        out[t * p.out_stride + p.row_offset + row0 + inv.lid] = res + (total + bias[p.row_offset + row0 + inv.lid]);
#else
        out[t * p.out_stride + p.row_offset + row0 + inv.lid] = res + total;
#endif
    }
#endif
#endif
#endif
}
#include matmul_tiled.wgsl
