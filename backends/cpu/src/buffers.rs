//! A slab of f32 buffers, each behind its own lock, so independent requests run concurrently.

use lowbit_core::backend::BufferId;
use lowbit_core::error::{Error, Result};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

type Cell = Arc<RwLock<Vec<f32>>>;

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

fn read_lock(c: &Cell) -> RwLockReadGuard<'_, Vec<f32>> {
    // A panic elsewhere while holding the lock leaves plain f32 data: still usable.
    c.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(c: &Cell) -> RwLockWriteGuard<'_, Vec<f32>> {
    c.write().unwrap_or_else(|e| e.into_inner())
}

impl BufferSlab {
    /// Stores `data` and returns its id.
    pub fn insert(&self, data: Vec<f32>) -> Result<BufferId> {
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

    /// Runs `f` on a read view of `id`.
    pub fn read<R>(&self, id: BufferId, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        let c = self.get(id)?;
        let g = read_lock(&c);
        Ok(f(&g))
    }

    /// Runs `f` with read views of `inputs` and a write view of `output`. Locks are taken in id
    /// order, so two operations touching the same buffers never deadlock; an input that is also
    /// the output is read from a snapshot taken before the write.
    pub fn with<R>(
        &self,
        inputs: &[BufferId],
        output: BufferId,
        f: impl FnOnce(&[&[f32]], &mut [f32]) -> Result<R>,
    ) -> Result<R> {
        let out_cell = self.get(output)?;
        let mut ins: Vec<(BufferId, Cell)> = Vec::with_capacity(inputs.len());
        for &id in inputs {
            if id != output && !ins.iter().any(|(i, _)| *i == id) {
                ins.push((id, self.get(id)?));
            }
        }
        let snapshot = if inputs.contains(&output) {
            Some(read_lock(&out_cell).clone())
        } else {
            None
        };
        ins.sort_by_key(|(id, _)| id.0);
        let mut reads: Vec<(BufferId, RwLockReadGuard<'_, Vec<f32>>)> = Vec::new();
        let mut write = None;
        for (id, cell) in &ins {
            if write.is_none() && output.0 < id.0 {
                write = Some(write_lock(&out_cell));
            }
            reads.push((*id, read_lock(cell)));
        }
        let mut write = write.unwrap_or_else(|| write_lock(&out_cell));
        let views: Vec<&[f32]> = inputs
            .iter()
            .map(|id| {
                if *id == output {
                    snapshot.as_deref().unwrap_or(&[])
                } else {
                    reads
                        .iter()
                        .find(|(i, _)| i == id)
                        .map_or(&[][..], |(_, g)| &g[..])
                }
            })
            .collect();
        f(&views, &mut write)
    }

    /// Runs `f` on a write view of `id`.
    pub fn write<R>(&self, id: BufferId, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
        self.with(&[], id, |_, out| f(out))
    }
}
