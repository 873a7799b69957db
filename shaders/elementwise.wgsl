// Elementwise kernels over `len` values, one invocation each (`swiglu`: over a fused gate|up, the
// gate through activation ACT, see activation.wgsl: SiLU for SwiGLU, GELU for GeGLU, …;
// `activation`: ACT of each value, ALIAS_SELF in place). `copy` moves `len` values between
// distinct buffers (STRIDED: rows of `width` values between views of different row strides) (the source may be host data in the upload ring), so copies stay inside the
// step's compute pass. WebGPU forbids a writable binding
// that aliases another, so an input that is the output buffer is read through the output
// binding: ALIAS_SELF (add: src is dst), ALIAS_GATE / ALIAS_UP / ALIAS_GATE_UP (silu_mul: which
// inputs are the output).
#include common.wgsl
#if OP_SWIGLU
#include activation.wgsl
#elif OP_ACTIVATION
#include activation.wgsl
#endif

struct Params {
    len: u32,
    src_offset: u32, // copy only
    dst_offset: u32, // copy only
    width: u32,      // swiglu: values of one gate (or up) half-row; strided copy: values per row
    src_stride: u32, // strided copy only: values between source rows
    dst_stride: u32, // strided copy only: values between destination rows
    factor: f32,     // scale only
}

@group(0) @binding(0) var<uniform> p: Params;

fn index(inv: Invocation, grp: Group) -> u32 {
    return wg_index(grp) * WORKGROUP_SIZE + inv.lid;
}

#if OP_ADD
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
#if !ALIAS_SELF
@group(0) @binding(2) var<storage, read> src: array<f32>;
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn add(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    if i >= p.len {
        return;
    }
#if ALIAS_SELF
    dst[i] = dst[i] + dst[i];
#else
    dst[i] = dst[i] + src[i];
#endif
}
#endif

#if OP_SCALE
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn scale(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    if i >= p.len {
        return;
    }
    x[i] = x[i] * p.factor;
}
#endif

#if OP_SILU_MUL
// Binding 1 is the output; bindings 2.. are the inputs that are not the output.
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
#if ALIAS_GATE
@group(0) @binding(2) var<storage, read> up: array<f32>;
#elif ALIAS_UP
@group(0) @binding(2) var<storage, read> gate: array<f32>;
#elif !ALIAS_GATE_UP
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn silu_mul(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    if i >= p.len {
        return;
    }
#if ALIAS_GATE_UP
    let g = out[i];
    let u = g;
#elif ALIAS_GATE
    let g = out[i];
    let u = up[i];
#elif ALIAS_UP
    let g = gate[i];
    let u = out[i];
#else
    let g = gate[i];
    let u = up[i];
#endif
    out[i] = silu(g) * u;
}
#endif

#if OP_SWIGLU
// out[t, j] = act(gate_up[t, j]) * gate_up[t, width + j]; `len` is rows × width.
// Q8_OUT: one invocation per 32 values, written as an 8-bit activation block for the decode
// matvec (q8.wgsl; ORDER: the codes' order; width a multiple of 32).
@group(0) @binding(2) var<storage, read> gate_up: array<f32>;
#if Q8_OUT
@group(0) @binding(1) var<storage, read_write> q8_out: array<vec4<u32>>;
#include q8_out.wgsl

// Eight invocations per 32-value block (the dispatch covers len / 4 invocations in whole
// workgroups: no invocation returns before the block's barriers).
@compute @workgroup_size(WORKGROUP_SIZE)
fn swiglu(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    let b = i / 8u;
    let w = i % 8u;
    let blocks = p.width / 32u;
    let valid = b < p.len / 32u;
    var v = vec4<f32>(0.0);
    if valid {
        let g = vec4<u32>(2u * (b / blocks) * p.width + 32u * (b % blocks)) + word_values(w, ORDER);
        let up = g + vec4<u32>(p.width);
        v = vec4<f32>(act(gate_up[g.x]), act(gate_up[g.y]), act(gate_up[g.z]), act(gate_up[g.w]))
            * vec4<f32>(gate_up[up.x], gate_up[up.y], gate_up[up.z], gate_up[up.w]);
    }
    let word = quantize_word(v, inv.lid);
    if valid {
        store_word(b, w, word);
    }
}
#else
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn swiglu(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    if i >= p.len {
        return;
    }
    let g = i + (i / p.width) * p.width; // row t starts at 2 * t * width
    out[i] = act(gate_up[g]) * gate_up[g + p.width];
}
#endif
#endif

#if OP_ACTIVATION
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
#if !ALIAS_SELF
@group(0) @binding(2) var<storage, read> src: array<f32>;
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn activation(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    if i >= p.len {
        return;
    }
#if ALIAS_SELF
    dst[i] = act(dst[i]);
#else
    dst[i] = act(src[i]);
#endif
}
#endif

#if OP_COPY
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn copy(inv: Invocation, grp: Group) {
    let i = index(inv, grp);
    if i >= p.len {
        return;
    }
#if ZERO_PAD
    // Whole destination rows: `width` values of the source row, then zeros (a dense weight's
    // padded columns meet zeros, never stale values).
    let row = i / p.dst_stride;
    let col = i % p.dst_stride;
    var v = 0.0;
    if col < p.width {
        v = src[p.src_offset + row * p.src_stride + col];
    }
    dst[p.dst_offset + i] = v;
#elif STRIDED
    // Rows of `width` values between row-major matrices of different strides.
    let row = i / p.width;
    let col = i % p.width;
    dst[p.dst_offset + row * p.dst_stride + col] = src[p.src_offset + row * p.src_stride + col];
#else
    dst[p.dst_offset + i] = src[p.src_offset + i];
#endif
}
#endif
