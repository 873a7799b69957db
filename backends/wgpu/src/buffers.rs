//! The state every op family shares: buffers (typed), weights, the backend's own scratch and
//! RoPE tables, and the conversions of typed buffers to and from f32.

use crate::backend::WgpuBackend;
use crate::fusion::Plan;
use crate::ops::norm::RmsNorm;
use crate::pipelines::PipelineCache;
use crate::recorder::Recorder;
use crate::weights::GpuWeight;
use half::f16;
use lowbit_core::{BufferId, DType, Error, Result, WeightId};
use std::collections::HashMap;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// A buffer: `len` values of `dtype`.
pub(crate) struct Buf {
    pub buffer: wgpu::Buffer,
    pub len: usize,
    pub dtype: DType,
    /// Made by `alloc_scratch`: fused kernels may leave it unwritten.
    pub scratch: bool,
}

/// (cos, sin) pairs of positions `0..positions` for one (theta, head_dim).
pub(crate) struct RopeTable {
    pub theta_bits: u32,
    pub head_dim: usize,
    pub positions: usize,
    pub buffer: wgpu::Buffer,
}

pub(crate) struct State {
    pub buffers: HashMap<u32, Buf>,
    pub next_buffer: u32,
    pub weights: HashMap<u32, GpuWeight>,
    pub next_weight: u32,
    pub weight_bytes: usize,
    pub pipelines: PipelineCache,
    pub rec: Recorder,
    /// RoPE tables per (theta, head_dim), kept across steps.
    pub rope: Vec<RopeTable>,
    /// Internal scratch buffers (see `Scratch`), grown as needed.
    pub scratch: [Option<wgpu::Buffer>; 2],
    /// Where fused kernels exchange 8-bit activations (see `Internal`), grown as needed.
    pub internal: [Option<BufferId>; 5],
    /// Bound where a kernel's binding is unused (dense weights have no group parameters).
    pub dummy: wgpu::Buffer,
    /// The RMSNorm the fusion pass found after the next residual add into its `x`.
    pub norm_hint: Option<NormHint>,
    /// The input of that RMSNorm as a residual add's epilogue prepared it
    /// (`Epilogue::AddNorm`), valid while no other dispatch or write has been recorded since.
    pub norm_ready: Option<NormReady>,
    /// Fusion plans by step shape (`fusion::shape_key`).
    pub plans: HashMap<u64, Arc<Plan>>,
}

/// A norm that follows a residual add (found by the fusion pass).
#[derive(Clone, Copy)]
pub(crate) struct NormHint {
    pub x: BufferId,
    pub norm: RmsNorm,
    pub w: WeightId,
}

/// An RMSNorm input prepared by a residual add (`Epilogue::AddNorm`): g · x as 8-bit words
/// with their own scales in the code order of the matvec of `w`, then `parts` partial sums of
/// x² (`Input::Q8WordsRms`).
#[derive(Clone, Copy)]
pub(crate) struct NormReady {
    pub x: BufferId,
    pub norm: RmsNorm,
    pub w: WeightId,
    pub words: BufferId,
    pub parts: u32,
    /// Dispatches recorded when it was made: any later one (or a write) may change `x`.
    pub dispatches: u64,
}

/// Internal scratch buffers, one of each kind, kept across steps.
#[derive(Clone, Copy)]
pub(crate) enum Scratch {
    /// Split partials of decode attention.
    AttentionPartials = 0,
    /// Per-workgroup (value, index) pairs of a two-pass argmax.
    ArgmaxPairs = 1,
}

impl Scratch {
    fn label(self) -> &'static str {
        match self {
            Scratch::AttentionPartials => "attention partials",
            Scratch::ArgmaxPairs => "argmax partials",
        }
    }
}

/// The 8-bit activations fused kernels hand each other (never the model's f32 buffers, which
/// a fused group leaves unwritten). Three kinds, so that no fused group reads and writes one.
#[derive(Clone, Copy)]
pub(crate) enum Internal {
    /// 8-bit activation blocks (`Input::Q8`): a norm's, attention's or SwiGLU's output.
    Blocks = 0,
    /// 8-bit words with their own scales (`Input::Q8Words`): the SwiGLU epilogue's output.
    Words = 1,
    /// The next norm's input as a residual add prepares it (`Epilogue::AddNorm`).
    NormWords = 2,
    /// Rows widened with zero columns for a padded dense matrix (`WgpuBackend::pad_rows`).
    PaddedRows = 3,
    /// Rows rotated for a matrix stored in a rotated basis (`WgpuBackend::rotate_rows`).
    RotatedRows = 4,
}

impl State {
    /// The f32 buffer `id` (every kernel's activations are f32).
    pub fn buf(&self, id: BufferId) -> Result<&Buf> {
        let b = self.any_buf(id)?;
        if b.dtype != DType::F32 {
            return Err(Error::unsupported(format!(
                "webgpu: ops read and write f32 buffers; buffer {} holds {}",
                id.0,
                b.dtype.name()
            )));
        }
        Ok(b)
    }

    /// The buffer `id`, of any type.
    pub fn any_buf(&self, id: BufferId) -> Result<&Buf> {
        self.buffers
            .get(&id.0)
            .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", id.0)))
    }
}

/// Errors unless `b` holds `need` values.
pub(crate) fn check_len(what: &str, b: &Buf, need: usize) -> Result<()> {
    if b.len < need {
        return Err(Error::invalid_config(format!(
            "{what} needs {need} values, the buffer holds {}",
            b.len
        )));
    }
    Ok(())
}

