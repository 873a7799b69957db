// 8-bit activation blocks for the decode matvec's integer dot products: 32 values quantized
// with one scale d = max|x| / 127, codes round_half_even(x · (1 / d)) (as the CPU backend's
// kernels do), packed four to a word. 4-bit codes hold values 8k..8k+7 of a block with the
// even ones in the low nibbles, so for them (`even_odd`) each 8 values pack as the even four,
// then the odd four; 8-bit codes take them in order.
//
// Stored (a producer writes a row of blocks for the matvec to read, `array<vec4<u32>>`):
// block b is vectors 3b, 3b + 1 (the codes) and 3b + 2 (d, d · Σq as f32 bits, then two
// unused words): 12 words per 32 values.

struct BlockX {
    q: array<u32, 8>,
    d: f32,  // scale: x ≈ d · q
    sx: f32, // d · Σq: the block sum the codes stand for
}

fn q8(v: vec4<f32>) -> u32 {
    return pack4xI8(vec4<i32>(round(v)));
}

fn quantize_block(xs: array<vec4<f32>, 8>, even_odd: bool) -> BlockX {
    var amax = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        amax = max(amax, abs(xs[i]));
    }
    let m = max(max(amax.x, amax.y), max(amax.z, amax.w));
    let d = m / 127.0;
    let inv_d = select(0.0, 1.0 / d, d > 0.0);
    var out: BlockX;
    if even_odd {
        for (var k = 0u; k < 4u; k++) {
            let a = xs[2u * k] * inv_d;
            let c = xs[2u * k + 1u] * inv_d;
            out.q[2u * k] = q8(vec4<f32>(a.x, a.z, c.x, c.z));
            out.q[2u * k + 1u] = q8(vec4<f32>(a.y, a.w, c.y, c.w));
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

