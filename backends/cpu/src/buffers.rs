//! A slab of typed buffers, each behind its own lock, so independent requests run concurrently.
//! Ops compute on f32 buffers; f16 and int8-block buffers store what [`BufferSlab::write_values`]
//! converts and [`BufferSlab::read_values`] converts back.

use crate::ops::qblock::QStore;
use half::f16;
use lowbit_core::backend::{BufferId, DType};
use lowbit_core::error::{Error, Result};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Values per [`DType::Q8Block`] block.
const Q8: usize = 32;

/// The values of one buffer.
pub(crate) enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Int8 codes and one scale per block of 32 (value = code × scale).
    Q8Block {
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
    /// Asymmetric blocks of 2-8 bit codes (a quantized KV cache).
    QBlock(QStore),
}

/// A read view of one buffer for ops that take stored rows as they are (attention over a
/// quantized KV cache): f32 values, or quantized blocks read a range at a time.
#[derive(Clone)]
pub(crate) enum View<'a> {
    F32(&'a [f32]),
    Q(&'a QStore),
}

impl View<'_> {
    /// Values the view holds.
    pub fn len(&self) -> usize {
        match self {
            View::F32(v) => v.len(),
            View::Q(q) => q.len,
        }
    }

    /// Values `from .. from + buf.len()`: a slice of the buffer, or decoded into `buf`.
    #[inline]
    pub fn get<'b>(&'b self, from: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match self {
            View::F32(v) => &v[from..from + buf.len()],
            View::Q(q) => {
                q.read(from, buf);
                buf
            }
        }
    }
}

impl Storage {
    /// `len` zeros of `dtype`, or `OUT_OF_MEMORY` when the host refuses.
    fn zeroed(dtype: DType, len: usize) -> Result<Storage> {
        let oom = || {
            Error::out_of_memory(format!(
                "cannot allocate a CPU buffer of {len} {}",
                dtype.name()
            ))
        };
        fn zeros<T: Clone + Default>(len: usize) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).ok()?;
            v.resize(len, T::default());
            Some(v)
        }
        Ok(match dtype {
            DType::F32 => Storage::F32(zeros(len).ok_or_else(oom)?),
            DType::F16 => Storage::F16(zeros(len).ok_or_else(oom)?),
            DType::Q8Block => Storage::Q8Block {
                codes: zeros(len).ok_or_else(oom)?,
                scales: zeros(len.div_ceil(Q8)).ok_or_else(oom)?,
            },
            DType::QBlock { bits, group } => Storage::QBlock(
                QStore::zeroed(u32::from(bits), usize::from(group).max(1), len).ok_or_else(oom)?,
            ),
        })
    }

    fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::Q8Block { .. } => DType::Q8Block,
            Storage::QBlock(q) => DType::QBlock {
                bits: q.bits as u8,
                group: q.group as u16,
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::Q8Block { codes, .. } => codes.len(),
            Storage::QBlock(q) => q.len,
        }
    }

    /// The view ops that read stored rows take.
    fn view(&self, id: BufferId) -> Result<View<'_>> {
        match self {
            Storage::F32(v) => Ok(View::F32(v)),
            Storage::QBlock(q) => Ok(View::Q(q)),
            other => Err(not_f32(id, other.dtype())),
        }
    }

    /// The f32 values ops compute on; other types are refused.
    fn f32(&self, id: BufferId) -> Result<&[f32]> {
        match self {
            Storage::F32(v) => Ok(v),
            other => Err(not_f32(id, other.dtype())),
        }
    }

    fn f32_mut(&mut self, id: BufferId) -> Result<&mut [f32]> {
        match self {
            Storage::F32(v) => Ok(v),
            other => Err(not_f32(id, other.dtype())),
        }
    }
}

fn not_f32(id: BufferId, dtype: DType) -> Error {
    Error::invalid_config(format!(
        "CPU buffer {} holds {}; CPU ops compute on f32 buffers only",
        id.0,
        dtype.name()
    ))
}

/// Errors unless `offset + len` fits in `have` values.
fn in_bounds(what: &str, id: BufferId, have: usize, offset: usize, len: usize) -> Result<usize> {
    match offset.checked_add(len) {
        Some(end) if end <= have => Ok(end),
        _ => Err(Error::invalid_config(format!(
            "{what}: values {offset}..{} of CPU buffer {} are past its {have} values",
            offset.saturating_add(len),
            id.0
        ))),
    }
}

