// Reading weight matrices as uploaded (see quant/mod.rs for the packed layout):
// `w_data` (not WIDE: the wide matvec reads the codes as vectors, see matmul.wgsl) holds packed codes (WEIGHT_KIND 0), f32 bits (1) or f16 pairs (2) of one row range;
// `w_params` holds per-group f16 (scale, offset) pairs (asymmetric) or two scales per word
// (symmetric), indexed from the first row of the range. Every row has `cols` values, a multiple
// of 32. GRID (codes of 2-4 bits): the codes index a learned table of int8 levels, held in the
// first GRID_WORDS words of `w_params` (the group parameters follow): `w = scale * level[q] +
// bias`, bias the offset (asymmetric) or 0 (symmetric, no zero point); every entry point calls
// `load_grid` first (the integer paths of matmul.wgsl then build `grid_lut` from it). Needs
// WEIGHT_KIND, BITS, GROUP_SIZE, ASYMMETRIC, GRID, USE_F16 and binds `w_data`, `w_params`.

const KIND_QUANT: u32 = 0u;
const KIND_F32: u32 = 1u;
const KIND_F16: u32 = 2u;
const MASK: u32 = (1u << BITS) - 1u;
// Shift unit of the sub-word path; 0 for 8-bit, whose path never shifts by 4 codes.
const SUB_BITS: u32 = BITS & 7u;

#if USE_F16
alias wt = f16;
#else
alias wt = f32;
#endif

#if GRID
// Words of the code table before the group parameters (weights.rs `GRID_WORDS`): level q is
// byte q % 4 of word q / 4 (4, 8 or 16 levels; unused bytes are 0).
const GRID_WORDS: u32 = 4u;
// The table, read once per invocation (`load_grid`).
var<private> grid_tab: vec4<u32>;

fn load_grid() {
    grid_tab = vec4<u32>(w_params[0], w_params[1], w_params[2], w_params[3]);
}

// The table words holding the levels of codes `c` (each < 2^BITS): selects, not indexing.
fn grid_words(c: vec4<u32>) -> vec4<u32> {
    if BITS == 2u {
        return vec4<u32>(grid_tab.x);
    }
    let odd = (c & vec4<u32>(4u)) != vec4<u32>(0u);
    let lo = select(vec4<u32>(grid_tab.x), vec4<u32>(grid_tab.y), odd);
    if BITS == 3u {
        return lo;
    }
    let hi = select(vec4<u32>(grid_tab.z), vec4<u32>(grid_tab.w), odd);
    return select(lo, hi, c >= vec4<u32>(8u));
}

// The levels of codes `c` (sign-extended bytes of the table).
fn grid_levels(c: vec4<u32>) -> vec4<i32> {
    let sh = vec4<u32>(24u) - 8u * (c & vec4<u32>(3u));
    return bitcast<vec4<i32>>(grid_words(c) << sh) >> vec4<u32>(24u);
}

// Level `q` (< 2^BITS) as an unsigned byte, the form the integer dot products take (signed
// bytes); dynamic indexing, for building matmul.wgsl's `grid_lut` only.
fn grid_byte(q: u32) -> u32 {
    return (grid_tab[q >> 2u] >> (8u * (q & 3u))) & 255u;
}
#endif

// `(scale, bias)` of group `g` of row `r`: `w = scale * q + bias` (GRID: `scale * level[q] +
// bias`).
fn group_params(r: u32, g: u32, cols: u32) -> vec2<f32> {
    let i = r * ((cols + GROUP_SIZE - 1u) / GROUP_SIZE) + g;
#if GRID
#if ASYMMETRIC
    return unpack2x16float(w_params[GRID_WORDS + i]);
#else
    return vec2<f32>(unpack2x16float(w_params[GRID_WORDS + (i >> 1u)])[i & 1u], 0.0);
#endif
#else
#if ASYMMETRIC
    return unpack2x16float(w_params[i]);
#else
    let s = unpack2x16float(w_params[i >> 1u])[i & 1u];
    return vec2<f32>(s, -s * f32(1u << (BITS - 1u)));
#endif
#endif
}

// 3-bit rows are uploaded as two planes (weights.rs `repack3`): the row's blocks of low bit
// pairs (two words per 32-value block, packed as 2-bit codes), then a word of high bits per
// block, value v's at bit `hi3_bit(v)`.
fn hi3_bit(v: u32) -> u32 {
    return 8u * ((v % 16u) / 4u) + 4u * (v / 16u) + v % 4u;
}

