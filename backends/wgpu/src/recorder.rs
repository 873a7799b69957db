//! Recording of kernels into one command encoder, submitted only when results are needed.
//!
//! Host data of a submission (each dispatch's 64-byte parameter block, token ids, written values)
//! goes to one upload ring, written with a single `write_buffer` just before the submit. Kernels
//! bind the ring at dynamic offsets, so a dispatch's bind group depends only on the kernel and
//! the buffers it touches: bind groups are cached, and a decode step, which binds the same
//! buffers every time, creates none after the first. Dispatches share one compute pass per
//! submission (wgpu orders them within the pass by their buffer usages); with profiling on, each
//! dispatch gets its own pass, timed.

use crate::device::GpuDevice;
use crate::pipelines::{FastMap, Kernel};
use crate::profiling::Profiler;
use lowbit_core::{Error, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Bytes of one parameter block (16 scalars).
const PARAMS_BYTES: u64 = 64;
/// Initial ring size: 4096 parameter slots of 256 bytes; grown when one upload needs more.
const INITIAL_RING_BYTES: u64 = 1 << 20;
/// Most bindings after binding 0 that a kernel has.
pub(crate) const MAX_BINDINGS: usize = 8;
/// Cached bind groups beyond which the cache starts over (a bound on what an unforeseen
/// allocation pattern could keep alive).
const MAX_CACHED_BIND_GROUPS: usize = 8192;

/// What one binding after binding 0 holds.
#[derive(Clone, Copy)]
pub(crate) enum Bind<'a> {
    /// A whole buffer.
    Buffer(&'a wgpu::Buffer),
    /// Host data for this dispatch, placed in the upload ring (a [`crate::pipelines::Slot::Upload`]
    /// binding; at most one per dispatch).
    Upload(&'a [u32]),
}

/// One kernel launch.
pub(crate) struct Dispatch<'a> {
    pub kernel: &'a Kernel,
    /// Up to 16 scalars (f32 as bits), in the order of the shader's `Params` struct.
    pub params: &'a [u32],
    /// Bindings 1.. (binding 0 is the parameter block).
    pub bindings: &'a [Bind<'a>],
    pub groups: [u32; 3],
}

/// A bind group's identity: the kernel, the buffers of bindings 1.. (the ring for an upload),
/// and the size of the upload binding.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    kernel: u32,
    buffers: [Option<wgpu::Buffer>; MAX_BINDINGS],
    upload_bytes: u64,
}

/// The open encoder, its compute pass, the upload ring and the bind-group cache.
pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    /// The shared pass of the open submission (never open while profiling).
    pass: Option<wgpu::ComputePass<'static>>,
    /// Kernel whose pipeline the open pass has set.
    pass_kernel: Option<u32>,
    /// Ring contents of the open submission.
    staged: Vec<u8>,
    ring: wgpu::Buffer,
    /// Offset alignment of both uniform and storage dynamic offsets.
    align: u64,
    bind_groups: FastMap<BindKey, wgpu::BindGroup>,
    /// Bind groups created so far (tests check that steady decode steps create none).
    pub bind_groups_created: u64,
    profiler: Option<Profiler>,
    /// Submissions so far (tests check that a step is one submit).
    pub submits: u64,
    /// Host-side time: recording dispatches, submitting, and waiting for read-backs.
    pub host: HostTimes,
    /// When the first dispatch of the open submission was recorded.
    open_since: Option<web_time::Instant>,
    /// Readback buffers of redeemed reads and the time spent waiting for them, shared with the
    /// read futures (which redeem without the backend's lock).
    pub readbacks: Arc<Mutex<Readbacks>>,
    /// Dispatches in the open submission.
    open_dispatches: usize,
}

/// A read in flight: the readback buffer being mapped, its size, the submission that fills it,
/// and where the map callback reports.
pub(crate) struct InFlight {
    buffer: wgpu::Buffer,
    bytes: u64,
    /// Waited on natively; a browser's map callback fires after it on its own.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    submission: wgpu::SubmissionIndex,
    mapped: MapSignal,
}

/// Readback buffers kept for reuse, and the host's waits for reads.
#[derive(Default)]
pub(crate) struct Readbacks {
    spare: Vec<wgpu::Buffer>,
    /// Blocked on read-backs (the GPU running, then mapping), nanoseconds.
    pub wait_ns: u64,
    /// Read-backs redeemed.
    pub reads: u64,
}

impl Readbacks {
    fn recycle(&mut self, buffer: wgpu::Buffer) {
        if self.spare.len() < MAX_SPARE_READBACKS {
            self.spare.push(buffer);
        }
    }
}

/// Readback buffers kept for reuse (two reads in flight is the decode pipeline's depth).
const MAX_SPARE_READBACKS: usize = 4;

