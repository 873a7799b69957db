//! Weight matrices on the device: uploaded once in their packed form, split by row ranges
//! ("pieces") when one binding could not hold the whole matrix.

use crate::device::GpuDevice;
use bytemuck::cast_slice;
use lowbit_core::quant::{QuantSpec, Rotation, Scheme};
use lowbit_core::{Error, Result, WeightMatrix};
use wgpu::util::DeviceExt;

/// Storage format of a weight matrix, as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightKind {
    /// Packed codes with f16 group parameters; `grid`: the codes index a learned table of
    /// int8 levels ([`lowbit_core::quant::Grid`]), held at the start of each piece's params
    /// (see [`pack_params`]).
    Quant { spec: QuantSpec, grid: bool },
    /// Dense f32.
    F32,
    /// Dense f16, two per word.
    F16,
}

/// Rows `row_start .. row_start + rows` of a matrix, in their own buffers.
pub(crate) struct Piece {
    pub row_start: usize,
    pub rows: usize,
    /// Codes / values of the rows, plus one padding word (the kernels read a span's next word).
    pub data: wgpu::Buffer,
    /// Group parameters of the rows (quantized matrices only).
    pub params: Option<wgpu::Buffer>,
}

/// The rotation of a matrix quantized in a rotated basis, as the rotation kernel
/// (`rotate.wgsl`) reads it.
pub(crate) struct GpuRotation {
    /// The rotation (block size and seed).
    pub rot: Rotation,
    /// The sign bits of the matrix's columns ([`Rotation::sign_words`]).
    pub signs: wgpu::Buffer,
}

/// An uploaded weight matrix.
pub(crate) struct GpuWeight {
    pub rows: usize,
    pub cols: usize,
    /// Columns as stored: `cols` rounded up to a multiple of 32 with zero columns (dense
    /// matrices only; a quantized one's groups make `cols` a multiple of 32 already), which the
    /// matmul kernels reduce over.
    pub stored_cols: usize,
    pub kind: WeightKind,
    pub pieces: Vec<Piece>,
    /// The rotation of the input dimension the codes were made in, if any: a linear rotates
    /// its input rows and an embedding lookup rotates its rows back (`ops/rotate.rs`).
    pub rotation: Option<GpuRotation>,
    /// Device bytes held.
    pub bytes: usize,
}

/// Words of a learned code table at the start of a piece's params (`GRID_WORDS` in
/// weights.wgsl): up to 16 int8 levels, four per word (level `q` at byte `q % 4` of word
/// `q / 4`), zero past the grid's `2^bits`.
pub(crate) const GRID_WORDS: usize = 4;

/// The [`GRID_WORDS`] words of `levels`.
fn grid_words(levels: &[i8]) -> [u32; GRID_WORDS] {
    let mut bytes = [0u8; 4 * GRID_WORDS];
    for (b, &l) in bytes.iter_mut().zip(levels) {
        *b = l as u8;
    }
    std::array::from_fn(|i| u32::from_le_bytes([0, 1, 2, 3].map(|k| bytes[4 * i + k])))
}

/// Group parameters of `rows` rows starting at `r0`, one u32 per group (asymmetric:
/// scale | offset << 16) or one per two groups (symmetric: two scales), flat over the rows;
/// after the grid's [`GRID_WORDS`] when the matrix has one.
fn pack_params(q: &lowbit_core::QuantizedMatrix, r0: usize, rows: usize) -> Vec<u32> {
    let g = q.groups_per_row();
    let span = r0 * g..(r0 + rows) * g;
    let bits = |v: half::f16| u32::from(v.to_bits());
    let table = q.grid.as_ref().map(|grid| grid_words(grid.levels()));
    let table = table.iter().flatten().copied();
    match q.spec.scheme {
        Scheme::Asymmetric => table
            .chain(
                q.scales[span.clone()]
                    .iter()
                    .zip(&q.offsets[span])
                    .map(|(s, o)| bits(*s) | (bits(*o) << 16)),
            )
            .collect(),
        Scheme::Symmetric => table
            .chain(
                q.scales[span]
                    .chunks(2)
                    .map(|c| bits(c[0]) | c.get(1).map_or(0, |s| bits(*s) << 16)),
            )
            .collect(),
    }
}

/// Bit of the high plane of a 3-bit block that holds value `v`'s high bit (see [`repack3`]).
fn hi3_bit(v: usize) -> usize {
    8 * ((v % 16) / 4) + 4 * (v / 16) + v % 4
}

