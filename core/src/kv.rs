//! The KV cache: per layer, a key store and a value store on the backend with a stated layout
//! and precision ([`KvLayout`]), read by [`crate::ops::Op::Attention`] through a [`KvView`].
//!
//! The cache is owned by core, not by a model: a model asks for one with its shape
//! ([`KvCache::new`]) and records [`crate::ops::Op::KvWrite`] and attention over
//! [`KvCache::layer`]. Cross-attention over encoder states is a [`KvView`] too
//! ([`KvView::over`]).

use crate::backend::{Backend, BufferId, DType};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Shape and precision of one layer's keys (and, the same, its values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvLayout {
    /// Key/value heads per row.
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Rows (tokens) the store holds.
    pub rows: usize,
    /// Element type of the stored rows.
    pub dtype: DType,
    /// Each head's keys and values are stored rotated by the orthonormal Hadamard transform
    /// `H / √head_dim` (head_dim a power of two): it spreads outlier channels over the head, so
    /// a quantized store loses far less. Attention rotates the queries alike (`q·k` is
    /// unchanged) and its output back, so readers of the op see no difference.
    pub rotated: bool,
}

impl KvLayout {
    /// Values per row (`n_kv_heads × head_dim`).
    pub fn row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes one store (keys, or values) of this layout takes.
    pub fn store_bytes(&self) -> usize {
        self.dtype.bytes_for(self.rows * self.row_len())
    }
}

/// Full-precision copies of some rows of a quantized store: the first `sinks` rows (attention
/// sinks) and a ring of the most recent rows. Attention reads key row `t` for a query at
/// position `p` from here when `t < sinks` or `p − t < window` (the KIVI residual window, as
/// seen by every query, prefill included), from the quantized store otherwise.
///
/// Row `t < sinks` is side row `t`; every row `t` is also ring row `sinks + t mod 2·window`, so
/// a write of at most `window` rows keeps every row a query of that write needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvSide {
    /// Key rows (f32, `rows()` of them, stored in the layout's basis).
    pub k: BufferId,
    /// Value rows.
    pub v: BufferId,
    /// Leading rows kept.
    pub sinks: usize,
    /// Recent rows each query sees at full precision.
    pub window: usize,
    /// Keys are quantized per channel (KIVI): block `b` of the key store holds channel
    /// `b mod row_len` of the `group` tokens `(b / row_len) · group ..`, written when the last
    /// of them is (they are in the ring until then; `window ≥ group`). Values stay per token.
    pub key_channels: bool,
}

impl KvSide {
    /// Rows the side buffers hold.
    pub fn rows(&self) -> usize {
        self.sinks + 2 * self.window
    }

    /// The side row holding cache row `t` for a query at position `query`, if it is read at
    /// full precision.
    #[inline]
    pub fn row_for(&self, t: usize, query: usize) -> Option<usize> {
        if t < self.sinks {
            Some(t)
        } else if self.window > 0 && t <= query && query - t < self.window {
            Some(self.sinks + t % (2 * self.window))
        } else {
            None
        }
    }
}

/// A store kept as a ring (a sliding window with attention sinks, StreamingLLM): the first
/// `sinks` tokens keep their rows, token `t ≥ sinks` lives in row
/// `sinks + (t − sinks) mod period`, and a query at position `p` attends to the sinks and the
/// last `window` tokens `p + 1 − window ..= p` only, so a sequence runs past the store's rows
/// in constant memory. Positions (RoPE) stay the tokens' own.
///
/// `period ≥ window + max_write − 1`, so no write overwrites a row a query of the same write
/// still needs; one forward writes at most [`KvRing::max_write`] rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvRing {
    /// Leading tokens kept (attention sinks).
    pub sinks: usize,
    /// Recent tokens each query sees.
    pub window: usize,
    /// Rows the recent part cycles through.
    pub period: usize,
}

impl KvRing {
    /// A ring of `sinks` kept tokens and a `window`-token window, writing at most `max_write`
    /// rows a forward; sinks and period rounded up to multiples of `align` (a quantized store's
    /// group of tokens, 1 for none).
    pub fn new(sinks: usize, window: usize, max_write: usize, align: usize) -> Self {
        let align = align.max(1);
        KvRing {
            sinks: sinks.next_multiple_of(align),
            window: window.max(1),
            period: (window.max(1) + max_write.max(1)).next_multiple_of(align),
        }
    }