type Cell = Arc<RwLock<Storage>>;

#[derive(Default)]
struct Slots {
    bufs: Vec<Option<Cell>>,
    free: Vec<u32>,
}

/// Buffers addressed by [`BufferId`]; freed ids are reused.
#[derive(Default)]
pub(crate) struct BufferSlab {
    slots: RwLock<Slots>,
}

fn read_lock(c: &Cell) -> RwLockReadGuard<'_, Storage> {
    // A panic elsewhere while holding the lock leaves plain numbers: still usable.
    c.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(c: &Cell) -> RwLockWriteGuard<'_, Storage> {
    c.write().unwrap_or_else(|e| e.into_inner())
}

impl BufferSlab {
    /// Stores `data` as an f32 buffer and returns its id.
    pub fn insert(&self, data: Vec<f32>) -> Result<BufferId> {
        self.insert_storage(Storage::F32(data))
    }

    /// A zeroed buffer of `len` values of `dtype`.
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<BufferId> {
        self.insert_storage(Storage::zeroed(dtype, len)?)
    }

    fn insert_storage(&self, data: Storage) -> Result<BufferId> {
        let mut s = self.slots.write().unwrap_or_else(|e| e.into_inner());
        let cell = Some(Arc::new(RwLock::new(data)));
        if let Some(id) = s.free.pop() {
            s.bufs[id as usize] = cell;
            return Ok(BufferId(id));
        }
        let id = u32::try_from(s.bufs.len())
            .map_err(|_| Error::out_of_memory("too many CPU buffers (2^32)"))?;
        s.bufs.push(cell);
        Ok(BufferId(id))
    }

    /// Drops buffer `id`; unknown ids are ignored.
    pub fn remove(&self, id: BufferId) {
        let mut s = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = s.bufs.get_mut(id.0 as usize) {
            if slot.take().is_some() {
                s.free.push(id.0);
            }
        }
    }

    fn get(&self, id: BufferId) -> Result<Cell> {
        let s = self.slots.read().unwrap_or_else(|e| e.into_inner());
        s.bufs
            .get(id.0 as usize)
            .and_then(Clone::clone)
            .ok_or_else(|| Error::invalid_config(format!("unknown CPU buffer id {}", id.0)))
    }

    /// Values of f32 buffer `id` (other types are refused: ops compute on f32).
    pub fn f32_len(&self, id: BufferId) -> Result<usize> {
        let c = self.get(id)?;
        let g = read_lock(&c);
        Ok(g.f32(id)?.len())
    }

    /// `len` values of `id` from `offset`, converted to f32.
    pub fn read_values(&self, id: BufferId, offset: usize, len: usize) -> Result<Vec<f32>> {
        let c = self.get(id)?;
        let g = read_lock(&c);
        let end = in_bounds("read", id, g.len(), offset, len)?;
        Ok(match &*g {
            Storage::F32(v) => v[offset..end].to_vec(),
            Storage::F16(v) => v[offset..end].iter().map(|h| h.to_f32()).collect(),
            Storage::Q8Block { codes, scales } => (offset..end)
                .map(|i| f32::from(codes[i]) * scales[i / Q8])
                .collect(),
            Storage::QBlock(q) => {
                let mut out = vec![0f32; end - offset];
                q.read(offset, &mut out);
                out
            }
        })
    }

    /// Overwrites `data.len()` values of `id` from `offset`, converting to the buffer's type. An
    /// int8-block buffer takes whole blocks only: `offset` a multiple of 32 and the data ending
    /// on a block boundary or at the end of the buffer.
    pub fn write_values(&self, id: BufferId, offset: usize, data: &[f32]) -> Result<()> {
        let c = self.get(id)?;
        let mut g = write_lock(&c);
        let end = in_bounds("write", id, g.len(), offset, data.len())?;
        let len = g.len();
        match &mut *g {
            Storage::F32(v) => v[offset..end].copy_from_slice(data),
            Storage::F16(v) => {
                for (d, s) in v[offset..end].iter_mut().zip(data) {
                    *d = f16::from_f32(*s);
                }
            }
            Storage::Q8Block { codes, scales } => {
                if !offset.is_multiple_of(Q8) || !(end.is_multiple_of(Q8) || end == len) {
                    return Err(Error::invalid_config(format!(
                        "write: CPU buffer {} holds blocks of {Q8} values; values {offset}..{end} \
                         are not whole blocks",
                        id.0
                    )));
                }
                for (b, block) in data.chunks(Q8).enumerate() {
                    let first = offset + b * Q8;
                    scales[first / Q8] =
                        quantize_block(block, &mut codes[first..first + block.len()]);
                }
            }
            Storage::QBlock(q) => {
                let g = q.group;
                if !offset.is_multiple_of(g) || !(end.is_multiple_of(g) || end == len) {
                    return Err(Error::invalid_config(format!(
                        "write: CPU buffer {} holds blocks of {g} values; values {offset}..{end} \
                         are not whole blocks",
                        id.0
                    )));
                }
                q.write(offset, data);
            }
        }
        Ok(())
    }

