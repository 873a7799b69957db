//! The one place that decides workgroup sizes and tile shapes, from the device limits and the
//! profile's sizes per kernel family.

use crate::weights::WeightKind;
use lowbit_core::profile::KernelWorkgroups;

/// Workgroup sizes and tiles of every kernel family.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// Lanes of a matvec workgroup (power of two).
    pub matvec_wg: u32,
    /// Output rows per matvec workgroup.
    pub matvec_rows: u32,
    /// Token rows per tiled-matmul workgroup (multiple of 16).
    pub tile_t: u32,
    /// Output rows per tiled-matmul workgroup (multiple of 16).
    pub tile_r: u32,
    /// Lanes of the elementwise, rope and embed kernels.
    pub elementwise_wg: u32,
    /// Lanes of a norm workgroup (one row each).
    pub norm_wg: u32,
    /// Lanes of the attention kernels.
    pub attn_wg: u32,
    /// Keys per decode split.
    pub split_len: u32,
    /// Use the wide matvec variant on long rows (see `WgpuOptions::wide_matvec`).
    pub wide_matvec: bool,
    /// Fuse an RMSNorm into the narrow matvec that follows it (see `WgpuOptions::fused_norm`).
    pub fused_norm: bool,
    /// Prefill on codes through the integer tiled kernel (see `WgpuOptions::int_prefill`).
    pub int_prefill: bool,
    /// Workgroup memory available, bytes.
    workgroup_bytes: u32,
    /// A forced matvec shape (`WgpuOptions::matvec_shape`): the wide kernel runs exactly
    /// `matvec_wg` lanes, and this many blocks per lane and step when given.
    forced: Option<Option<u32>>,
}

/// Most workgroups × columns a fused RMSNorm may add to a matvec (each workgroup sums the
/// squares of the whole row; see `Tuning::fuse_norm_into_narrow`).
const FUSED_NORM_MAX_WG_COLS: usize = 4 << 20;

/// `n` lanes kept within the device's invocation limit and rounded down to a power of two.
fn pow2_lanes(limits: &wgpu::Limits, n: u32) -> u32 {
    let n = n.clamp(1, limits.max_compute_invocations_per_workgroup.max(1));
    1u32 << (31 - n.leading_zeros())
}

impl Tuning {
    /// Sizes for a device with these limits and, when given, a profile's workgroup sizes, each
    /// rounded down to a power of two (the reductions are trees) and kept within the device's
    /// invocation limit; tiles stay multiples of 16 (the tiled matmul's 16 × 16 lanes).
    pub fn for_profile(limits: &wgpu::Limits, wg: Option<&KernelWorkgroups>) -> Self {
        let base = Self::new(limits);
        let Some(wg) = wg else {
            return base;
        };
        let lanes = |n: u32| pow2_lanes(limits, n);
        let tile = |n: u32| (n / 16).max(1) * 16;
        Tuning {
            matvec_wg: lanes(wg.matmul.0.saturating_mul(wg.matmul.1)),
            matvec_rows: wg.matvec_rows.clamp(1, 8),
            tile_t: tile(wg.tile.0),
            tile_r: tile(wg.tile.1),
            elementwise_wg: lanes(wg.elementwise),
            norm_wg: lanes(wg.norm),
            attn_wg: lanes(wg.attention),
            ..base
        }
    }

    /// Forces the decode matvec's shape: lanes (rounded down to a power of two within the
    /// device's limit; the wide kernel runs exactly these), rows per workgroup (1..=16) and,
    /// when given, the wide kernel's blocks per lane and step.
    pub fn set_matvec(&mut self, limits: &wgpu::Limits, shape: crate::device::MatvecShape) {
        self.matvec_wg = pow2_lanes(limits, shape.lanes);
        self.matvec_rows = shape.rows.clamp(1, 16);
        self.forced = Some(shape.unroll);
    }

    /// `(lanes, unroll)` of the wide matvec over rows of `cols` values: 4-bit lanes take two
    /// blocks at once and 2-bit lanes four (32 bytes of codes per row, as an 8-bit block),
    /// 3-bit lanes two (24 bytes), where the row has more blocks than lanes, and there are enough lanes that every block is read in that one
    /// step (the kernel then waits for memory once), never fewer than `matvec_wg` nor more
    /// than 256 (or the device's limit).
    pub fn wide_shape(&self, limits: &wgpu::Limits, cols: usize, kind: WeightKind) -> (u32, u32) {
        let blocks = (cols / 32) as u32;
        let per_lane = match kind {
            WeightKind::Quant { spec: s, .. } if matches!(s.bits, 3 | 4) => 2,
            WeightKind::Quant { spec: s, .. } if s.bits == 2 => 4,
            _ => 1,
        };
        if let Some(unroll) = self.forced {
            let lanes = self.matvec_wg;
            let unroll = unroll.unwrap_or(if blocks > lanes { per_lane } else { 1 });
            return (lanes, unroll);
        }
        let want = blocks.div_ceil(per_lane).next_power_of_two();
        let lanes = pow2_lanes(limits, want.clamp(self.matvec_wg, 256.max(self.matvec_wg)));
        (lanes, if blocks > lanes { per_lane } else { 1 })
    }