    /// Rows the store holds.
    pub fn rows(&self) -> usize {
        self.sinks + self.period
    }

    /// The row holding token `t`.
    #[inline]
    pub fn row(&self, t: usize) -> usize {
        if t < self.sinks {
            t
        } else {
            self.sinks + (t - self.sinks) % self.period
        }
    }

    /// The most rows one forward may write.
    pub fn max_write(&self) -> usize {
        self.period + 1 - self.window
    }

    /// The tokens a query sees within the mask's range `start .. end` (`end` = its position
    /// + 1): the sinks, then the window, as two ranges (either may be empty).
    #[inline]
    pub fn ranges(&self, start: usize, end: usize) -> [(usize, usize); 2] {
        let sinks_end = self.sinks.min(end);
        let recent = start.max(self.sinks).max(end.saturating_sub(self.window));
        [(start.min(sinks_end), sinks_end), (recent.min(end), end)]
    }
}

/// Keys and values an attention op reads: row `r` of `k` (and `v`) holds
/// [`KvLayout::row_len`] values, heads one after another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvView {
    /// Key rows.
    pub k: BufferId,
    /// Value rows.
    pub v: BufferId,
    /// Their layout.
    pub layout: KvLayout,
    /// Full-precision sinks and recent rows of a quantized store.
    pub side: Option<KvSide>,
    /// The store is a ring (a sliding window): row of token `t` is [`KvRing::row`], and
    /// queries see only [`KvRing::ranges`]; `None`: token `t` is row `t`.
    pub ring: Option<KvRing>,
}

impl KvView {
    /// The row holding token `t`.
    #[inline]
    pub fn row(&self, t: usize) -> usize {
        self.ring.map_or(t, |r| r.row(t))
    }

    /// The key ranges a query sees within the mask's `start .. end`.
    #[inline]
    pub fn ranges(&self, start: usize, end: usize) -> [(usize, usize); 2] {
        self.ring
            .map_or([(start, end), (end, end)], |r| r.ranges(start, end))
    }
}

/// How a cache keeps keys and values: the stored type and, for a quantized one, the rows kept
/// at full precision besides ([`KvSide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvFormat {
    /// Stored type of the rows (`DType::F32`, or `DType::QBlock`).
    pub dtype: DType,
    /// Leading tokens kept at full precision (quantized stores only).
    pub sinks: usize,
    /// Recent tokens each query sees at full precision (quantized stores only).
    pub window: usize,
    /// Keys quantized per channel in groups of tokens ([`KvSide::key_channels`]).
    pub key_channels: bool,
    /// Heads stored rotated ([`KvLayout::rotated`]; quantized stores only).
    pub rotate: bool,
    /// Sliding window: each query sees the first `ring_sinks` tokens and the last `sliding`
    /// ones, kept in a ring ([`KvRing`]) so the sequence runs past the cache's capacity in
    /// constant memory; 0 = off.
    pub sliding: usize,
    /// Attention sinks a sliding window keeps.
    pub ring_sinks: usize,
}

impl KvFormat {
    /// A short name: `f32`, or e.g. `kv2-g32-w128-s4-kc` (bits, group, recent window, sinks,
    /// keys per channel; `-norot` for an unrotated store), `-sw1024` with a sliding window.
    pub fn label(&self) -> String {
        let mut s = match self.dtype {
            DType::QBlock { bits, group } => {
                let mut s = format!("kv{bits}-g{group}");
                if self.window > 0 {
                    s.push_str(&format!("-w{}", self.window));
                }
                if self.sinks > 0 {
                    s.push_str(&format!("-s{}", self.sinks));
                }
                s.push_str(match (self.key_channels, self.rotate) {
                    (true, true) => "-kc",
                    (true, false) => "-kc-norot",
                    (false, true) => "",
                    (false, false) => "-norot",
                });
                s
            }
            d => d.name().to_string(),
        };
        if self.sliding > 0 {
            s.push_str(&format!("-sw{}", self.sliding));
            if self.ring_sinks > 0 {
                s.push_str(&format!("+{}", self.ring_sinks));
            }
        }
        s
    }