/// One row of 3-bit codes (a bit stream, LSB first, 3 words per 32-value block) rearranged for
/// the kernels: the row's `nb` blocks of low bit pairs first (two words per block, value `i`'s
/// pair at bits 2i of word i / 16, as 2-bit codes are packed), then one word per block of high
/// bits, value `v`'s at bit [`hi3_bit`]. Masking bit pair k of a low word leaves values
/// k, k+4, k+8, k+12 of its 16 in four bytes, and masking bit m = 4j + k of the high word
/// leaves the high bits of values 16j + k, +4, +8, +12 in the same bytes, so a word of 8-bit
/// codes of four values is `((lo >> 2k) & 0x03030303) | (((hi >> m) & 0x01010101) << 2)`.
fn repack3(row: &[u32], nb: usize) -> Vec<u32> {
    let mut out = vec![0u32; 3 * nb];
    for b in 0..nb {
        let (mut lo, mut hi) = ([0u32; 2], 0u32);
        for v in 0..32 {
            let bit = 96 * b + 3 * v;
            let (w, s) = (bit / 32, bit % 32);
            let mut code = row[w] >> s;
            if s > 29 {
                code |= row[w + 1] << (32 - s);
            }
            lo[v / 16] |= (code & 3) << (2 * (v % 16));
            hi |= ((code >> 2) & 1) << hi3_bit(v);
        }
        out[2 * b..2 * b + 2].copy_from_slice(&lo);
        out[2 * nb + b] = hi;
    }
    out
}

