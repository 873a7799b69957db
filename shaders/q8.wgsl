// 8-bit activation blocks for the decode matvec's integer dot products: 32 values quantized
// with one scale d = max|x| / 127, codes round_half_even(x · (1 / d)) (as the CPU backend's
// kernels do), packed four to a word in the order the weight codes unpack (`order`):
// ORDER_NATURAL (8-bit codes: values in order), ORDER_EVEN_ODD (4-bit: a code word holds values
// 8k..8k+7 with the even ones in the low nibbles, so each 8 values pack as the even four, then
// the odd four), ORDER_STRIDE4 (2-bit: masking a code word's bit pair k leaves values k, k+4,
// k+8, k+12 of its 16, so each 16 values pack as four such quadruples).
//
// Stored (a producer writes a row of blocks for the matvec to read, `array<vec4<u32>>`):
// block b is vectors 3b, 3b + 1 (the codes) and 3b + 2 (d, d · Σq as f32 bits, then two
// unused words): 12 words per 32 values.
//
// Word scales (WORD_SCALES in matmul.wgsl, written by the gate|up matvec's SwiGLU epilogue,
// whose workgroups each make one word): each stored word of four codes has its own scale
// d = max|x| / 127 over its four values; block b is vectors 4b, 4b + 1 (the codes) and
// 4b + 2, 4b + 3 (the eight word scales as f32 bits): 16 words per 32 values.

const ORDER_NATURAL: u32 = 0u;
const ORDER_EVEN_ODD: u32 = 1u;
const ORDER_STRIDE4: u32 = 2u;

struct BlockX {
    q: array<u32, 8>,
    d: f32,  // scale: x ≈ d · q
    sx: f32, // d · Σq: the block sum the codes stand for
}

fn q8(v: vec4<f32>) -> u32 {
    return pack4xI8(vec4<i32>(round(v)));
}

fn quantize_block(xs: array<vec4<f32>, 8>, order: u32) -> BlockX {
    var amax = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        amax = max(amax, abs(xs[i]));
    }
    let m = max(max(amax.x, amax.y), max(amax.z, amax.w));
    let d = m / 127.0;
    let inv_d = select(0.0, 1.0 / d, d > 0.0);
    var out: BlockX;
    if order == ORDER_EVEN_ODD {
        for (var k = 0u; k < 4u; k++) {
            let a = xs[2u * k] * inv_d;
            let c = xs[2u * k + 1u] * inv_d;
            out.q[2u * k] = q8(vec4<f32>(a.x, a.z, c.x, c.z));
            out.q[2u * k + 1u] = q8(vec4<f32>(a.y, a.w, c.y, c.w));
        }
    } else if order == ORDER_STRIDE4 {
        for (var j = 0u; j < 2u; j++) {
            for (var k = 0u; k < 4u; k++) {
                let v = vec4<f32>(xs[4u * j][k], xs[4u * j + 1u][k], xs[4u * j + 2u][k], xs[4u * j + 3u][k]);
                out.q[4u * j + k] = q8(v * inv_d);
            }
        }
    } else {
        for (var k = 0u; k < 8u; k++) {
            out.q[k] = q8(xs[k] * inv_d);
        }
    }
    var qsum = 0;
    for (var k = 0u; k < 8u; k++) {
        qsum += dot4I8Packed(out.q[k], 0x01010101u);
    }
    out.d = d;
    out.sx = d * f32(qsum);
    return out;
}

// Four values as one word of 8-bit codes with its own scale d = max|h| / 127 (word scales,
// above): (codes, d as f32 bits).
fn scaled_word(h: vec4<f32>) -> vec2<u32> {
    let a = abs(h);
    let d = max(max(a.x, a.y), max(a.z, a.w)) / 127.0;
    let inv_d = select(0.0, 1.0 / d, d > 0.0);
    return vec2<u32>(q8(h * inv_d), bitcast<u32>(d));
}

// Offsets within its block of the four values of stored word `w` (0..8) in `order`.
fn word_values(w: u32, order: u32) -> vec4<u32> {
    if order == ORDER_EVEN_ODD {
        return vec4<u32>(8u * (w / 2u) + w % 2u) + vec4<u32>(0u, 2u, 4u, 6u);
    }
    if order == ORDER_STRIDE4 {
        return vec4<u32>(16u * (w / 4u) + w % 4u) + vec4<u32>(0u, 4u, 8u, 12u);
    }
    return vec4<u32>(4u * w) + vec4<u32>(0u, 1u, 2u, 3u);
}

// The three vectors of a stored block.
fn pack_block(bx: BlockX) -> array<vec4<u32>, 3> {
    return array(
        vec4<u32>(bx.q[0], bx.q[1], bx.q[2], bx.q[3]),
        vec4<u32>(bx.q[4], bx.q[5], bx.q[6], bx.q[7]),
        vec4<u32>(bitcast<u32>(bx.d), bitcast<u32>(bx.sx), 0u, 0u),
    );
}

fn unpack_block(a: vec4<u32>, b: vec4<u32>, s: vec4<u32>) -> BlockX {
    var out: BlockX;
    out.q = array(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
    out.d = bitcast<f32>(s.x);
    out.sx = bitcast<f32>(s.y);
    return out;
}