    /// f32 keys and values.
    pub const F32: KvFormat = KvFormat {
        dtype: DType::F32,
        sinks: 0,
        window: 0,
        key_channels: false,
        rotate: false,
        sliding: 0,
        ring_sinks: 0,
    };
}

impl KvView {
    /// A view of `rows` f32 rows of `n_kv_heads × head_dim` in `k` and `v` (encoder states
    /// projected to keys and values, for cross-attention).
    pub fn over(k: BufferId, v: BufferId, n_kv_heads: usize, head_dim: usize, rows: usize) -> Self {
        KvView {
            k,
            v,
            layout: KvLayout {
                n_kv_heads,
                head_dim,
                rows,
                dtype: DType::F32,
                rotated: false,
            },
            side: None,
            ring: None,
        }
    }
}

/// The attention cache of one sequence (a [`KvView`] per layer) plus the model's scratch
/// buffers, owned by the backend that made them and freed on drop.
pub struct KvCache {
    /// Tokens already in the cache (position of the next token).
    pub pos: usize,
    /// Capacity in tokens.
    pub max_seq: usize,
    layers: Vec<KvView>,
    /// Scratch activation buffers (layout chosen by the model), reused between calls.
    pub scratch: Vec<BufferId>,
    /// Token rows the scratch buffers were sized for (0 = none yet).
    pub scratch_rows: usize,
    backend: Arc<dyn Backend>,
}

impl KvCache {
    /// Allocates `n_layers` key and value stores of `layout` on `backend` (capacity
    /// `layout.rows` tokens); they are freed when the cache drops.
    ///
    /// Errors with the backend's allocation error (`OUT_OF_MEMORY` where a device refuses).
    pub fn new(backend: Arc<dyn Backend>, n_layers: usize, layout: KvLayout) -> Result<Self> {
        Self::with_side(backend, n_layers, layout, 0, 0, false, None)
    }

    /// [`Self::new`], plus per layer f32 side stores of the first `sinks` rows and a ring of
    /// the last `window` rows ([`KvSide`]; none when both are 0). With a window, one forward
    /// writes at most `window` rows ([`Self::max_write`]). With a `ring` the stores are a
    /// sliding window ([`KvRing`]; `layout.rows` must be its rows) and the cache takes any
    /// number of tokens.
    pub fn with_side(
        backend: Arc<dyn Backend>,
        n_layers: usize,
        layout: KvLayout,
        sinks: usize,
        window: usize,
        key_channels: bool,
        ring: Option<KvRing>,
    ) -> Result<Self> {
        let group = layout.dtype.block();
        if key_channels && (window < group || group == 1) {
            return Err(Error::invalid_config(format!(
                "keys quantized per channel need a quantized store and a recent window of at \
                 least its group ({group} tokens); the window is {window}"
            )));
        }
        if let Some(r) = ring {
            if r.rows() != layout.rows
                || (key_channels && (r.sinks % group + r.period % group) != 0)
            {
                return Err(Error::invalid_config(format!(
                    "a sliding-window ring of {} rows (sinks {}, period {}) does not fit a store of \
                     {} rows in groups of {group} tokens",
                    r.rows(),
                    r.sinks,
                    r.period,
                    layout.rows
                )));
            }
        }
        let mut cache = KvCache {
            pos: 0,
            // A ring takes any number of tokens (positions are bounded only by usize).
            max_seq: if ring.is_some() {
                usize::MAX / 2
            } else {
                layout.rows
            },
            layers: Vec::with_capacity(n_layers),
            scratch: Vec::new(),
            scratch_rows: 0,
            backend,
        };
        let len = layout.rows * layout.row_len();
        // Per-channel key blocks cover whole groups of tokens.
        let k_len = if key_channels {
            layout.rows.next_multiple_of(group) * layout.row_len()
        } else {
            len
        };
        for _ in 0..n_layers {
            // Pushed one by one so a failure frees what was made (drop).
            let k = cache.backend.alloc(layout.dtype, k_len)?;
            let v = match cache.backend.alloc(layout.dtype, len) {
                Ok(v) => v,
                Err(e) => {
                    cache.backend.free(k);
                    return Err(e);
                }
            };
            cache.layers.push(KvView {
                k,
                v,
                layout,
                side: None,
                ring,
            });
            if sinks + window > 0 {
                let rows = sinks + 2 * window;
                let side_len = rows * layout.row_len();
                let sk = cache.backend.alloc(DType::F32, side_len)?;
                let sv = match cache.backend.alloc(DType::F32, side_len) {
                    Ok(v) => v,
                    Err(e) => {
                        cache.backend.free(sk);
                        return Err(e);
                    }
                };
                if let Some(l) = cache.layers.last_mut() {
                    l.side = Some(KvSide {
                        k: sk,
                        v: sv,
                        sinks,
                        window,
                        key_channels,
                    });
                }
            }
        }
        Ok(cache)
    }