fn storage(dev: &GpuDevice, label: &str, mut words: Vec<u32>) -> wgpu::Buffer {
    // Pad word, and at least 16 bytes so any binding is non-empty.
    words.push(0);
    while words.len() < 4 {
        words.push(0);
    }
    dev.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: cast_slice(&words),
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// Uploads `w`, splitting it into pieces of at most `max_binding` bytes each.
pub(crate) fn upload(dev: &GpuDevice, w: WeightMatrix, max_binding: u64) -> Result<GpuWeight> {
    let (rows, cols) = w.shape();
    let quantized = matches!(w, WeightMatrix::Quantized(_));
    if cols == 0 || rows == 0 || (quantized && cols % 32 != 0) {
        return Err(Error::unsupported(format!(
            "the WebGPU backend needs weight matrices with rows and columns (a multiple of 32 when quantized), got {rows}×{cols}"
        )));
    }
    if let WeightMatrix::Quantized(q) = &w {
        if let Some(g) = &q.grid {
            // `Grid` holds 4, 8 or 16 levels; its codes must be the matrix's.
            if g.bits() != q.spec.bits || g.levels().len() > 4 * GRID_WORDS {
                return Err(Error::invalid_config(format!(
                    "a {}-bit grid on a matrix of {}-bit codes",
                    g.bits(),
                    q.spec.bits
                )));
            }
        }
    }
    // Dense rows are padded with zero columns to whole 32-value blocks.
    let stored = cols.next_multiple_of(32);
    let (kind, row_words) = match &w {
        WeightMatrix::Quantized(q) => (
            WeightKind::Quant {
                spec: q.spec,
                grid: q.grid.is_some(),
            },
            q.row_words(),
        ),
        WeightMatrix::F32 { .. } => (WeightKind::F32, stored),
        WeightMatrix::F16 { .. } => (WeightKind::F16, stored / 2),
    };
    let row_bytes = row_words as u64 * 4;
    let usable = max_binding.saturating_sub(16);
    if row_bytes > usable {
        return Err(Error::out_of_memory(format!(
            "one weight row needs {row_bytes} bytes but a storage binding holds at most {max_binding}"
        )));
    }
    let per_piece = ((usable / row_bytes) as usize).min(rows);
    let mut pieces = Vec::new();
    let mut bytes = 0;
    for r0 in (0..rows).step_by(per_piece) {
        let n = per_piece.min(rows - r0);
        let words: Vec<u32> = match &w {
            WeightMatrix::Quantized(q) if q.spec.bits == 3 => q.data
                [r0 * row_words..(r0 + n) * row_words]
                .chunks(row_words)
                .flat_map(|row| repack3(row, cols / 32))
                .collect(),
            WeightMatrix::Quantized(q) => q.data[r0 * row_words..(r0 + n) * row_words].to_vec(),
            WeightMatrix::F32 { data, .. } => data[r0 * cols..(r0 + n) * cols]
                .chunks(cols)
                .flat_map(|row| {
                    let pad = std::iter::repeat_n(0, stored - cols);
                    row.iter().map(|v| v.to_bits()).chain(pad)
                })
                .collect(),
            WeightMatrix::F16 { data, .. } => {
                let zero = half::f16::ZERO;
                let padded: Vec<half::f16> = data[r0 * cols..(r0 + n) * cols]
                    .chunks(cols)
                    .flat_map(|row| {
                        row.iter()
                            .copied()
                            .chain(std::iter::repeat_n(zero, stored - cols))
                    })
                    .collect();
                cast_slice(&padded).to_vec()
            }
        };
        let params = match &w {
            WeightMatrix::Quantized(q) => Some(pack_params(q, r0, n)),
            _ => None,
        };
        let size = (words.len() as u64 + 1) * 4;
        dev.check_buffer_size(size, "a weight piece")?;
        bytes += words.len() * 4 + params.as_ref().map_or(0, |p| p.len() * 4);
        let piece = dev.scoped("uploading weights", || Piece {
            row_start: r0,
            rows: n,
            data: storage(dev, "weight data", words),
            params: params.map(|p| storage(dev, "weight params", p)),
        })?;
        pieces.push(piece);
    }
    let rotation = match &w {
        WeightMatrix::Quantized(q) => q.rotation,
        _ => None,
    };
    let rotation = match rotation {
        Some(rot) => {
            let words = rot.sign_words(cols);
            bytes += words.len() * 4;
            let signs = dev.scoped("uploading rotation signs", || {
                storage(dev, "rotation signs", words)
            })?;
            Some(GpuRotation { rot, signs })
        }
        None => None,
    };
    Ok(GpuWeight {
        rows,
        cols,
        stored_cols: stored,
        kind,
        pieces,
        rotation,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use lowbit_core::QuantizedMatrix;

    #[test]
    fn three_bit_rows_split_into_pair_and_high_planes() {
        // Two blocks of codes 0..8 repeating: value v of block b holds (v + b) % 8.
        let nb = 2;
        let mut row = vec![0u32; 3 * nb];
        let code = |b: usize, v: usize| ((v + b) % 8) as u32;
        for b in 0..nb {
            for v in 0..32 {
                let bit = 96 * b + 3 * v;
                row[bit / 32] |= code(b, v) << (bit % 32);
                if bit % 32 > 29 {
                    row[bit / 32 + 1] |= code(b, v) >> (32 - bit % 32);
                }
            }
        }
        let out = repack3(&row, nb);
        for b in 0..nb {
            let (lo, hi) = ([out[2 * b], out[2 * b + 1]], out[2 * nb + b]);
            for m in 0..8 {
                // Word m of the block's 8-bit codes, as the wide matvec builds it.
                let (j, k) = (m / 4, m % 4);
                let w = ((lo[j] >> (2 * k)) & 0x0303_0303) | (((hi >> m) & 0x0101_0101) << 2);
                for t in 0..4 {
                    let v = 16 * j + k + 4 * t;
                    assert_eq!((w >> (8 * t)) & 0xff, code(b, v), "block {b} value {v}");
                }
            }
        }
    }

    #[test]
    fn symmetric_scales_pair_up_across_rows() {
        let spec = QuantSpec::new(4, 64, Scheme::Symmetric).unwrap();
        // 3 rows × 96 cols: 2 groups per row, 6 scales.
        let scales: Vec<f16> = (1..=6).map(|v| f16::from_f32(v as f32)).collect();
        let q = QuantizedMatrix {
            rows: 3,
            cols: 96,
            spec,
            data: vec![0; 3 * 12],
            scales,
            offsets: vec![],
            rotation: None,
            grid: None,
        };
        let p = pack_params(&q, 1, 2); // scales 3, 4, 5, 6
        let h = |w: u32, i: u32| f16::from_bits((w >> (16 * i)) as u16).to_f32();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (h(p[0], 0), h(p[0], 1), h(p[1], 0), h(p[1], 1)),
            (3.0, 4.0, 5.0, 6.0)
        );
    }

    #[test]
    fn grid_levels_lead_the_params_as_bytes() {
        let levels: Vec<i8> = vec![-100, -7, 3, 90, 91, 92, 126, 127];
        let w = grid_words(&levels);
        assert_eq!(w, [0x5a03_f99c, 0x7f7e_5c5b, 0, 0]);
        for (q, &l) in levels.iter().enumerate() {
            // As weights.wgsl `grid_levels` reads it: byte q % 4 of word q / 4, sign-extended.
            let got = ((w[q / 4] << (24 - 8 * (q % 4))) as i32) >> 24;
            assert_eq!(got, i32::from(l), "code {q}");
        }
        let spec = QuantSpec::new(3, 32, Scheme::Asymmetric).unwrap();
        let q = QuantizedMatrix {
            rows: 2,
            cols: 32,
            spec,
            data: vec![0; 2 * 3],
            scales: vec![f16::from_f32(2.0), f16::from_f32(3.0)],
            offsets: vec![f16::from_f32(-1.0), f16::from_f32(0.5)],
            rotation: None,
            grid: Some(lowbit_core::quant::Grid::new(3, levels).unwrap()),
        };
        let p = pack_params(&q, 1, 1);
        assert_eq!(p.len(), GRID_WORDS + 1);
        assert_eq!(p[..GRID_WORDS], w);
        assert_eq!(p[GRID_WORDS], 0x3800_4200); // 3.0 | 0.5 << 16
    }
}