    /// Values of buffer `id` as ops that read stored rows see them (f32 or quantized blocks).
    pub fn view_len(&self, id: BufferId) -> Result<usize> {
        let c = self.get(id)?;
        let g = read_lock(&c);
        Ok(g.view(id)?.len())
    }

    /// The dtype of buffer `id`.
    pub fn dtype(&self, id: BufferId) -> Result<DType> {
        let c = self.get(id)?;
        let g = read_lock(&c);
        Ok(g.dtype())
    }

    /// Runs `f` on a read view of f32 buffer `id`.
    pub fn read<R>(&self, id: BufferId, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        let c = self.get(id)?;
        let g = read_lock(&c);
        f(g.f32(id)?)
    }

    /// Runs `f` with read views of f32 buffers `inputs` and a write view of f32 buffer
    /// `output`. Locks are taken in id order, so two operations touching the same buffers never
    /// deadlock; an input that is also the output is read from a snapshot taken before the write.
    pub fn with<R>(
        &self,
        inputs: &[BufferId],
        output: BufferId,
        f: impl FnOnce(&[&[f32]], &mut [f32]) -> Result<R>,
    ) -> Result<R> {
        self.with_views(inputs, output, |views, out| {
            let mut f32s: Vec<&[f32]> = Vec::with_capacity(views.len());
            for (v, id) in views.iter().zip(inputs) {
                match v {
                    View::F32(x) => f32s.push(x),
                    View::Q(_) => return Err(not_f32(*id, self.dtype(*id)?)),
                }
            }
            f(&f32s, out)
        })
    }

    /// [`Self::with`], with each input as a [`View`] (f32 or quantized blocks).
    pub fn with_views<R>(
        &self,
        inputs: &[BufferId],
        output: BufferId,
        f: impl FnOnce(&[View<'_>], &mut [f32]) -> Result<R>,
    ) -> Result<R> {
        let out_cell = self.get(output)?;
        let mut ins: Vec<(BufferId, Cell)> = Vec::with_capacity(inputs.len());
        for &id in inputs {
            if id != output && !ins.iter().any(|(i, _)| *i == id) {
                ins.push((id, self.get(id)?));
            }
        }
        let snapshot = if inputs.contains(&output) {
            Some(read_lock(&out_cell).f32(output)?.to_vec())
        } else {
            None
        };
        ins.sort_by_key(|(id, _)| id.0);
        let mut reads: Vec<(BufferId, RwLockReadGuard<'_, Storage>)> = Vec::new();
        let mut write = None;
        for (id, cell) in &ins {
            if write.is_none() && output.0 < id.0 {
                write = Some(write_lock(&out_cell));
            }
            reads.push((*id, read_lock(cell)));
        }
        let mut write = write.unwrap_or_else(|| write_lock(&out_cell));
        let mut views: Vec<View<'_>> = Vec::with_capacity(inputs.len());
        for id in inputs {
            if *id == output {
                views.push(View::F32(snapshot.as_deref().unwrap_or(&[])));
            } else if let Some((_, g)) = reads.iter().find(|(i, _)| i == id) {
                views.push(g.view(*id)?);
            }
        }
        f(&views, write.f32_mut(output)?)
    }

    /// Runs `f` on a write view of f32 buffer `id`.
    pub fn write<R>(&self, id: BufferId, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
        self.with(&[], id, |_, out| f(out))
    }
}

/// Int8 codes of one block with scale `max|x| / 127`, rounded to nearest (ties to even), as
/// the activations of the quantized matmul are; returns the scale.
fn quantize_block(x: &[f32], codes: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (c, v) in codes.iter_mut().zip(x) {
        *c = (v * id).round_ties_even() as i8;
    }
    d
}
