//! Scaled dot-product attention over a KV view, grouped-query, with every [`Mask`].

use crate::buffers::View;
use crate::kernels::{self, Isa};
use crate::pool::{SharedMut, SpinPool};
use lowbit_core::kv::{KvSide, KvView};
use lowbit_core::ops::AttentionShape;

/// The geometry of one attention call: `shape` plus the view's head layout.
pub(crate) struct Geometry {
    pub shape: AttentionShape,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Keys and values are stored rotated ([`lowbit_core::kv::KvLayout::rotated`]).
    pub rotated: bool,
}

/// The stored rows attention reads: keys, values, and the full-precision side rows of a
/// quantized cache with the side's geometry.
pub(crate) struct KvRows<'a> {
    pub k: View<'a>,
    pub v: View<'a>,
    pub side: Option<(KvSide, &'a [f32], &'a [f32])>,
    /// The view: its ring (a sliding window) maps tokens to rows and narrows what a query sees.
    pub view: KvView,
    /// Keys quantized per channel in groups of this many tokens (0: per token).
    pub key_group: usize,
}

/// `x ← H x / √n`: the orthonormal (and self-inverse) Hadamard transform of one head.
pub(crate) fn rotate(x: &mut [f32]) {
    lowbit_core::quant::fwht(x);
    let s = 1.0 / (x.len() as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}

/// Writes `softmax(q·Kᵀ·scale)·V` per (query row, head) to `out`, over the key rows the mask
/// gives query `i` ([`lowbit_core::ops::Mask::keys`]). Query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)`. Every (row, head) pair is one task, so decode (one row) still
/// spreads heads across threads. A query that sees no key gets zeros.
pub(crate) fn attention(
    pool: &SpinPool,
    isa: Isa,
    q: &[f32],
    kv: &KvRows<'_>,
    out: &mut [f32],
    g: &Geometry,
) {
    let (k, v, side) = (&kv.k, &kv.v, kv.side);
    let p = &g.shape;
    let hd = g.head_dim;
    let kv_row = g.n_kv_heads * hd;
    let group = p.n_heads / g.n_kv_heads;
    let pairs = p.n_tokens * p.n_heads;
    let shared = SharedMut::new(&mut out[..pairs * hd]);
    // A few (row, head) pairs per task, each task with its own score buffer.
    let per_task = pairs.div_ceil(pool.threads() * 4).max(1);
    pool.run(pairs.div_ceil(per_task), &|t| {
        let mut scores: Vec<f32> = Vec::with_capacity(p.kv_len);
        // A quantized store's head slice is decoded here, one row at a time.
        let mut row = vec![0f32; hd];
        let mut qrot = vec![0f32; if g.rotated { hd } else { 0 }];
        for idx in t * per_task..((t + 1) * per_task).min(pairs) {
            // SAFETY: pair `idx` owns `out[idx * hd ..][..hd]`; `out` outlives `run`.
            let o = unsafe { shared.slice(idx * hd, hd) };
            let (i, h) = (idx / p.n_heads, idx % p.n_heads);
            let kv_off = (h / group) * hd;
            let mut qv = &q[idx * hd..(idx + 1) * hd];
            if g.rotated {
                // (H q)·(H k) = q·k: the query meets the keys in their rotated basis.
                qrot.copy_from_slice(qv);
                rotate(&mut qrot);
                qv = &qrot;
            }
            let (start, end) = p.mask.keys(p.pos0, i, p.kv_len);
            o.fill(0.0);
            // Without a ring one range; with one, the sinks and the recent window.
            let [a, b] = kv.view.ranges(start, end);
            let keys = || (a.0..a.1).chain(b.0..b.1);
            if a.0 >= a.1 && b.0 >= b.1 {
                continue;
            }
            scores.clear();
            scores.extend(keys().map(|t| {
                let r = kv.view.row(t);
                let kt = match side.and_then(|(s, sk, _)| s.row_for(t, p.pos0 + i).map(|r| (r, sk)))
                {
                    Some((sr, sk)) => &sk[sr * kv_row + kv_off..sr * kv_row + kv_off + hd],
                    None => match (k, kv.key_group) {
                        (View::Q(store), g) if g > 0 => {
                            // Channel c of stored row r: block (r / g) · kv_row + c, slot r mod g.
                            store.read_strided(
                                ((r / g) * kv_row + kv_off) * g + r % g,
                                g,
                                &mut row,
                            );
                            &row
                        }
                        _ => k.get(r * kv_row + kv_off, &mut row),
                    },
                };
                kernels::dot(isa, qv, kt) * p.scale
            }));
            // Subtracting the max keeps exp() finite for any score range.
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for (t, s) in keys().zip(&scores) {
                let vt =
                    match side.and_then(|(sd, _, sv)| sd.row_for(t, p.pos0 + i).map(|r| (r, sv))) {
                        Some((r, sv)) => &sv[r * kv_row + kv_off..r * kv_row + kv_off + hd],
                        None => v.get(kv.view.row(t) * kv_row + kv_off, &mut row),
                    };
                kernels::axpy(isa, s * inv, vt, o);
            }
            if g.rotated {
                // Σ p·(H v) = H (Σ p·v): rotated back.
                rotate(o);
            }
        }
    });
}