/// The uploaded weight `id`, or an error naming it.
pub(crate) fn weight(weights: &HashMap<u32, GpuWeight>, id: WeightId) -> Result<&GpuWeight> {
    weights
        .get(&id.0)
        .ok_or_else(|| Error::invalid_config(format!("unknown weight {}", id.0)))
}

/// Errors when an op's input and output are one buffer where the kernel needs two.
pub(crate) fn distinct(what: &str, a: BufferId, b: BufferId) -> Result<()> {
    if a == b {
        return Err(Error::invalid_config(format!(
            "{what}: input and output must be different buffers"
        )));
    }
    Ok(())
}

/// `data` as the bytes of a `dtype` buffer: f16 halves, or 8-bit blocks (32 codes in 8
/// little-endian words, then the f32 scale max|v| / 127; `data` in whole blocks).
pub(crate) fn encode(dtype: DType, data: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => data
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::Q8Block => {
            let mut out = Vec::with_capacity(data.len() / 32 * 36);
            for block in data.chunks(32) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for &v in block {
                    out.push((v * inv).round().clamp(-127.0, 127.0) as i8 as u8);
                }
                out.extend(scale.to_le_bytes());
            }
            out
        }
        // Never allocated on this backend (`alloc` refuses it).
        DType::QBlock { .. } => Vec::new(),
    }
}

/// The f32 values of `bytes` of a `dtype` buffer (whole values, or whole blocks).
pub(crate) fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::Q8Block => bytes
            .chunks_exact(36)
            .flat_map(|b| {
                let scale = f32::from_le_bytes([b[32], b[33], b[34], b[35]]);
                b[..32].iter().map(move |&c| f32::from(c as i8) * scale)
            })
            .collect(),
        DType::QBlock { .. } => Vec::new(),
    }
}

/// The byte range of values `offset .. offset + len` of a `dtype` buffer, widened to whole
/// 4-byte words (copies move words), and where the values start within it.
pub(crate) fn byte_range(dtype: DType, offset: usize, len: usize) -> Result<(u64, u64, usize)> {
    let block = dtype.block();
    if !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
        return Err(Error::invalid_config(format!(
            "{} buffers are read and written in whole blocks of {block} values",
            dtype.name()
        )));
    }
    let start = dtype.bytes_for(offset) as u64;
    let end = start + dtype.bytes_for(len) as u64;
    let aligned = start / 4 * 4;
    Ok((
        aligned,
        end.next_multiple_of(4) - aligned,
        (start - aligned) as usize,
    ))
}

impl WgpuBackend {
    /// The scratch buffer of this kind, at least `bytes` long (grown, never shrunk).
    pub(crate) fn scratch(
        &self,
        st: &mut State,
        kind: Scratch,
        bytes: u64,
    ) -> Result<wgpu::Buffer> {
        let bytes = bytes.max(16).next_multiple_of(16);
        let slot = kind as usize;
        if st.scratch[slot].as_ref().is_none_or(|b| b.size() < bytes) {
            self.dev.check_buffer_size(bytes, kind.label())?;
            let b = self.dev.scoped("allocating scratch", || {
                self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(kind.label()),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })?;
            if let Some(old) = st.scratch[slot].replace(b) {
                st.rec.forget(&old);
            }
        }
        Ok(st.scratch[slot].clone().expect("scratch just set"))
    }

    /// The internal buffer of `kind`, at least `len` f32 slots long (grown, never shrunk).
    pub(crate) fn internal(&self, kind: Internal, len: usize) -> Result<BufferId> {
        let slot = kind as usize;
        let have = {
            let st = self.lock();
            st.internal[slot].filter(|id| st.buffers.get(&id.0).is_some_and(|b| b.len >= len))
        };
        if let Some(id) = have {
            return Ok(id);
        }
        let id = self.create_buffer(DType::F32, len, None, false)?;
        let mut st = self.lock();
        if let Some(old) = st.internal[slot].replace(id) {
            if let Some(b) = st.buffers.remove(&old.0) {
                st.rec.forget(&b.buffer);
            }
        }
        Ok(id)
    }

    /// Creates a storage buffer of `len` values of `dtype`, zeroed or holding `data` (its
    /// bytes); `scratch` marks an `alloc_scratch` buffer.
    pub(crate) fn create_buffer(
        &self,
        dtype: DType,
        len: usize,
        data: Option<&[u8]>,
        scratch: bool,
    ) -> Result<BufferId> {
        let bytes = (dtype.bytes_for(len).max(16) as u64).next_multiple_of(16);
        let limit = self.dev.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(Error::out_of_memory(format!(
                "a buffer of {len} values ({bytes} bytes) exceeds the device's storage binding limit of {limit} bytes"
            )));
        }
        self.dev.check_buffer_size(bytes, "an activation buffer")?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = self.dev.scoped("allocating a buffer", || match data {
            Some(d) => {
                let mut padded = d.to_vec();
                padded.resize(bytes as usize, 0);
                self.dev
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: &padded,
                        usage,
                    })
            }
            None => self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage,
                mapped_at_creation: false,
            }),
        })?;
        let mut st = self.lock();
        let id = st.next_buffer;
        st.next_buffer += 1;
        st.buffers.insert(
            id,
            Buf {
                buffer,
                len,
                dtype,
                scratch,
            },
        );
        Ok(BufferId(id))
    }
}
