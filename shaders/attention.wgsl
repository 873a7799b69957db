// Causal grouped-query attention over a KV cache of rows `n_kv_heads * HEAD_DIM`; query row `i`
// (token pos0 + i) sees cache rows 0 ..= pos0 + i, and query head h reads kv head h / group.
// MASKED (every other mask, or a causal one over kv_len other than pos0 + n_tokens): query row
// i sees the rows `key_range(i)` instead (keys below kv_limit, up to itself when `causal`, the
// last `window` of those); the causal decoder kernels compile without it, unchanged.
//
// Decode: `attn_split` computes, per (query row, head, split of SPLIT_LEN keys), the split's
// max score m, Σ exp(s - m) and the unnormalised Σ exp(s - m)·v; `attn_merge` rescales and
// combines the splits. Prefill: `attn_prefill`, flash-style: a workgroup of Q_ROWS query rows
// streams K_TILE keys at a time through workgroup memory with an online softmax, so only a
// Q_ROWS × K_TILE block of scores ever exists. PREFILL selects the variant.
#include common.wgsl

struct Params {
    n_tokens: u32,
    pos0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    scale: f32,
    n_splits: u32,
#if MASKED
    kv_limit: u32, // rows any query may see (kv_len, or the valid rows of a padded one)
    causal: u32,   // 1: query i sees rows up to pos0 + i only
    window: u32,   // a query sees at most this many of its last rows (sliding window)
#endif
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
// VEC4 (head dimensions that are multiples of 4, decode only): the caches read as vectors.
#if PREFILL
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
#else
#if VEC4
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
#endif
#endif
#if Q8_OUT
// Decode only, HEAD_DIM a multiple of 32: the output row as 8-bit activation blocks in the
// consuming matvec's code order ORDER (q8.wgsl), so the output projection reads them as they
// are. The finished head goes through `head_out` to eight lanes per block.
@group(0) @binding(4) var<storage, read_write> q8_out: array<vec4<u32>>;
#include q8_out.wgsl
var<workgroup> head_out: array<f32, HEAD_DIM>;

// Writes `head_out` (published by a barrier) as blocks of output head row `row`. Every lane
// calls it (quantize_word has barriers).
fn store_head_q8(row: u32, lid: u32) {
    for (var w0 = 0u; w0 < HEAD_DIM / 4u; w0 += WORKGROUP_SIZE) {
        let wi = w0 + lid;
        let valid = wi < HEAD_DIM / 4u;
        let b = wi / 8u;
        var v = vec4<f32>(0.0);
        if valid {
            let i = vec4<u32>(32u * b) + word_values(wi % 8u, ORDER);
            v = vec4<f32>(head_out[i.x], head_out[i.y], head_out[i.z], head_out[i.w]);
        }
        let word = quantize_word(v, lid);
        if valid {
            store_word(row * (HEAD_DIM / 32u) + b, wi % 8u, word);
        }
    }
}
#else
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif
// Split partials: per (row, head, split) HEAD_DIM values, then m and l.
@group(0) @binding(5) var<storage, read_write> part: array<f32>;

const PART: u32 = HEAD_DIM + 2u;

#if MASKED
// The key rows start .. end that query row `i` sees.
fn key_range(i: u32) -> vec2<u32> {
    var end = p.kv_limit;
    if p.causal != 0u {
        end = min(end, p.pos0 + i + 1u);
    }
    var start = 0u;
    if end > p.window {
        start = end - p.window;
    }
    return vec2<u32>(start, end);
}
#endif

fn kv_base(t: u32, h: u32) -> u32 {
    return t * p.n_kv_heads * HEAD_DIM + (h / (p.n_heads / p.n_kv_heads)) * HEAD_DIM;
}

// Each variant declares only its own workgroup memory: drivers may reserve every workgroup
// variable of a module, used or not.
#if !PREFILL
#if VEC4
const D4: u32 = HEAD_DIM / 4u;
// The value pass: lane (slot, j) sums value vector j of every SLOTS-th key, so all lanes work
// even when a head has fewer vectors than the workgroup has lanes.
const SLOTS: u32 = max(1u, WORKGROUP_SIZE / D4);
var<workgroup> q_s: array<vec4<f32>, D4>;
var<workgroup> o_part: array<vec4<f32>, SLOTS * D4>;
var<workgroup> k_part: array<f32, WORKGROUP_SIZE>;
// Vectors of one key a lane sums, and value vectors a lane requests before the scores exist.
const KV4: u32 = (D4 + KEY_LANES - 1u) / KEY_LANES;
const VB: u32 = 8u;

// This lane's vectors (kl, kl + KEY_LANES, ...) of key `t`, all requested at once (zeros past
// `end`).
fn load_key(t: u32, end: u32, h: u32, kl: u32) -> array<vec4<f32>, KV4> {
    var kv: array<vec4<f32>, KV4>;
    if t < end {
        let kb = kv_base(t, h) / 4u;
        for (var c = 0u; c < KV4; c++) {
            let j = kl + c * KEY_LANES;
            if j < D4 {
                kv[c] = k_cache[kb + j];
            }
        }
    }
    return kv;
}
#else
var<workgroup> q_s: array<f32, HEAD_DIM>;
#endif
var<workgroup> scores: array<f32, SPLIT_LEN>;

// Dispatch (n_splits, n_heads, n_tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn attn_split(inv: Invocation, grp: Group) {
    let s = grp.wid.x;
    let h = grp.wid.y;
    let i = grp.wid.z;
#if MASKED
    // This split's keys that the query sees (none: start ≥ end).
    let keys = key_range(i);
    let start = max(s * SPLIT_LEN, keys.x);
    let end = min(s * SPLIT_LEN + SPLIT_LEN, keys.y);
#else
    let len = p.pos0 + i + 1u;
    let start = s * SPLIT_LEN;
    let end = min(start + SPLIT_LEN, len);
#endif
    let qb = (i * p.n_heads + h) * HEAD_DIM;
#if VEC4
    // KEY_LANES lanes per key (a power of two, from the host), each summing every KEY_LANES-th
    // vector of it, so a key's loads are spread over lanes and in flight together. The first
    // pass's key vectors and this lane's first value vectors are requested before anything
    // waits, so the query, keys and values arrive in one memory round trip.
    let kl = inv.lid % KEY_LANES;
    let t_first = start + inv.lid / KEY_LANES;
    var kf = load_key(t_first, end, h, kl);
    // Value lane e = lid (lanes past SLOTS · D4 have no value work).
    var vf: array<vec4<f32>, VB>;
    for (var c = 0u; c < VB; c++) {
        let t = start + inv.lid / D4 + c * SLOTS;
        if inv.lid < SLOTS * D4 && t < end {
            vf[c] = v_cache[kv_base(t, h) / 4u + inv.lid % D4];
        }
    }
    for (var j = inv.lid; j < D4; j += WORKGROUP_SIZE) {
        let b = qb + 4u * j;
        q_s[j] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
    }
#else
    for (var d = inv.lid; d < HEAD_DIM; d += WORKGROUP_SIZE) {
        q_s[d] = q[qb + d];
    }
#endif
    workgroupBarrier();
    var m = NEG_BIG;
#if VEC4
    for (var t0 = start; t0 < end; t0 += WORKGROUP_SIZE / KEY_LANES) {
        let t = t0 + inv.lid / KEY_LANES;
        var kv = kf;
        if t0 != start {
            kv = load_key(t, end, h, kl);
        }
        var s4 = vec4<f32>(0.0);
        for (var c = 0u; c < KV4; c++) {
            let j = kl + c * KEY_LANES;
            if j < D4 {
                s4 += q_s[j] * kv[c];
            }
        }
        k_part[inv.lid] = (s4.x + s4.y) + (s4.z + s4.w);
        workgroupBarrier();
        if kl == 0u && t < end {
            var sc = 0.0;
            for (var c = 0u; c < KEY_LANES; c++) {
                sc += k_part[inv.lid + c];
            }
            sc *= p.scale;
            scores[t - start] = sc;
            m = max(m, sc);
        }
        workgroupBarrier();
    }
#else
    for (var t = start + inv.lid; t < end; t += WORKGROUP_SIZE) {
        let kb = kv_base(t, h);
        var sc = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            sc += q_s[d] * k_cache[kb + d];
        }
        sc *= p.scale;
        scores[t - start] = sc;
        m = max(m, sc);
    }
