// L2 prefetch by extra workgroups of a small kernel: they read a weight matrix's first bytes
// (`pf_data`, declared by the including file with the sink `pf_sink`) while the kernel's own
// workgroups run, so the matvec after it finds them in the L2 instead of waiting on memory.
// The loaded words are folded into one value that is written only if it equals `magic` (a
// value from the host), so no compiler can drop the loads. PF_PER_LANE vectors per lane.

const PF_SPAN: u32 = PF_PER_LANE * WORKGROUP_SIZE;

// Prefetch workgroup `i` touches vectors i · PF_SPAN .. of the first `count`.
fn prefetch(i: u32, lid: u32, count: u32, magic: u32) {
    var acc = 0u;
    for (var k = 0u; k < PF_PER_LANE; k++) {
        let j = i * PF_SPAN + k * WORKGROUP_SIZE + lid;
        if j < count {
            let v = pf_data[j];
            acc ^= (v.x ^ v.y) ^ (v.z ^ v.w);
        }
    }
    if acc == magic {
        pf_sink[lid % 4u] = acc;
    }
}
