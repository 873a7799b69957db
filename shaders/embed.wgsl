// out[i, :] = dequant(W)[tokens[i], :] for the tokens whose row lies in this piece of the table.
// One invocation per (token, span of 8 columns). INDIRECT: token ids are f32 values in a device
// buffer (written by the previous step's argmax), from `ids[id_offset]` on.
#include common.wgsl

struct Params {
    cols: u32,
    n: u32,         // tokens
    row_start: u32, // first table row held by this piece
    rows: u32,      // rows in this piece
    id_offset: u32, // INDIRECT: first id in `ids`
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w_data: array<u32>;
@group(0) @binding(2) var<storage, read> w_params: array<u32>;
#if INDIRECT
@group(0) @binding(3) var<storage, read> ids: array<f32>;
#else
@group(0) @binding(3) var<storage, read> tokens: array<u32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

#include weights.wgsl

@compute @workgroup_size(WORKGROUP_SIZE)
fn embed(inv: Invocation, grp: Group) {
    let i = wg_index(grp) * WORKGROUP_SIZE + inv.lid;
    let spans = p.cols / 8u;
    if i >= p.n * spans {
        return;
    }
    let t = i / spans;
    let c0 = (i % spans) * 8u;
#if INDIRECT
    let tok = u32(ids[p.id_offset + t]);
#else
    let tok = tokens[t];
#endif
    if tok < p.row_start || tok >= p.row_start + p.rows {
        return;
    }
#if GRID
    load_grid();
#endif
    let w = weights8(tok - p.row_start, c0, p.cols);
    let o = (t * p.cols + c0) / 4u;
    out[o] = vec4<f32>(w[0]);
    out[o + 1u] = vec4<f32>(w[1]);
}
