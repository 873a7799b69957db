// Rotary position embedding in place. The (cos, sin) table, one pair per (position, frequency)
// from position 0 on, is computed on the host in f64 (GPU sin/cos of large angles is not
// accurate enough) and kept across steps.
#include common.wgsl

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    adjacent: u32, // 1: pairs (2i, 2i+1); 0: pairs (i, i + head_dim/2)
    pos0: u32,     // position of the first token
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn rope(inv: Invocation) {
    let half = p.head_dim / 2u;
    let i = wg_index(inv) * WORKGROUP_SIZE + inv.lid;
    if i >= p.n_tokens * p.n_heads * half {
        return;
    }
    let f = i % half;
    let th = i / half; // token * n_heads + head
    let t = th / p.n_heads;
    let cs = table[(p.pos0 + t) * half + f];
    let base = th * p.head_dim;
    var a = base + f;
    var b = base + f + half;
    if p.adjacent != 0u {
        a = base + 2u * f;
        b = a + 1u;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * cs.x - x1 * cs.y;
    x[b] = x0 * cs.y + x1 * cs.x;
}
