// Convolution columns (core's `Im2col`): output row (oy, ox) holds, at column
// c · kh · kw + dy · kw + dx, input value (c, oy · stride − pad_h + dy, ox · stride − pad_w + dx),
// 0 outside the input ([C, H, W] planes). One invocation per output value.
#include common.wgsl

struct Params {
    total: u32,   // output values (rows × row_len)
    row_len: u32, // channels × kernel_h × kernel_w
    height: u32,  // input rows
    width: u32,   // input columns
    kernel_h: u32,
    kernel_w: u32,
    stride: u32,
    pad_h: u32,
    pad_w: u32,
    out_w: u32,   // output grid columns
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn im2col(inv: Invocation, grp: Group) {
    let i = wg_index(grp) * WORKGROUP_SIZE + inv.lid;
    if i >= p.total {
        return;
    }
    let row = i / p.row_len;
    let col = i % p.row_len;
    let taps = p.kernel_h * p.kernel_w;
    let c = col / taps;
    let dy = (col % taps) / p.kernel_w;
    let dx = col % p.kernel_w;
    let iy = i32((row / p.out_w) * p.stride + dy) - i32(p.pad_h);
    let ix = i32((row % p.out_w) * p.stride + dx) - i32(p.pad_w);
    var v = 0.0;
    if iy >= 0 && iy < i32(p.height) && ix >= 0 && ix < i32(p.width) {
        v = x[(c * p.height + u32(iy)) * p.width + u32(ix)];
    }
    out[i] = v;
}