#if !WIDE
// Codes of values `c0 .. c0 + 8` of row `r` (`c0` a multiple of 8). The span of 8 codes is
// 8 * BITS bits and lies within two words; the upload pads one word so `hi` is always readable.
// (5- and 6-bit matrices are read here only: the wide matvec and the integer prefill take
// 2, 3, 4 and 8 bits.)
fn codes8(r: u32, c0: u32, cols: u32) -> array<vec4<u32>, 2> {
    if BITS == 3u {
        let nb = cols / 32u;
        let base = r * 3u * nb;
        let b = c0 / 32u;
        let v0 = c0 % 32u;
        let pairs = w_data[base + 2u * b + v0 / 16u] >> (2u * (v0 % 16u));
        // Values v0 + i, i < 4, have their high bits at hi3_bit(v0) + i; the next four 8 on.
        let high = w_data[base + 2u * nb + b] >> hi3_bit(v0);
        let sh = vec4<u32>(0u, 1u, 2u, 3u);
        let m = vec4<u32>(3u);
        let one = vec4<u32>(1u);
        return array(
            ((vec4<u32>(pairs) >> (2u * sh)) & m) | (((vec4<u32>(high) >> sh) & one) << vec4<u32>(2u)),
            ((vec4<u32>(pairs) >> (2u * sh + 8u)) & m) | (((vec4<u32>(high) >> (sh + 8u)) & one) << vec4<u32>(2u)),
        );
    }
    let bit0 = c0 * BITS;
    let wi = r * (cols * BITS / 32u) + (bit0 >> 5u);
    let lo = w_data[wi];
    // Only 5-, 6- and 8-bit spans need the next word.
    var hi = 0u;
    if BITS >= 5u {
        hi = w_data[wi + 1u];
    }
    if BITS == 8u {
        let m = vec4<u32>(255u);
        return array(
            (vec4<u32>(lo) >> vec4<u32>(0u, 8u, 16u, 24u)) & m,
            (vec4<u32>(hi) >> vec4<u32>(0u, 8u, 16u, 24u)) & m,
        );
    }
    let s = bit0 & 31u;
    if BITS == 5u || BITS == 6u {
        // The 8 codes span 40 or 48 bits from bit s (0, 8, 16 or 24) of `lo`: codes 0..4 lie in
        // the 32-bit window at s, codes 4..8 in the window 4 * BITS bits further on.
        let w0 = select((lo >> s) | (hi << (32u - s)), lo, s == 0u);
        // (Masked shift amounts: this branch is compiled, not taken, for the other widths.)
        let w1 = (w0 >> ((4u * BITS) & 31u)) | ((hi >> s) << ((32u - 4u * BITS) & 31u));
        let sh = vec4<u32>(0u, 1u, 2u, 3u) * BITS;
        let m = vec4<u32>(MASK);
        return array((vec4<u32>(w0) >> sh) & m, (vec4<u32>(w1) >> sh) & m);
    }
    // 2- and 4-bit: 8 codes fit one 32-bit window starting at bit0.
    let win = lo >> s;
    let sh = vec4<u32>(0u, 1u, 2u, 3u) * SUB_BITS;
    let m = vec4<u32>(MASK);
    return array((vec4<u32>(win) >> sh) & m, (vec4<u32>(win) >> (sh + 4u * SUB_BITS)) & m);
}

// Weights `c0 .. c0 + 8` of row `r`, dequantized (in f16 when USE_F16).
fn weights8(r: u32, c0: u32, cols: u32) -> array<vec4<wt>, 2> {
    if WEIGHT_KIND == KIND_F32 {
        let i = r * cols + c0;
        return array(
            vec4<wt>(bitcast<vec4<f32>>(vec4<u32>(w_data[i], w_data[i + 1u], w_data[i + 2u], w_data[i + 3u]))),
            vec4<wt>(bitcast<vec4<f32>>(vec4<u32>(w_data[i + 4u], w_data[i + 5u], w_data[i + 6u], w_data[i + 7u]))),
        );
    }
    if WEIGHT_KIND == KIND_F16 {
        let i = (r * cols + c0) / 2u;
        return array(
            vec4<wt>(vec4<f32>(unpack2x16float(w_data[i]), unpack2x16float(w_data[i + 1u]))),
            vec4<wt>(vec4<f32>(unpack2x16float(w_data[i + 2u]), unpack2x16float(w_data[i + 3u]))),
        );
    }
    let q = codes8(r, c0, cols);
    let sb = group_params(r, c0 / GROUP_SIZE, cols);
    let s = wt(sb.x);
    let b = wt(sb.y);
#if GRID
    return array(vec4<wt>(grid_levels(q[0])) * s + b, vec4<wt>(grid_levels(q[1])) * s + b);
#else
    return array(vec4<wt>(q[0]) * s + b, vec4<wt>(q[1]) * s + b);
#endif
}
#endif
