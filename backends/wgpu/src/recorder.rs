//! Recording of kernels into one command encoder, submitted only when results are needed.
//!
//! Per-dispatch parameters go to a uniform ring: each dispatch gets its own 64-byte slot at an
//! aligned offset, the ring is written once just before the submit, and a full ring submits
//! early. Writes to buffers that recorded work may still read go through the encoder (a staging
//! copy), so they stay in program order.

use crate::device::GpuDevice;
use crate::pipelines::Kernel;
use crate::profiling::Profiler;
use lowbit_core::{Error, Result};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Bytes of one parameter block (16 scalars).
const PARAMS_BYTES: u64 = 64;
/// Parameter slots in the ring, i.e. dispatches per submission before an early submit.
const RING_SLOTS: u64 = 2048;

/// One kernel launch.
pub(crate) struct Dispatch<'a> {
    pub kernel: Arc<Kernel>,
    /// Up to 16 scalars (f32 as bits), in the order of the shader's `Params` struct.
    pub params: Vec<u32>,
    /// Bindings 1.. (binding 0 is the parameter block).
    pub buffers: Vec<&'a wgpu::Buffer>,
    pub groups: [u32; 3],
}

/// The open encoder and its parameter ring.
pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    ring: wgpu::Buffer,
    slot: u64,
    profiler: Option<Profiler>,
    /// Submissions so far (tests check that a step is one submit).
    pub submits: u64,
}

impl Recorder {
    pub fn new(dev: &GpuDevice) -> Self {
        let slot = PARAMS_BYTES.max(u64::from(dev.limits.min_uniform_buffer_offset_alignment));
        let ring = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params ring"),
            size: slot * RING_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Recorder {
            encoder: None,
            params: Vec::new(),
            ring,
            slot,
            profiler: dev.timestamps.then(|| Profiler::new(dev)),
            submits: 0,
        }
    }

    fn encoder(&mut self, dev: &GpuDevice) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            dev.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    /// Records `dispatches` as one compute pass named `name`.
    pub fn pass(&mut self, dev: &GpuDevice, name: &str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        let need = dispatches.len() as u64 * self.slot;
        let full_ring = self.params.len() as u64 + need > self.ring.size();
        let full_queries = self.profiler.as_ref().is_some_and(|p| p.full());
        if full_ring || full_queries {
            self.submit(dev)?;
        }
        let mut groups = Vec::with_capacity(dispatches.len());
        for d in dispatches {
            if d.params.len() * 4 > PARAMS_BYTES as usize {
                return Err(Error::invalid_config(format!(
                    "{}: too many parameters",
                    d.kernel.label
                )));
            }
            let offset = self.params.len() as u64;
            self.params.extend(bytemuck::cast_slice(&d.params));
            self.params.resize((offset + self.slot) as usize, 0);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.ring,
                    offset,
                    size: wgpu::BufferSize::new(PARAMS_BYTES),
                }),
            }];
            for (i, b) in d.buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                });
            }
            groups.push(dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &d.kernel.layout,
                entries: &entries,
            }));
        }
        let label = dispatches
            .first()
            .map_or(name.to_string(), |d| d.kernel.label.clone());
        self.encoder(dev);
        let mut enc = self.encoder.take().expect("encoder just opened");
        {
            let timestamps = self.profiler.as_mut().map(|p| p.begin_pass(&label));
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(name),
                timestamp_writes: timestamps,
            });
            for (d, bg) in dispatches.iter().zip(&groups) {
                let [x, y, z] = d.groups;
                if x == 0 || y == 0 || z == 0 {
                    continue;
                }
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(x, y, z);
            }
        }
        self.encoder = Some(enc);
        Ok(())
    }

    /// Records a buffer-to-buffer copy (distinct buffers, byte offsets and size multiples of 4).
    pub fn copy(
        &mut self,
        dev: &GpuDevice,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        if bytes > 0 {
            self.encoder(dev)
                .copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
        }
    }

    /// Writes `data` at `offset` bytes of `dst` in program order: directly when nothing is
    /// recorded, else through a staging buffer copied inside the encoder.
    pub fn write(&mut self, dev: &GpuDevice, dst: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.encoder.is_none() {
            dev.queue.write_buffer(dst, offset, data);
            return;
        }
        let staging = dev
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("write staging"),
                contents: data,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        self.copy(dev, &staging, 0, dst, offset, data.len() as u64);
    }

    /// Submits everything recorded; returns after the queue accepted it (not after it ran).
    pub fn submit(&mut self, dev: &GpuDevice) -> Result<()> {
        let Some(mut enc) = self.encoder.take() else {
            return Ok(());
        };
        if !self.params.is_empty() {
            dev.queue.write_buffer(&self.ring, 0, &self.params);
            self.params.clear();
        }
        if let Some(p) = self.profiler.as_mut() {
            p.resolve(&mut enc);
        }
        dev.queue.submit([enc.finish()]);
        self.submits += 1;
        if let Some(p) = self.profiler.as_mut() {
            p.collect(dev)?;
        }
        dev.take_error()
    }

    /// Profiler, when enabled.
    pub fn profiler(&mut self) -> Option<&mut Profiler> {
        self.profiler.as_mut()
    }
}

/// Maps `buf` for reading, waits, and returns its bytes.
pub(crate) fn read_mapped(dev: &GpuDevice, buf: &wgpu::Buffer) -> Result<Vec<u8>> {
    let slice = buf.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    dev.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| {
            Error::new(
                lowbit_core::ErrorCode::WebgpuNotSupported,
                format!("waiting for the GPU: {e}"),
            )
        })?;
    dev.take_error()?;
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Error::new(
                lowbit_core::ErrorCode::WebgpuNotSupported,
                format!("mapping a result buffer: {e}"),
            ))
        }
        Err(_) => {
            return Err(Error::new(
                lowbit_core::ErrorCode::WebgpuNotSupported,
                "the GPU never answered a read",
            ))
        }
    }
    let bytes = slice
        .get_mapped_range()
        .map_err(|e| {
            Error::new(
                lowbit_core::ErrorCode::WebgpuNotSupported,
                format!("reading a result buffer: {e}"),
            )
        })?
        .to_vec();
    buf.unmap();
    Ok(bytes)
}