/// CPU time the backend spends around the GPU, summed since the last reset: where a decode
/// step's wall time goes besides the kernels (`lowbit bench --host-timings`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HostTimes {
    /// From the first dispatch of a submission to its submit (recording, binding, encoding).
    pub record_ns: u64,
    /// Finishing the encoder and `queue.submit`.
    pub submit_ns: u64,
    /// Dispatches recorded.
    pub dispatches: u64,
    /// Submissions.
    pub submits: u64,
}

fn ring_buffer(dev: &GpuDevice, size: u64) -> wgpu::Buffer {
    dev.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("upload ring"),
        size,
        usage: wgpu::BufferUsages::UNIFORM
            | wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

impl Recorder {
    pub fn new(dev: &GpuDevice) -> Self {
        let align = PARAMS_BYTES
            .max(u64::from(dev.limits.min_uniform_buffer_offset_alignment))
            .max(u64::from(dev.limits.min_storage_buffer_offset_alignment));
        Recorder {
            encoder: None,
            pass: None,
            pass_kernel: None,
            staged: Vec::new(),
            ring: ring_buffer(dev, INITIAL_RING_BYTES),
            align,
            bind_groups: FastMap::default(),
            bind_groups_created: 0,
            profiler: dev.timestamps.then(|| Profiler::new(dev)),
            submits: 0,
            host: HostTimes::default(),
            open_since: None,
            open_dispatches: 0,
            readbacks: Arc::default(),
        }
    }

    fn encoder(&mut self, dev: &GpuDevice) -> &mut wgpu::CommandEncoder {
        self.end_pass();
        self.encoder.get_or_insert_with(|| {
            dev.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    fn end_pass(&mut self) {
        self.pass = None;
        self.pass_kernel = None;
    }

    /// Appends `bytes` to the staged ring contents at an aligned offset, reserving `reserve`
    /// bytes; returns the offset.
    fn stage(&mut self, bytes: &[u8], reserve: u64) -> u32 {
        let offset = self.staged.len();
        self.staged.extend_from_slice(bytes);
        let end = offset + reserve.next_multiple_of(self.align) as usize;
        self.staged.resize(end, 0);
        offset as u32
    }

    /// Records one dispatch (skipped when a group count is 0).
    pub fn dispatch(&mut self, dev: &GpuDevice, d: &Dispatch<'_>) -> Result<()> {
        let [x, y, z] = d.groups;
        if x == 0 || y == 0 || z == 0 {
            return Ok(());
        }
        self.open_since.get_or_insert_with(web_time::Instant::now);
        self.host.dispatches += 1;
        if d.params.len() * 4 > PARAMS_BYTES as usize || d.bindings.len() > MAX_BINDINGS {
            return Err(Error::invalid_config(format!(
                "{}: too many parameters or bindings",
                d.kernel.label
            )));
        }
        let upload = d.bindings.iter().find_map(|b| match b {
            Bind::Upload(words) => Some(*words),
            Bind::Buffer(_) => None,
        });
        // Power-of-two binding sizes keep the number of distinct bind groups small.
        let upload_bytes = upload.map_or(0, |w| (w.len() as u64 * 4).max(16).next_power_of_two());
        let need = self.align + upload_bytes.next_multiple_of(self.align);
        let full_queries = self.profiler.as_ref().is_some_and(|p| p.full());
        let chunk_done = dev
            .dispatches_per_submit
            .is_some_and(|n| self.open_dispatches >= n);
        if self.staged.len() as u64 + need > self.ring.size() || full_queries || chunk_done {
            self.submit(dev)?;
        }
        self.open_dispatches += 1;
        if need > self.ring.size() {
            let size = need.next_power_of_two().min(dev.limits.max_buffer_size);
            dev.check_buffer_size(need, "the upload ring")?;
            self.ring = ring_buffer(dev, size);
            // Every cached bind group binds the old ring.
            self.bind_groups.clear();
        }
        let mut offsets = [0u32; 2];
        offsets[0] = self.stage(bytemuck::cast_slice(d.params), PARAMS_BYTES);
        let mut n_offsets = 1;
        if let Some(words) = upload {
            offsets[1] = self.stage(bytemuck::cast_slice(words), upload_bytes);
            n_offsets = 2;
        }

        let mut buffers: [Option<wgpu::Buffer>; MAX_BINDINGS] = Default::default();
        for (slot, b) in buffers.iter_mut().zip(d.bindings) {
            *slot = Some(match b {
                Bind::Buffer(buf) => (*buf).clone(),
                Bind::Upload(_) => self.ring.clone(),
            });
        }
        let key = BindKey {
            kernel: d.kernel.id,
            buffers,
            upload_bytes,
        };
        if !self.bind_groups.contains_key(&key) {
            if self.bind_groups.len() >= MAX_CACHED_BIND_GROUPS {
                self.bind_groups.clear();
            }
            let bg = self.create_bind_group(dev, d, upload_bytes);
            self.bind_groups.insert(
                BindKey {
                    kernel: key.kernel,
                    buffers: key.buffers.clone(),
                    upload_bytes,
                },
                bg,
            );
        }
        let bg = &self.bind_groups[&key];

        if let Some(p) = self.profiler.as_mut() {
            let enc = self.encoder.get_or_insert_with(|| {
                dev.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("step"),
                    })
            });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.kernel.label),
                timestamp_writes: Some(p.begin_pass(&d.kernel.label)),
            });
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, bg, &offsets[..n_offsets]);
            pass.dispatch_workgroups(x, y, z);
            return Ok(());
        }
        let encoder = &mut self.encoder;
        let pass = self.pass.get_or_insert_with(|| {
            encoder
                .get_or_insert_with(|| {
                    dev.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("step"),
                        })
                })
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                })
                .forget_lifetime()
        });
        if self.pass_kernel != Some(d.kernel.id) {
            pass.set_pipeline(&d.kernel.pipeline);
            self.pass_kernel = Some(d.kernel.id);
        }
        pass.set_bind_group(0, bg, &offsets[..n_offsets]);
        pass.dispatch_workgroups(x, y, z);
        Ok(())
    }

    fn create_bind_group(
        &mut self,
        dev: &GpuDevice,
        d: &Dispatch<'_>,
        upload_bytes: u64,
    ) -> wgpu::BindGroup {
        self.bind_groups_created += 1;
        let mut entries = Vec::with_capacity(d.bindings.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.ring,
                offset: 0,
                size: wgpu::BufferSize::new(PARAMS_BYTES),
            }),
        });
        for (i, b) in d.bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: match b {
                    Bind::Buffer(buf) => buf.as_entire_binding(),
                    Bind::Upload(_) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &self.ring,
                        offset: 0,
                        size: wgpu::BufferSize::new(upload_bytes),
                    }),
                },
            });
        }
        dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &d.kernel.layout,
            entries: &entries,
        })
    }

    /// Drops the cached bind groups that bind `buf` (called when it is freed or replaced, so the
    /// cache does not keep it alive).
    pub fn forget(&mut self, buf: &wgpu::Buffer) {
        self.bind_groups
            .retain(|k, _| !k.buffers.iter().any(|b| b.as_ref() == Some(buf)));
    }

    /// Records a buffer-to-buffer copy (distinct buffers, byte offsets and size multiples of 4).
    /// It ends the shared compute pass: kernels should prefer the copy kernel.
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

    /// Copies `bytes` of `src` at `offset` into a readback buffer, submits, and starts mapping
    /// it without waiting; [`ReadBack`] redeems it.
    pub fn read_start(
        &mut self,
        dev: &GpuDevice,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<InFlight> {
        let spare = {
            let mut r = self.readbacks.lock().unwrap_or_else(|p| p.into_inner());
            let i = r.spare.iter().position(|b| b.size() >= bytes);
            i.map(|i| r.spare.swap_remove(i))
        };
        let buffer = match spare {
            Some(b) => b,
            None => dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pipelined readback"),
                size: bytes.next_power_of_two().max(256),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        self.copy(dev, src, offset, &buffer, 0, bytes);
        let submission = self
            .submit(dev)?
            .ok_or_else(|| Error::invalid_config("a read of zero bytes has nothing to submit"))?;
        let mapped = start_map(&buffer, bytes);
        Ok(InFlight {
            buffer,
            bytes,
            submission,
            mapped,
        })
    }

    /// Submits everything recorded; returns after the queue accepted it (not after it ran),
    /// with the submission's index (`None` when nothing was recorded).
    pub fn submit(&mut self, dev: &GpuDevice) -> Result<Option<wgpu::SubmissionIndex>> {
        self.end_pass();
        let Some(mut enc) = self.encoder.take() else {
            return Ok(None);
        };
        if !self.staged.is_empty() {
            dev.queue.write_buffer(&self.ring, 0, &self.staged);
            self.staged.clear();
        }
        if let Some(p) = self.profiler.as_mut() {
            p.resolve(&mut enc);
        }
        let t = web_time::Instant::now();
        if let Some(s) = self.open_since.take() {
            self.host.record_ns += t.duration_since(s).as_nanos() as u64;
        }
        let index = dev.queue.submit([enc.finish()]);
        self.open_dispatches = 0;
        self.host.submit_ns += t.elapsed().as_nanos() as u64;
        self.host.submits += 1;
        self.submits += 1;
        if let Some(p) = self.profiler.as_mut() {
            p.collect(dev)?;
        }
        dev.take_error()?;
        Ok(Some(index))
    }

    /// Profiler, when enabled.
    pub fn profiler(&mut self) -> Option<&mut Profiler> {
        self.profiler.as_mut()
    }
}

/// A submitted read, redeemed when polled: natively it waits on the device for its own
/// submission only (later ones keep the GPU busy meanwhile); in a browser it is woken by the
/// map callback. Dropped unredeemed, it just releases its buffer.
pub(crate) struct ReadBack<T> {
    dev: Arc<GpuDevice>,
    in_flight: Option<InFlight>,
    readbacks: Arc<Mutex<Readbacks>>,
    /// Turns the read bytes into the caller's values.
    convert: T,
}

impl<T> ReadBack<T> {
    pub fn new(
        dev: Arc<GpuDevice>,
        in_flight: InFlight,
        readbacks: Arc<Mutex<Readbacks>>,
        convert: T,
    ) -> Self {
        ReadBack {
            dev,
            in_flight: Some(in_flight),
            readbacks,
            convert,
        }
    }
}

impl<T: Fn(&[u8]) -> Vec<f32> + Unpin> Future for ReadBack<T> {
    type Output = Result<Vec<f32>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(r) = this.in_flight.as_ref() else {
            return Poll::Ready(Err(Error::invalid_config(
                "a read was polled after it finished",
            )));
        };
        let t = web_time::Instant::now();
        #[cfg(not(target_arch = "wasm32"))]
        if let Err(e) = wait_for(&this.dev, Some(r.submission.clone())) {
            this.in_flight = None;
            return Poll::Ready(Err(e));
        }
        let result = {
            let mut m = r.mapped.lock().unwrap_or_else(|p| p.into_inner());
            let res = m.result.take();
            if res.is_none() && cfg!(target_arch = "wasm32") {
                m.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            res
        };
        let Some(result) = result else {
            this.in_flight = None;
            return Poll::Ready(Err(gpu_err("reading a result", &"the GPU never answered")));
        };
        let Some(r) = this.in_flight.take() else {
            return Poll::Ready(Err(Error::invalid_config(
                "a read was polled after it finished",
            )));
        };
        let out = result
            .map_err(|e| gpu_err("mapping a result buffer", &e))
            .and_then(|()| copy_out(&r.buffer, r.bytes))
            .map(|bytes| (this.convert)(&bytes));
        let mut rb = this.readbacks.lock().unwrap_or_else(|p| p.into_inner());
        rb.wait_ns += t.elapsed().as_nanos() as u64;
        rb.reads += 1;
        if out.is_ok() {
            rb.recycle(r.buffer);
        }
        Poll::Ready(out.and_then(|v| this.dev.take_error().map(|()| v)))
    }
}

/// Maps the first `bytes` of `buf` for reading, waits for all submitted work, and returns them
/// (native only: the profiler's timestamps).
pub(crate) fn read_mapped(dev: &GpuDevice, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    let mapped = start_map(buf, bytes);
    wait_for(dev, None)?;
    let result = mapped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .result
        .take();
    match result {
        Some(Ok(())) => copy_out(buf, bytes),
        Some(Err(e)) => Err(gpu_err("mapping a result buffer", &e)),
        None => Err(gpu_err("reading a result", &"the GPU never answered")),
    }
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// Where a map callback leaves its result, and the task it wakes.
#[derive(Default)]
pub(crate) struct MapState {
    result: Option<MapResult>,
    waker: Option<Waker>,
}

type MapSignal = Arc<Mutex<MapState>>;

fn gpu_err(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        lowbit_core::ErrorCode::WebgpuNotSupported,
        format!("{what}: {e}"),
    )
}

/// Starts mapping the first `bytes` of `buf`; the callback records the result and wakes the
/// task that waits for it.
fn start_map(buf: &wgpu::Buffer, bytes: u64) -> MapSignal {
    let signal = MapSignal::default();
    let s = signal.clone();
    buf.slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
        let mut m = s.lock().unwrap_or_else(|p| p.into_inner());
        m.result = Some(r);
        if let Some(w) = m.waker.take() {
            w.wake();
        }
    });
    signal
}

/// Blocks until `submission` (the latest one when `None`) ran and its callbacks fired.
fn wait_for(dev: &GpuDevice, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
    dev.device
        .poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: None,
        })
        .map_err(|e| gpu_err("waiting for the GPU", &e))?;
    dev.take_error()
}

/// The first `bytes` of mapped `buf`, which is then unmapped.
fn copy_out(buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    let out = buf
        .slice(..bytes)
        .get_mapped_range()
        .map_err(|e| gpu_err("reading a result buffer", &e))?
        .to_vec();
    buf.unmap();
    Ok(out)
}
