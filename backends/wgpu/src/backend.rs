//! [`WgpuBackend`]: the op set of [`lowbit_core::ops`] as WGSL kernels recorded into one
//! command encoder (the fusion pass in `fusion.rs` maps groups of ops onto fused kernels; the
//! op families live in `ops/`); only [`Backend::read`] and [`Backend::flush`] submit.

use crate::buffers::{byte_range, check_len, decode, encode, State};
use crate::device::{GpuDevice, WgpuOptions};
use crate::pipelines::PipelineCache;
use crate::profiling::KernelTiming;
use crate::recorder::{Bind, ReadBack, Recorder};
use crate::tuning::Tuning;
use crate::weights::upload;
use lowbit_core::future::{ready, ReadFuture};
use lowbit_core::ops::Op;
use lowbit_core::{Backend, BackendInfo, BufferId, DType, Error, Result, WeightId, WeightMatrix};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use wgpu::util::DeviceExt;

/// Which kernel variants a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPaths {
    /// Matmul dequantizes and multiplies in f16 (`SHADER_F16`).
    pub f16: bool,
    /// Reductions use subgroup operations (`SUBGROUP`) instead of workgroup-memory trees.
    pub subgroups: bool,
}

/// An adapter's identity, features and kernel-relevant limits ([`WgpuBackend::adapter_details`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterDetails {
    /// Adapter name (`SwiftShader Device (Subzero)`, `NVIDIA H200`).
    pub name: String,
    /// Driver and version, where reported.
    pub driver: String,
    /// wgpu backend (`Vulkan`, `BrowserWebGpu`).
    pub backend: String,
    /// `DiscreteGpu`, `Cpu`, …
    pub device_type: String,
    /// A software adapter (a browser's fallback adapter, lavapipe).
    pub software: bool,
    /// The adapter's features, by wgpu's names (`SHADER_F16`, `SUBGROUP`, …).
    pub features: Vec<String>,
    /// Limits the kernels depend on, by WebGPU's names.
    pub limits: Vec<(&'static str, u64)>,
}

/// The WebGPU backend.
pub struct WgpuBackend {
    pub(crate) dev: Arc<GpuDevice>,
    pub(crate) tuning: Tuning,
    /// Bytes one storage binding may hold (weights are split into pieces below it).
    max_binding: u64,
    state: Mutex<State>,
}

