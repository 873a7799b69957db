// Rotary position embedding. The (cos, sin) table, one pair per (position, frequency) from
// position 0 on, is computed on the host in f64 (GPU sin/cos of large angles is not accurate
// enough) and kept across steps.
// `rope`: rotates the rows of a strided view of `x` into a view of `out` (IN_PLACE: of `x`). `rope_qkv` (QKV): reads rows `q | k | v` of a fused projection,
// writes RoPE(q) to `q_out` and RoPE(k), v to the KV cache rows of their positions, one pass.
#include common.wgsl

@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;

// Indices of pair `f` of the head starting at `base`: (2f, 2f+1) adjacent, (f, f + half) else.
fn pair(base: u32, f: u32, half: u32, adjacent: u32) -> vec2<u32> {
    if adjacent != 0u {
        return vec2<u32>(base + 2u * f, base + 2u * f + 1u);
    }
    return vec2<u32>(base + f, base + f + half);
}

fn rotate(v: vec2<f32>, pos: u32, f: u32, half: u32) -> vec2<f32> {
    let cs = table[pos * half + f];
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

#if QKV
struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    adjacent: u32,
    pos0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

// One invocation per (token, head of q | k | v, pair).
@compute @workgroup_size(WORKGROUP_SIZE)
fn rope_qkv(inv: Invocation, grp: Group) {
    let half = p.head_dim / 2u;
    let heads = p.n_heads + 2u * p.n_kv_heads;
    let i = wg_index(grp) * WORKGROUP_SIZE + inv.lid;
    if i >= p.n_tokens * heads * half {
        return;
    }
    let f = i % half;
    let h = (i / half) % heads;
    let t = i / (half * heads);
    let pos = p.pos0 + t;
    let q_dim = p.n_heads * p.head_dim;
    let kv_dim = p.n_kv_heads * p.head_dim;
    let src = pair(t * (q_dim + 2u * kv_dim) + h * p.head_dim, f, half, p.adjacent);
    let v = vec2<f32>(qkv[src.x], qkv[src.y]);
    if h < p.n_heads {
        let d = pair(t * q_dim + h * p.head_dim, f, half, p.adjacent);
        let r = rotate(v, pos, f, half);
        q_out[d.x] = r.x;
        q_out[d.y] = r.y;
    } else if h < p.n_heads + p.n_kv_heads {
        let d = pair(pos * kv_dim + (h - p.n_heads) * p.head_dim, f, half, p.adjacent);
        let r = rotate(v, pos, f, half);
        k_cache[d.x] = r.x;
        k_cache[d.y] = r.y;
    } else {
        let d = pair(pos * kv_dim + (h - p.n_heads - p.n_kv_heads) * p.head_dim, f, half, p.adjacent);
        v_cache[d.x] = v.x;
        v_cache[d.y] = v.y;
    }
}
#else
struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    adjacent: u32, // 1: pairs (2i, 2i+1); 0: pairs (i, i + head_dim/2)
    pos0: u32,     // position of the first token
    x_offset: u32, // element of row 0's first value in the source
    x_stride: u32, // values between source rows
    out_offset: u32,
    out_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if IN_PLACE
// Source and destination views of one buffer (WebGPU forbids a writable binding aliasing another).
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn rope(inv: Invocation, grp: Group) {
    let half = p.head_dim / 2u;
    let i = wg_index(grp) * WORKGROUP_SIZE + inv.lid;
    if i >= p.n_tokens * p.n_heads * half {
        return;
    }
    let f = i % half;
    let th = i / half; // token * n_heads + head
    let t = th / p.n_heads;
    let h = th % p.n_heads;
    let ab = pair(p.x_offset + t * p.x_stride + h * p.head_dim, f, half, p.adjacent);
    let d = pair(p.out_offset + t * p.out_stride + h * p.head_dim, f, half, p.adjacent);
    let r = rotate(vec2<f32>(x[ab.x], x[ab.y]), p.pos0 + t, f, half);
#if IN_PLACE
    x[d.x] = r.x;
    x[d.y] = r.y;
#else
    out[d.x] = r.x;
    out[d.y] = r.y;
#endif
}
#endif
