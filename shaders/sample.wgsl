// Token selection on the GPU, so a decode step can feed the next one without a round trip:
// `argmax` writes f32(index of the largest of x[0 .. len]) to out[out_offset] (the first index
// on ties, NaN never wins: the host sampler's rule). Each lane scans a strided slice, then
// (value, index) pairs are reduced in workgroup memory. Long inputs take two passes (PARTIAL):
// `argmax` with PARTIAL=1 over many workgroups, each writing its (value, index) pair to `pairs`,
// then `argmax` with PAIRS=1 in one workgroup over those pairs.
#include common.wgsl

struct Params {
    len: u32,        // values (PAIRS: pairs) to scan
    out_offset: u32, // where the index goes (not PARTIAL)
    per_wg: u32,     // PARTIAL: values per workgroup
}

@group(0) @binding(0) var<uniform> p: Params;
#if PAIRS
@group(0) @binding(1) var<storage, read> pairs: array<vec2<u32>>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#endif
#if PARTIAL
@group(0) @binding(2) var<storage, read_write> pairs_out: array<vec2<u32>>;
#else
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif

var<workgroup> best_v: array<f32, WORKGROUP_SIZE>;
var<workgroup> best_i: array<u32, WORKGROUP_SIZE>;

// Whether (v, i) beats (bv, bi): larger, or equal and earlier. NaN compares false.
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn argmax(inv: Invocation, grp: Group) {
    // No candidate yet: the lowest finite value with no index, so -inf and NaN never win.
    var bv = bitcast<f32>(0xff7fffffu); // -f32::MAX (a decimal literal rounds past it in some compilers)
    var bi = 0xffffffffu;
#if PARTIAL
    let start = wg_index(grp) * p.per_wg;
    let end = min(start + p.per_wg, p.len);
#else
    let start = 0u;
    let end = p.len;
#endif
    for (var j = start + inv.lid; j < end; j += WORKGROUP_SIZE) {
#if PAIRS
        let v = bitcast<f32>(pairs[j].x);
        let i = pairs[j].y;
#else
        let v = x[j];
        let i = j;
#endif
        if better(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
    }
    best_v[inv.lid] = bv;
    best_i[inv.lid] = bi;
    workgroupBarrier();
    for (var s = WORKGROUP_SIZE / 2u; s > 0u; s >>= 1u) {
        if inv.lid < s {
            let v = best_v[inv.lid + s];
            let i = best_i[inv.lid + s];
            if better(v, i, best_v[inv.lid], best_i[inv.lid]) {
                best_v[inv.lid] = v;
                best_i[inv.lid] = i;
            }
        }
        workgroupBarrier();
    }
    if inv.lid == 0u {
#if PARTIAL
        pairs_out[wg_index(grp)] = vec2<u32>(bitcast<u32>(best_v[0]), best_i[0]);
#else
        // All NaN (or empty): index 0, as on the host.
        out[p.out_offset] = f32(select(best_i[0], 0u, best_i[0] == 0xffffffffu));
#endif
    }
}