    /// The most rows one forward may write (`None`: no limit): a recent window of `W` rows
    /// takes at most `W` at a time, so a model splits longer prompts.
    pub fn max_write(&self) -> Option<usize> {
        let l = self.layers.first()?;
        let side = l.side.filter(|s| s.window > 0).map(|s| s.window);
        let ring = l.ring.map(|r| r.max_write());
        match (side, ring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The sliding-window ring of the stores, if they are one.
    pub fn ring(&self) -> Option<KvRing> {
        self.layers.first().and_then(|l| l.ring)
    }

    /// The view of layer `l`.
    ///
    /// Errors with `INVALID_CONFIG` when the cache has no such layer.
    pub fn layer(&self, l: usize) -> Result<KvView> {
        self.layers.get(l).copied().ok_or_else(|| {
            Error::invalid_config(format!(
                "the KV cache has {} layers; layer {l} was asked",
                self.layers.len()
            ))
        })
    }

    /// Layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes held by keys and values (full-precision side rows included).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let side = l.side.map_or(0, |s| 4 * s.rows() * l.layout.row_len());
                2 * (l.layout.store_bytes() + side)
            })
            .sum()
    }

    /// Replaces the scratch buffers (the old ones are freed).
    pub fn set_scratch(&mut self, scratch: Vec<BufferId>, rows: usize) {
        for b in self.scratch.drain(..) {
            self.backend.free(b);
        }
        self.scratch = scratch;
        self.scratch_rows = rows;
    }

    /// Forgets all tokens (buffers are reused).
    pub fn clear(&mut self) {
        self.pos = 0;
    }

    /// Checks that `n` more tokens fit.
    ///
    /// Errors with `CONTEXT_OVERFLOW` when they do not.
    pub fn ensure_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.max_seq {
            return Err(Error::context_overflow(format!(
                "{} tokens in the cache + {n} new > capacity {}",
                self.pos, self.max_seq
            )));
        }
        Ok(())
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        for l in &self.layers {
            self.backend.free(l.k);
            self.backend.free(l.v);
            if let Some(s) = l.side {
                self.backend.free(s.k);
                self.backend.free(s.v);
            }
        }
        for b in &self.scratch {
            self.backend.free(*b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KvRing;

    /// Within one write of at most `max_write` rows, no token's row is shared with another
    /// token that some query of the write still sees.
    #[test]
    fn ring_rows_never_collide_within_what_queries_see() {
        for (sinks, window, max_write, align) in [(0, 5, 3, 1), (4, 128, 512, 32), (3, 7, 1, 4)] {
            let r = KvRing::new(sinks, window, max_write, align);
            assert_eq!(r.sinks % align, 0);
            assert!(r.max_write() >= max_write);
            for p0 in 0..3 * r.rows() {
                let end = p0 + r.max_write();
                // Tokens alive after the write: those some query p0..end sees.
                let mut owner = vec![usize::MAX; r.rows()];
                for q in p0..end {
                    for (a, b) in r.ranges(0, q + 1) {
                        for t in a..b {
                            let row = r.row(t);
                            assert!(row < r.rows());
                            assert!(
                                owner[row] == usize::MAX || owner[row] == t,
                                "{r:?}: row {row} holds {} and {t}",
                                owner[row]
                            );
                            owner[row] = t;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ring_ranges_are_the_sinks_and_the_window() {
        let r = KvRing::new(2, 4, 1, 1);
        assert_eq!(r.ranges(0, 3), [(0, 2), (2, 3)]);
        assert_eq!(r.ranges(0, 10), [(0, 2), (6, 10)]);
        assert_eq!(r.ranges(0, 1), [(0, 1), (1, 1)]);
    }
}