#endif
    m = workgroup_max(m, inv);
    var l = 0.0;
    for (var t = start + inv.lid; t < end; t += WORKGROUP_SIZE) {
        let e = exp(scores[t - start] - m);
        scores[t - start] = e;
        l += e;
    }
    // The reduction's barriers also publish `scores` to the whole workgroup.
    l = workgroup_sum(l, inv);
#if MASKED
    // A query that sees no key at all gets zeros (Σ = 0 would make 0 / 0).
    let l_div = select(l, 1.0, l == 0.0);
#else
    let l_div = l;
#endif
    let pb = ((i * p.n_heads + h) * p.n_splits + s) * PART;
#if VEC4
    for (var e = inv.lid; e < SLOTS * D4; e += WORKGROUP_SIZE) {
        let j = e % D4;
        var o = vec4<f32>(0.0);
        var t = start + e / D4;
        if e == inv.lid {
            // The values requested at the start.
            for (var c = 0u; c < VB; c++) {
                if t < end {
                    o += scores[t - start] * vf[c];
                }
                t += SLOTS;
            }
        }
        for (; t < end; t += SLOTS) {
            o += scores[t - start] * v_cache[kv_base(t, h) / 4u + j];
        }
        o_part[e] = o;
    }
    workgroupBarrier();
    for (var j = inv.lid; j < D4; j += WORKGROUP_SIZE) {
        var o = vec4<f32>(0.0);
        for (var k = 0u; k < SLOTS; k++) {
            o += o_part[k * D4 + j];
        }
        if p.n_splits == 1u {
            // One split holds every key: the result is final and attn_merge is not run.
            o /= l_div;
#if Q8_OUT
            head_out[4u * j] = o.x;
            head_out[4u * j + 1u] = o.y;
            head_out[4u * j + 2u] = o.z;
            head_out[4u * j + 3u] = o.w;
#else
            let ob = (i * p.n_heads + h) * HEAD_DIM + 4u * j;
            out[ob] = o.x;
            out[ob + 1u] = o.y;
            out[ob + 2u] = o.z;
            out[ob + 3u] = o.w;
#endif
        } else {
            part[pb + 4u * j] = o.x;
            part[pb + 4u * j + 1u] = o.y;
            part[pb + 4u * j + 2u] = o.z;
            part[pb + 4u * j + 3u] = o.w;
        }
    }
