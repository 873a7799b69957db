// Shared by every kernel: invocation builtins, linear workgroup index, workgroup reductions.
// Needs WORKGROUP_SIZE (a power of two) and USE_SUBGROUPS from the preprocessor.

// The invocation's own builtins (non-uniform: they differ between a workgroup's lanes).
struct Invocation {
    @builtin(local_invocation_index) lid: u32,
#if USE_SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
#endif
}

// The workgroup's builtins, apart from the invocation's: WGSL's uniformity analysis tracks a
// parameter as a whole, so values derived from these stay workgroup-uniform (branches on them
// may precede a barrier, as browsers' compilers check) only when no lane id shares the struct.
struct Group {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// Dispatches wider than 65535 workgroups are folded into x and y; z stays free for kernels.
fn wg_index(grp: Group) -> u32 {
    return grp.wid.x + grp.wid.y * grp.nwg.x;
}

var<workgroup> red_scratch: array<f32, WORKGROUP_SIZE>;

const NEG_BIG: f32 = -3.0e38;

// SiLU (x · sigmoid(x)), as the SwiGLU kernels and the gate|up matvec's epilogue apply it.
fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

#if USE_SUBGROUPS
// One partial per subgroup, then every invocation sums the few partials.
fn workgroup_sum(v: f32, inv: Invocation) -> f32 {
    let s = subgroupAdd(v);
    workgroupBarrier();
    if inv.sg_lane == 0u {
        red_scratch[inv.sg_id] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < inv.sg_count; i++) {
        t += red_scratch[i];
    }
    return t;
}

fn workgroup_max(v: f32, inv: Invocation) -> f32 {
    let s = subgroupMax(v);
    workgroupBarrier();
    if inv.sg_lane == 0u {
        red_scratch[inv.sg_id] = s;
    }
    workgroupBarrier();
    var t = NEG_BIG;
    for (var i = 0u; i < inv.sg_count; i++) {
        t = max(t, red_scratch[i]);
    }
    return t;
}
#else
// Tree reduction in workgroup memory. The leading barrier protects the scratch from a previous
// call whose result other invocations may still be reading.
fn workgroup_sum(v: f32, inv: Invocation) -> f32 {
    workgroupBarrier();
    red_scratch[inv.lid] = v;
    workgroupBarrier();
    for (var s = WORKGROUP_SIZE / 2u; s > 0u; s >>= 1u) {
        if inv.lid < s {
            red_scratch[inv.lid] += red_scratch[inv.lid + s];
        }
        workgroupBarrier();
    }
    return red_scratch[0];
}

fn workgroup_max(v: f32, inv: Invocation) -> f32 {
    workgroupBarrier();
    red_scratch[inv.lid] = v;
    workgroupBarrier();
    for (var s = WORKGROUP_SIZE / 2u; s > 0u; s >>= 1u) {
        if inv.lid < s {
            red_scratch[inv.lid] = max(red_scratch[inv.lid], red_scratch[inv.lid + s]);
        }
        workgroupBarrier();
    }
    return red_scratch[0];
}
#endif
