// RMSNorm, one workgroup per row: out = x / sqrt(mean(x²) + eps) * weight (BIAS: + bias).
// `layer_norm` (f32 rows only): out = (x - mean(x)) / sqrt(var(x) + eps) * weight (BIAS: + bias),
// the mean and then the variance about it summed by the whole workgroup (two passes over the
// row, so the variance never cancels as E[x²] - mean² would).
// IN_PLACE binds x once and writes the result over it (x == out), since WebGPU forbids a
// writable binding that aliases another. Q8_OUT writes the row as 8-bit activation blocks
// for the decode matvec instead (q8.wgsl; ORDER: the codes' order; dim a multiple of 32).
#include common.wgsl

struct Params {
    dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
#if IN_PLACE
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
#else
#if Q8_OUT
// Q8_OUT rows are whole 32-value blocks: x is read as vectors.
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> q8_out: array<vec4<u32>>;
#include q8_out.wgsl
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif
#endif
#if BIAS
// After the other bindings (f32 rows only).
#if IN_PLACE
@group(0) @binding(3) var<storage, read> bias: array<f32>;
#else
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#endif

#if Q8_OUT
// 1 / sqrt(mean(x²) + eps) of the row at vector `base4`, summed by the whole workgroup; each
// lane requests four vectors at a time.
fn inv_rms4(base4: u32, inv: Invocation) -> f32 {
    var ss = vec4<f32>(0.0);
    let n4 = p.dim / 4u;
    for (var i0 = inv.lid; i0 < n4; i0 += 4u * WORKGROUP_SIZE) {
        var v: array<vec4<f32>, 4>;
        for (var k = 0u; k < 4u; k++) {
            let i = i0 + k * WORKGROUP_SIZE;
            if i < n4 {
                v[k] = x4[base4 + i];
            }
        }
        for (var k = 0u; k < 4u; k++) {
            ss += v[k] * v[k];
        }
    }
    return inverseSqrt(workgroup_sum((ss.x + ss.y) + (ss.z + ss.w), inv) / f32(p.dim) + p.eps);
}

fn xs(i: u32) -> f32 {
    return x4[i / 4u][i % 4u];
}
#else
// 1 / sqrt(mean(x²) + eps) of the row at `base`, summed by the whole workgroup.
fn inv_rms(base: u32, inv: Invocation) -> f32 {
    var ss = 0.0;
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
        let v = x[base + i];
        ss += v * v;
    }
    return inverseSqrt(workgroup_sum(ss, inv) / f32(p.dim) + p.eps);
}
#endif

#if Q8_OUT
// Dispatch (ceil(8 · dim / 32 / WORKGROUP_SIZE), rows): every workgroup sums the squares of its
// whole row, then its lanes quantize eight words per block.
@compute @workgroup_size(WORKGROUP_SIZE)
fn rms_norm(inv: Invocation, grp: Group) {
    let row = grp.wid.y;
    let base = row * p.dim;
    let nb = p.dim / 32u;
    let b = grp.wid.x * (WORKGROUP_SIZE / 8u) + inv.lid / 8u;
    let w = inv.lid % 8u;
    // This lane's word (values and weights) is requested before the row's sum of squares.
    var v = vec4<f32>(0.0);
    var g = vec4<f32>(0.0);
    if b < nb {
        let c = vec4<u32>(32u * b) + word_values(w, ORDER);
        v = vec4<f32>(xs(base + c.x), xs(base + c.y), xs(base + c.z), xs(base + c.w));
        g = vec4<f32>(weight[c.x], weight[c.y], weight[c.z], weight[c.w]);
    }
    let r = inv_rms4(base / 4u, inv);
    let word = quantize_word(v * r * g, inv.lid);
    if b < nb {
        store_word(row * nb + b, w, word);
    }
}
#else
// Normalised value `v` of column `i` scaled by its weight (and shifted by its bias).
fn affine(v: f32, i: u32) -> f32 {
#if BIAS
    return v * weight[i] + bias[i];
#else
    return v * weight[i];
#endif
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rms_norm(inv: Invocation, grp: Group) {
    let base = wg_index(grp) * p.dim;
    let r = inv_rms(base, inv);
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
#if IN_PLACE
        x[base + i] = affine(x[base + i] * r, i);
#else
        out[base + i] = affine(x[base + i] * r, i);
#endif
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn layer_norm(inv: Invocation, grp: Group) {
    let base = wg_index(grp) * p.dim;
    var s = 0.0;
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
        s += x[base + i];
    }
    let mean = workgroup_sum(s, inv) / f32(p.dim);
    var ss = 0.0;
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
        let d = x[base + i] - mean;
        ss += d * d;
    }
    let r = inverseSqrt(workgroup_sum(ss, inv) / f32(p.dim) + p.eps);
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
#if IN_PLACE
        x[base + i] = affine((x[base + i] - mean) * r, i);
#else
        out[base + i] = affine((x[base + i] - mean) * r, i);
#endif
    }
}
#endif
