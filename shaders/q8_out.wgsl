#include q8.wgsl

// Producers (Q8_OUT): eight lanes per block, each holding the four values of one stored word
// (`word_values`), so a row of blocks is written by many lanes at once rather than one lane
// per block. Needs WORKGROUP_SIZE a multiple of 8; every lane must call `quantize_word`
// (it has barriers), lanes past the end with zeros.
var<workgroup> q8_max: array<f32, WORKGROUP_SIZE>;
var<workgroup> q8_sum: array<i32, WORKGROUP_SIZE>;

struct Word {
    q: u32,
    d: f32,
    sx: f32,
}

// Quantizes this lane's word `v` with the scale of its block (lanes lid - lid % 8 ..+ 8).
fn quantize_word(v: vec4<f32>, lid: u32) -> Word {
    let a = abs(v);
    q8_max[lid] = max(max(a.x, a.y), max(a.z, a.w));
    workgroupBarrier();
    let first = lid - lid % 8u;
    var m = 0.0;
    for (var k = 0u; k < 8u; k++) {
        m = max(m, q8_max[first + k]);
    }
    var out: Word;
    out.d = m / 127.0;
    let inv_d = select(0.0, 1.0 / out.d, out.d > 0.0);
    out.q = q8(v * inv_d);
    q8_sum[lid] = dot4I8Packed(out.q, 0x01010101u);
    workgroupBarrier();
    var s = 0;
    for (var k = 0u; k < 8u; k++) {
        s += q8_sum[first + k];
    }
    out.sx = out.d * f32(s);
    return out;
}

// Stores lane word `w` of block `b` (and, from word 0, the block's scales).
fn store_word(b: u32, w: u32, word: Word) {
    q8_out[3u * b + w / 4u][w % 4u] = word.q;
    if w == 0u {
        q8_out[3u * b + 2u] = vec4<u32>(bitcast<u32>(word.d), bitcast<u32>(word.sx), 0u, 0u);
    }
}