impl WgpuBackend {
    /// Opens a device per `opts` (native: waits for [`WgpuBackend::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(opts: &WgpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// Opens a device per `opts`; in a browser, on the page's `navigator.gpu`.
    // In a browser the device is neither `Send` nor `Sync` (one thread); natively it is both
    // and the `Arc` is shared across threads.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn new_async(opts: &WgpuOptions) -> Result<Self> {
        let dev = Arc::new(GpuDevice::open_async(opts).await?);
        let mut tuning = Tuning::for_profile(&dev.limits, opts.workgroups.as_ref());
        tuning.wide_matvec = opts.wide_matvec;
        tuning.fused_norm = opts.fused_norm;
        tuning.int_prefill = opts.int_prefill;
        if let Some(shape) = opts.matvec_shape {
            tuning.set_matvec(&dev.limits, shape);
        }
        let device_max = dev
            .limits
            .max_storage_buffer_binding_size
            .min(dev.limits.max_buffer_size);
        let max_binding = opts
            .max_binding_bytes
            .map_or(device_max, |m| m.min(device_max));
        let dummy = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let state = State {
            buffers: HashMap::new(),
            next_buffer: 0,
            weights: HashMap::new(),
            next_weight: 0,
            weight_bytes: 0,
            pipelines: PipelineCache::default(),
            rec: Recorder::new(&dev),
            rope: Vec::new(),
            scratch: [None, None],
            internal: [None; 5],
            norm_hint: None,
            norm_ready: None,
            plans: HashMap::new(),
            dummy,
        };
        Ok(WgpuBackend {
            dev,
            tuning,
            max_binding,
            state: Mutex::new(state),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the adapter is and offers: names, its features (wgpu's flag names) and the limits
    /// the kernels depend on, for capability reports.
    pub fn adapter_details(&self) -> AdapterDetails {
        let l = &self.dev.limits;
        AdapterDetails {
            name: self.dev.info.name.clone(),
            driver: self.dev.driver(),
            backend: format!("{:?}", self.dev.info.backend),
            device_type: format!("{:?}", self.dev.info.device_type),
            software: self.dev.info.device_type == wgpu::DeviceType::Cpu,
            features: self
                .dev
                .adapter_features
                .iter_names()
                .map(|(n, _)| n.to_owned())
                .collect(),
            limits: vec![
                (
                    "maxStorageBufferBindingSize",
                    l.max_storage_buffer_binding_size,
                ),
                ("maxBufferSize", l.max_buffer_size),
                (
                    "maxComputeWorkgroupStorageSize",
                    u64::from(l.max_compute_workgroup_storage_size),
                ),
                (
                    "maxComputeInvocationsPerWorkgroup",
                    u64::from(l.max_compute_invocations_per_workgroup),
                ),
                (
                    "maxComputeWorkgroupSizeX",
                    u64::from(l.max_compute_workgroup_size_x),
                ),
                (
                    "maxComputeWorkgroupsPerDimension",
                    u64::from(l.max_compute_workgroups_per_dimension),
                ),
                (
                    "maxStorageBuffersPerShaderStage",
                    u64::from(l.max_storage_buffers_per_shader_stage),
                ),
                (
                    "minSubgroupSize",
                    u64::from(self.dev.info.subgroup_min_size),
                ),
                (
                    "maxSubgroupSize",
                    u64::from(self.dev.info.subgroup_max_size),
                ),
            ],
        }
    }

    /// The kernel variants in use.
    pub fn paths(&self) -> KernelPaths {
        KernelPaths {
            f16: self.dev.f16,
            subgroups: self.dev.subgroups,
        }
    }

    /// Whether prefill runs on cooperative matrices ([`WgpuOptions::coop_matrix`]).
    pub fn coop_matrix(&self) -> bool {
        self.dev.coop_matrix
    }

    /// Labels of the kernels compiled so far (e.g. `matvec[WEIGHT_KIND=0,BITS=3,...]`): tests use
    /// them to assert which variants ran.
    pub fn compiled_kernels(&self) -> Vec<String> {
        self.lock().pipelines.labels()
    }

    /// Submissions so far.
    pub fn submits(&self) -> u64 {
        self.lock().rec.submits
    }

    /// Submits the recorded work without waiting for it (tests time recording and submission
    /// apart from execution).
    pub fn submit(&self) -> Result<()> {
        self.lock().rec.submit(&self.dev).map(|_| ())
    }

    /// Bind groups created so far: steady decode steps reuse cached ones and add none.
    pub fn bind_groups_created(&self) -> u64 {
        self.lock().rec.bind_groups_created
    }

    /// Dispatches recorded so far (tests count a decode step's kernels).
    pub fn dispatches(&self) -> u64 {
        self.lock().rec.host.dispatches
    }

    /// Number of row pieces weight `w` was split into (1 unless it exceeds a binding).
    pub fn weight_pieces(&self, w: WeightId) -> Option<usize> {
        self.lock().weights.get(&w.0).map(|g| g.pieces.len())
    }

    /// GPU time per kernel since creation or the last [`Self::reset_timings`], longest first;
    /// `None` unless built with [`WgpuOptions::profiling`]. Profiling waits for every submission.
    pub fn kernel_timings(&self) -> Option<Vec<KernelTiming>> {
        self.lock().rec.profiler().map(|p| p.timings())
    }

    /// Host-side time around the GPU since the last reset, as timing rows named `host: …`
    /// (recording dispatches, submitting, waiting on read-backs).
    pub fn host_timings(&self) -> Vec<KernelTiming> {
        let (h, (wait_ns, reads)) = {
            let st = self.lock();
            let r = st.rec.readbacks.lock().unwrap_or_else(|p| p.into_inner());
            (st.rec.host, (r.wait_ns, r.reads))
        };
        [
            ("host: record dispatches", h.record_ns, h.dispatches),
            ("host: finish + submit", h.submit_ns, h.submits),
            ("host: wait for read-back", wait_ns, reads),
        ]
        .into_iter()
        .map(|(k, ns, n)| KernelTiming {
            kernel: k.into(),
            total_ns: ns,
            count: n,
        })
        .collect()
    }

    /// Clears the profile totals.
    pub fn reset_timings(&self) {
        let mut st = self.lock();
        st.rec.host = Default::default();
        {
            let mut r = st.rec.readbacks.lock().unwrap_or_else(|p| p.into_inner());
            (r.wait_ns, r.reads) = (0, 0);
        }
        if let Some(p) = st.rec.profiler() {
            p.reset();
        }
    }

    /// Reads `len` values of `buf` from `offset`: submits the recorded work and the copy into
    /// a readback buffer, and returns the future that redeems it.
    fn start_read(&self, buf: BufferId, offset: usize, len: usize) -> Result<ReadFuture> {
        let mut st = self.lock();
        let b = st.any_buf(buf)?;
        check_len("read", b, offset + len)?;
        if len == 0 {
            return Ok(ready(Ok(Vec::new())));
        }
        let dtype = b.dtype;
        let (start, bytes, skip) = byte_range(dtype, offset, len)?;
        let buffer = b.buffer.clone();
        let in_flight = st.rec.read_start(&self.dev, &buffer, start, bytes)?;
        let convert = move |raw: &[u8]| {
            let mut v = decode(dtype, &raw[skip..]);
            v.truncate(len);
            v
        };
        let readbacks = st.rec.readbacks.clone();
        Ok(Box::pin(ReadBack::new(
            self.dev.clone(),
            in_flight,
            readbacks,
            convert,
        )))
    }
}

impl Backend for WgpuBackend {
    fn info(&self) -> BackendInfo {
        let mut features = Vec::new();
        if self.dev.f16 {
            features.push("shader-f16".to_string());
        }
        if self.dev.subgroups {
            features.push("subgroups".to_string());
        }
        if self.dev.timestamps {
            features.push("timestamp-query".to_string());
        }
        if self.dev.coop_matrix {
            features.push("cooperative-matrix".to_string());
        }
        BackendInfo {
            name: "webgpu".into(),
            device: self.dev.describe(),
            driver: self.dev.driver(),
            features,
            threads: 0,
        }
    }

    fn upload_weight(&self, weight: WeightMatrix) -> Result<WeightId> {
        if let WeightMatrix::Quantized(q) = &weight {
            if let Some(rot) = &q.rotation {
                self.check_rotation(rot, q.cols)?;
            }
        }
        let w = upload(&self.dev, weight, self.max_binding)?;
        let mut st = self.lock();
        let id = st.next_weight;
        st.next_weight += 1;
        st.weight_bytes += w.bytes;
        st.weights.insert(id, w);
        Ok(WeightId(id))
    }

    fn upload(&self, data: &[f32]) -> Result<BufferId> {
        self.create_buffer(
            DType::F32,
            data.len(),
            Some(bytemuck::cast_slice(data)),
            false,
        )
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<BufferId> {
        if let DType::QBlock { bits, .. } = dtype {
            return Err(Error::unsupported(format!(
                "a {bits}-bit KV cache (kv_cache.bits) runs on the CPU backend only so far; \
                 use kv_cache.bits = 16 with the WebGPU backend"
            )));
        }
        self.create_buffer(dtype, len, None, false)
    }

    fn alloc_scratch(&self, len: usize) -> Result<BufferId> {
        self.create_buffer(DType::F32, len, None, true)
    }

    fn free(&self, buf: BufferId) {
        // Recorded work keeps the buffer alive on the device until it ran.
        let mut st = self.lock();
        if let Some(b) = st.buffers.remove(&buf.0) {
            st.rec.forget(&b.buffer);
        }
    }

    fn write(&self, buf: BufferId, offset: usize, data: &[f32]) -> Result<()> {
        let mut st = self.lock();
        st.norm_ready = None;
        let b = st.any_buf(buf)?;
        check_len("write", b, offset + data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let (dtype, dst) = (b.dtype, b.buffer.clone());
        if dtype == DType::F32 {
            // Through the upload ring and the copy kernel, so the write lands in program order.
            return self.copy_values(
                &mut st,
                &dst,
                offset,
                Bind::Upload(bytemuck::cast_slice(data)),
                0,
                data.len(),
                None,
            );
        }
        // Other types: the converted bytes through a transfer copy, in program order too.
        let (start, bytes, skip) = byte_range(dtype, offset, data.len())?;
        let encoded = encode(dtype, data);
        if skip != 0 || encoded.len() as u64 != bytes {
            return Err(Error::invalid_config(format!(
                "writes to {} buffers need offsets and lengths in whole 4-byte words",
                dtype.name()
            )));
        }
        let src = self.dev.scoped("staging a write", || {
            self.dev
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("typed write"),
                    contents: &encoded,
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        st.rec.copy(&self.dev, &src, 0, &dst, start, bytes);
        Ok(())
    }

    fn read(&self, buf: BufferId, offset: usize, len: usize) -> ReadFuture {
        self.start_read(buf, offset, len)
            .unwrap_or_else(|e| ready(Err(e)))
    }

    fn run(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            if let Op::KvWrite { kv, .. } | Op::Attention { kv, .. } = op {
                if kv.ring.is_some() {
                    return Err(crate::ops::not_yet(
                        "a sliding-window KV cache (kv_cache.sliding_window)",
                    ));
                }
            }
        }
        self.run_planned(ops)
    }

    fn queues_work(&self) -> bool {
        true
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.lock();
        st.rec.submit(&self.dev)?;
        self.dev
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| {
                Error::new(
                    lowbit_core::ErrorCode::WebgpuNotSupported,
                    format!("waiting for the GPU: {e}"),
                )
            })?;
        self.dev.take_error()
    }

    fn weight_bytes(&self) -> usize {
        self.lock().weight_bytes
    }

    fn kernel_timings(&self) -> Vec<lowbit_core::KernelTiming> {
        WgpuBackend::kernel_timings(self).unwrap_or_default()
    }

    fn host_timings(&self) -> Vec<lowbit_core::KernelTiming> {
        WgpuBackend::host_timings(self)
    }

    fn reset_kernel_timings(&self) {
        self.reset_timings();
    }

    fn save_compiled(&self) -> Result<Option<bool>> {
        let Some(cache) = &self.dev.pipeline_cache else {
            return Ok(None);
        };
        let mut st = self.lock();
        if st.pipelines.unsaved > 0 {
            cache.save()?;
            st.pipelines.unsaved = 0;
        }
        Ok(Some(cache.warm))
    }
}