#else
    for (var d = inv.lid; d < HEAD_DIM; d += WORKGROUP_SIZE) {
        var o = 0.0;
        for (var t = start; t < end; t++) {
            o += scores[t - start] * v_cache[kv_base(t, h) + d];
        }
        if p.n_splits == 1u {
            // One split holds every key: the result is final and attn_merge is not run.
#if Q8_OUT
            head_out[d] = o / l_div;
#else
            out[(i * p.n_heads + h) * HEAD_DIM + d] = o / l_div;
#endif
        } else {
            part[pb + d] = o;
        }
    }
#endif
    if inv.lid == 0u {
        part[pb + HEAD_DIM] = m;
        part[pb + HEAD_DIM + 1u] = l;
    }
#if Q8_OUT
    if p.n_splits == 1u {
        workgroupBarrier();
        store_head_q8(i * p.n_heads + h, inv.lid);
    }
#endif
}

// Dispatch (n_heads, n_tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn attn_merge(inv: Invocation, grp: Group) {
    let h = grp.wid.x;
    let i = grp.wid.y;
    let row = i * p.n_heads + h;
    var mx = NEG_BIG;
    for (var s = 0u; s < p.n_splits; s++) {
        let pb = (row * p.n_splits + s) * PART;
        if part[pb + HEAD_DIM + 1u] > 0.0 {
            mx = max(mx, part[pb + HEAD_DIM]);
        }
    }
    var l = 0.0;
    for (var s = 0u; s < p.n_splits; s++) {
        let pb = (row * p.n_splits + s) * PART;
        let ls = part[pb + HEAD_DIM + 1u];
        if ls > 0.0 {
            l += ls * exp(part[pb + HEAD_DIM] - mx);
        }
    }
#if MASKED
    // No split saw a key: zeros.
    if l == 0.0 {
        l = 1.0;
    }
#endif
    for (var d = inv.lid; d < HEAD_DIM; d += WORKGROUP_SIZE) {
        var o = 0.0;
        for (var s = 0u; s < p.n_splits; s++) {
            let pb = (row * p.n_splits + s) * PART;
            if part[pb + HEAD_DIM + 1u] > 0.0 {
                o += part[pb + d] * exp(part[pb + HEAD_DIM] - mx);
            }
        }
#if Q8_OUT
        head_out[d] = o / l;
#else
        out[row * HEAD_DIM + d] = o / l;
#endif
    }
#if Q8_OUT
    workgroupBarrier();
    store_head_q8(row, inv.lid);
#endif
}

#else
// Prefill: Q_ROWS query rows per workgroup. Per key tile: scores of the Q_ROWS × K_TILE block
// into `s_tile`, a per-row online-softmax update, then the rescaled accumulation into the
// outputs, which each lane holds for a fixed set of (row, dim) pairs.
var<workgroup> q_tile: array<f32, Q_ROWS * HEAD_DIM>;
// Key j at j · (HEAD_DIM + 1): the score loop's lanes take consecutive keys, and the padding
// puts their reads of one dimension in different banks.
const K_STRIDE: u32 = HEAD_DIM + 1u;
var<workgroup> k_tile: array<f32, K_TILE * K_STRIDE>;
var<workgroup> v_tile: array<f32, K_TILE * HEAD_DIM>;
var<workgroup> s_tile: array<f32, Q_ROWS * K_TILE>;
var<workgroup> row_m: array<f32, Q_ROWS>;
var<workgroup> row_l: array<f32, Q_ROWS>;
var<workgroup> row_c: array<f32, Q_ROWS>;

