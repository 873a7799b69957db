//! Weight matrices on the device: uploaded once in their packed form, split by row ranges
//! ("pieces") when one binding could not hold the whole matrix.

use crate::device::GpuDevice;
use bytemuck::cast_slice;
use lowbit_core::quant::{QuantSpec, Scheme};
use lowbit_core::{Error, Result, WeightMatrix};
use wgpu::util::DeviceExt;

/// Storage format of a weight matrix, as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightKind {
    /// Packed codes with f16 group parameters.
    Quant(QuantSpec),
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

/// An uploaded weight matrix.
pub(crate) struct GpuWeight {
    pub rows: usize,
    pub cols: usize,
    pub kind: WeightKind,
    pub pieces: Vec<Piece>,
    /// Device bytes held.
    pub bytes: usize,
}

/// Group parameters of `rows` rows starting at `r0`, one u32 per group (asymmetric:
/// scale | offset << 16) or one per two groups (symmetric: two scales), flat over the rows.
fn pack_params(q: &lowbit_core::QuantizedMatrix, r0: usize, rows: usize) -> Vec<u32> {
    let g = q.groups_per_row();
    let span = r0 * g..(r0 + rows) * g;
    let bits = |v: half::f16| u32::from(v.to_bits());
    match q.spec.scheme {
        Scheme::Asymmetric => q.scales[span.clone()]
            .iter()
            .zip(&q.offsets[span])
            .map(|(s, o)| bits(*s) | (bits(*o) << 16))
            .collect(),
        Scheme::Symmetric => q.scales[span]
            .chunks(2)
            .map(|c| bits(c[0]) | c.get(1).map_or(0, |s| bits(*s) << 16))
            .collect(),
    }
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
    if cols == 0 || cols % 32 != 0 || rows == 0 {
        return Err(Error::unsupported(format!(
            "the WebGPU backend needs weight matrices with rows and a multiple of 32 columns, got {rows}×{cols}"
        )));
    }
    let (kind, row_words) = match &w {
        WeightMatrix::Quantized(q) => (WeightKind::Quant(q.spec), q.row_words()),
        WeightMatrix::F32 { .. } => (WeightKind::F32, cols),
        WeightMatrix::F16 { .. } => (WeightKind::F16, cols / 2),
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
            WeightMatrix::Quantized(q) => q.data[r0 * row_words..(r0 + n) * row_words].to_vec(),
            WeightMatrix::F32 { data, .. } => data[r0 * cols..(r0 + n) * cols]
                .iter()
                .map(|v| v.to_bits())
                .collect(),
            WeightMatrix::F16 { data, .. } => {
                cast_slice(&data[r0 * cols..(r0 + n) * cols]).to_vec()
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
    Ok(GpuWeight {
        rows,
        cols,
        kind,
        pieces,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use lowbit_core::QuantizedMatrix;

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
        };
        let p = pack_params(&q, 1, 2); // scales 3, 4, 5, 6
        let h = |w: u32, i: u32| f16::from_bits((w >> (16 * i)) as u16).to_f32();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (h(p[0], 0), h(p[0], 1), h(p[1], 0), h(p[1], 1)),
            (3.0, 4.0, 5.0, 6.0)
        );
    }
}