    /// `(lanes, rows)` of the narrow matvec (short rows, 2- and 3-bit codes, dense weights):
    /// at most 4 rows per workgroup, and at least 128 lanes unless the profile asks for fewer
    /// than 64 (small devices). On the H100, SmolLM2's decode (576-value rows, all narrow) ran
    /// 676-701 tok/s at 128 × 4 against 594-650 at 64 × 4 and 507-564 at 64 × 8.
    pub fn narrow_shape(&self, limits: &wgpu::Limits) -> (u32, u32) {
        let lanes = if self.matvec_wg >= 64 {
            self.matvec_wg.max(128)
        } else {
            self.matvec_wg
        };
        (pow2_lanes(limits, lanes), self.matvec_rows.min(4))
    }

    /// Lanes of the attention kernels: at least 256 unless the profile asks for fewer than 64
    /// (small devices), within the device's limit. Decode spreads each key's score over several
    /// lanes and the values over key slots; prefill spreads a tile's scores and outputs over
    /// them, and more lanes per workgroup keep more warps in flight (the prefill workgroup
    /// holds ~43 KB of tiles, so few fit a multiprocessor: 8B pp512 attention on the H100 took
    /// 2.1 ms per layer with 64 lanes).
    pub fn attn_wg_for(&self, limits: &wgpu::Limits) -> u32 {
        if self.attn_wg >= 64 {
            pow2_lanes(limits, self.attn_wg.max(256))
        } else {
            self.attn_wg
        }
    }

    /// Whether an RMSNorm before a narrow matvec (f32 activations, `narrow_shape` rows per
    /// workgroup) of `rows × cols` is fused into it. Fusing saves the norm's own dispatch, but
    /// every workgroup then also reads the norm weights and sums squares, a cost that grows
    /// with workgroups × columns: on the H100 SmolLM2's q|k|v and gate|up were fused, 8B 3-bit
    /// ones (narrow until 3-bit rows took the wide kernel) were not. (A wide matvec always takes the norm as 8-bit blocks: fused into the 8B
    /// and 1B int4 q|k|v it was slower once the norm kernel requested its loads together,
    /// 8B 349 against 351-355 tok/s, 1B 1,040 against 1,098-1,126.)
    pub fn fuse_norm_into_narrow(&self, limits: &wgpu::Limits, rows: usize, cols: usize) -> bool {
        rows.div_ceil(self.narrow_shape(limits).1 as usize) * cols <= FUSED_NORM_MAX_WG_COLS
    }

    /// Sizes for a device with these limits.
    pub fn new(limits: &wgpu::Limits) -> Self {
        Tuning {
            wide_matvec: false,
            fused_norm: true,
            int_prefill: false,
            matvec_wg: 64,
            matvec_rows: 4,
            // 4 × 8 outputs per lane of the 16 × 16 tiled-matmul lanes.
            tile_t: 64,
            tile_r: 128,
            elementwise_wg: 256,
            norm_wg: 256.min(limits.max_compute_invocations_per_workgroup),
            attn_wg: 64,
            split_len: 256,
            workgroup_bytes: limits.max_compute_workgroup_storage_size,
            forced: None,
        }
    }

    /// `(Q_ROWS, K_TILE)` of the prefill kernel for heads of `head_dim`: the largest tiles (query
    /// rows 16 or 8, keys a power of two up to 32) whose query, key, value and score tiles fit
    /// the workgroup memory.
    pub fn prefill_tiles(&self, head_dim: usize) -> (u32, u32) {
        let budget = self.workgroup_bytes as usize;
        let bytes = |qr: usize, kt: usize| {
            4 * (qr * head_dim + 2 * kt * head_dim + kt + qr * kt + 3 * qr + 64)
        };
        for qr in [16, 8, 4] {
            for kt in [32, 16, 8, 4] {
                if bytes(qr, kt) <= budget {
                    return (qr as u32, kt as u32);
                }
            }
        }
        (1, 1)
    }

    /// Columns per step of the tiled matmul: 32 where both f32 tiles of that depth fit the
    /// workgroup memory, else 16.
    pub fn tile_k(&self) -> u32 {
        let bytes = |k: u32| k * (self.tile_t + self.tile_r) * 4;
        if bytes(32) <= self.workgroup_bytes {
            32
        } else {
            16
        }
    }

    /// Splits of a decode attention over `len` keys.
    pub fn n_splits(&self, len: usize) -> u32 {
        len.div_ceil(self.split_len as usize).max(1) as u32
    }
}

/// `(x, y)` workgroup counts covering `n` workgroups with x at most `max` (the kernels fold them
/// back with `wg_index` and skip the excess).
pub(crate) fn fold(n: u32, max: u32) -> (u32, u32) {
    if n <= max {
        (n.max(1), 1)
    } else {
        (max, n.div_ceil(max))
    }
}