const O_PER: u32 = (Q_ROWS * HEAD_DIM + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;

// Dispatch (ceil(n_tokens / Q_ROWS), n_heads).
@compute @workgroup_size(WORKGROUP_SIZE)
fn attn_prefill(inv: Invocation, grp: Group) {
    let h = grp.wid.y;
    let i0 = grp.wid.x * Q_ROWS;
    let rows = min(Q_ROWS, p.n_tokens - i0);
    // Keys any row of this workgroup can see.
#if MASKED
    let kv_end = key_range(i0 + rows - 1u).y;
    // Whole tiles before the first row's first key are skipped.
    let kv_begin = (min(key_range(i0).x, kv_end) / K_TILE) * K_TILE;
#else
    let kv_end = p.pos0 + i0 + rows;
    let kv_begin = 0u;
#endif
    for (var e = inv.lid; e < Q_ROWS * HEAD_DIM; e += WORKGROUP_SIZE) {
        let r = e / HEAD_DIM;
        var v = 0.0;
        if r < rows {
            v = q[((i0 + r) * p.n_heads + h) * HEAD_DIM + e % HEAD_DIM] * p.scale;
        }
        q_tile[e] = v;
    }
    if inv.lid < Q_ROWS {
        row_m[inv.lid] = NEG_BIG;
        row_l[inv.lid] = 0.0;
    }
    var o: array<f32, O_PER>;
    for (var t0 = kv_begin; t0 < kv_end; t0 += K_TILE) {
        for (var e = inv.lid; e < K_TILE * HEAD_DIM; e += WORKGROUP_SIZE) {
            let t = t0 + e / HEAD_DIM;
            var kv = vec2<f32>();
            if t < kv_end {
                let b = kv_base(t, h) + e % HEAD_DIM;
                kv = vec2<f32>(k_cache[b], v_cache[b]);
            }
            k_tile[(e / HEAD_DIM) * K_STRIDE + e % HEAD_DIM] = kv.x;
            v_tile[e] = kv.y;
        }
        workgroupBarrier();
        for (var e = inv.lid; e < Q_ROWS * K_TILE; e += WORKGROUP_SIZE) {
            let r = e / K_TILE;
            let j = e % K_TILE;
            var sc = NEG_BIG;
#if MASKED
            let keys = key_range(i0 + r);
            let seen = t0 + j >= keys.x && t0 + j < keys.y;
#else
            // Causal mask: row r (token pos0 + i0 + r) sees keys up to itself.
            let seen = t0 + j <= p.pos0 + i0 + r;
#endif
            if r < rows && seen {
                sc = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    sc += q_tile[r * HEAD_DIM + d] * k_tile[j * K_STRIDE + d];
                }
            }
            s_tile[e] = sc;
        }
        workgroupBarrier();
        if inv.lid < Q_ROWS {
            let r = inv.lid;
            var m = row_m[r];
            for (var j = 0u; j < K_TILE; j++) {
                m = max(m, s_tile[r * K_TILE + j]);
            }
            var l = 0.0;
            for (var j = 0u; j < K_TILE; j++) {
                let sc = s_tile[r * K_TILE + j];
                // Masked keys contribute nothing, even while every score so far is masked.
                var e = 0.0;
                if sc > NEG_BIG {
                    e = exp(sc - m);
                }
                s_tile[r * K_TILE + j] = e;
                l += e;
            }
            let c = exp(row_m[r] - m);
            row_c[r] = c;
            row_l[r] = row_l[r] * c + l;
            row_m[r] = m;
        }
        workgroupBarrier();
        for (var k = 0u; k < O_PER; k++) {
            let e = inv.lid + k * WORKGROUP_SIZE;
            if e < Q_ROWS * HEAD_DIM {
                let r = e / HEAD_DIM;
                let d = e % HEAD_DIM;
                var acc = o[k] * row_c[r];
                for (var j = 0u; j < K_TILE; j++) {
                    acc += s_tile[r * K_TILE + j] * v_tile[j * HEAD_DIM + d];
                }
                o[k] = acc;
            }
        }
        workgroupBarrier();
    }
    for (var k = 0u; k < O_PER; k++) {
        let e = inv.lid + k * WORKGROUP_SIZE;
        let r = e / HEAD_DIM;
        if e < Q_ROWS * HEAD_DIM && r < rows {
#if MASKED
            // A row that sees no key gets zeros.
            let l = select(row_l[r], 1.0, row_l[r] == 0.0);
#else
            let l = row_l[r];
#endif
            out[((i0 + r) * p.n_heads + h) * HEAD_DIM + e % HEAD_DIM] = o[k] / l;
        }
    }
}
#endif
