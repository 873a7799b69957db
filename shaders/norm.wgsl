// RMSNorm, one workgroup per row: out = x / sqrt(mean(x²) + eps) * weight.
// IN_PLACE binds x once and writes the result over it (x == out), since WebGPU forbids a
// writable binding that aliases another.
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
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn rms_norm(inv: Invocation) {
    let base = wg_index(inv) * p.dim;
    var ss = 0.0;
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
        let v = x[base + i];
        ss += v * v;
    }
    let r = inverseSqrt(workgroup_sum(ss, inv) / f32(p.dim) + p.eps);
    for (var i = inv.lid; i < p.dim; i += WORKGROUP_SIZE) {
#if IN_PLACE
        x[base + i] = x[base + i] * r * weight[i];
#else
        out[base + i] = x[base + i] * r * weight[i];
#endif
    }
}
