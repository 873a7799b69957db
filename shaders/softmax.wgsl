// Row-wise softmax in place, one workgroup per row: x = exp(x - max(x)) / Σ exp(x - max(x)),
// the max subtracted so no exp() overflows.
#include common.wgsl

struct Params {
    len: u32, // values per row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn softmax(inv: Invocation, grp: Group) {
    let base = wg_index(grp) * p.len;
    var m = NEG_BIG;
    for (var i = inv.lid; i < p.len; i += WORKGROUP_SIZE) {
        m = max(m, x[base + i]);
    }
    m = workgroup_max(m, inv);
    var l = 0.0;
    for (var i = inv.lid; i < p.len; i += WORKGROUP_SIZE) {
        let e = exp(x[base + i] - m);
        x[base + i] = e;
        l += e;
    }
    // Each lane rescales the values it wrote itself.
    let r = 1.0 / workgroup_sum(l, inv);
    for (var i = inv.lid; i < p.len; i += WORKGROUP_SIZE) {
        x[base + i] = x[base + i] * r;
    }
}
