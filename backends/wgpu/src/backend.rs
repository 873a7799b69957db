//! [`WgpuBackend`]: the [`Backend`] operations as WGSL kernels recorded into one command
//! encoder; only [`Backend::read`] and [`Backend::flush`] submit.

use crate::device::{GpuDevice, WgpuOptions, COOP_TILE_K, COOP_TILE_R, COOP_TILE_T};
use crate::pipelines::{PipelineCache, Slot};
use crate::profiling::KernelTiming;
use crate::recorder::{wait_read, Bind, Dispatch, Recorder};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::{fold, Tuning};
use crate::weights::{upload, GpuWeight, WeightKind};
use lowbit_core::backend::{AttentionParams, PendingRead, QkvParams, RmsNorm, RopeStyle};
use lowbit_core::quant::Scheme;
use lowbit_core::{Backend, BackendInfo, BufferId, Error, Result, WeightId, WeightMatrix};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use wgpu::util::DeviceExt;

/// Which kernel variants a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPaths {
    /// Matmul dequantizes and multiplies in f16 (`SHADER_F16`).
    pub f16: bool,
    /// Reductions use subgroup operations (`SUBGROUP`) instead of workgroup-memory trees.
    pub subgroups: bool,
}

/// Largest head dimension the attention kernels hold in registers.
const MAX_HEAD_DIM: usize = 256;

struct Buf {
    buffer: wgpu::Buffer,
    len: usize,
}

/// (cos, sin) pairs of positions `0..positions` for one (theta, head_dim).
struct RopeTable {
    theta_bits: u32,
    head_dim: usize,
    positions: usize,
    buffer: wgpu::Buffer,
}

/// Positions of the first RoPE table; it doubles when a step needs more.
const ROPE_MIN_POSITIONS: usize = 1024;

struct State {
    buffers: HashMap<u32, Buf>,
    next_buffer: u32,
    weights: HashMap<u32, GpuWeight>,
    next_weight: u32,
    weight_bytes: usize,
    pipelines: PipelineCache,
    rec: Recorder,
    /// RoPE tables per (theta, head_dim), kept across steps.
    rope: Vec<RopeTable>,
    /// Internal scratch buffers (see `Scratch`), grown as needed.
    scratch: [Option<wgpu::Buffer>; 2],
    /// Bound where a kernel's binding is unused (dense weights have no group parameters).
    dummy: wgpu::Buffer,
    /// The RMSNorm announced by `Backend::expect_norm`, for the next residual add into its `x`.
    norm_hint: Option<NormHint>,
    /// The input of that RMSNorm as a residual add's epilogue prepared it
    /// (`Epilogue::AddNorm`), valid while no other dispatch or write has been recorded since.
    norm_ready: Option<NormReady>,
    /// Where `Epilogue::AddNorm` writes (8-bit words with their scales, then partial sums of
    /// squares), grown as needed.
    norm_words: Option<BufferId>,
}

/// A norm announced by `Backend::expect_norm`.
#[derive(Clone, Copy)]
struct NormHint {
    x: BufferId,
    norm: RmsNorm,
    w: WeightId,
}

/// An RMSNorm input prepared by a residual add (`Epilogue::AddNorm`): g · x as 8-bit words
/// with their own scales in the code order of the matvec of `w`, then `parts` partial sums of
/// x² (`Input::Q8WordsRms`).
#[derive(Clone, Copy)]
struct NormReady {
    x: BufferId,
    norm: RmsNorm,
    w: WeightId,
    words: BufferId,
    parts: u32,
    /// Dispatches recorded when it was made: any later one (or a write) may change `x`.
    dispatches: u64,
}

/// Internal scratch buffers, one of each kind, kept across steps.
#[derive(Clone, Copy)]
enum Scratch {
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

impl State {
    fn buf(&self, id: BufferId) -> Result<&Buf> {
        self.buffers
            .get(&id.0)
            .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", id.0)))
    }
}

/// Where an embedding lookup takes its token ids.
#[derive(Clone, Copy)]
enum EmbedIds<'a> {
    Host(&'a [u32]),
    /// `n` f32 ids from `ids[offset ..]`.
    Device {
        ids: BufferId,
        offset: usize,
        n: usize,
    },
}

/// Copies from this size on use the transfer path instead of the copy kernel.
const LARGE_COPY_BYTES: u64 = 1 << 20;

/// Workgroup size of the argmax kernel (one workgroup scans the whole row).
const ARGMAX_WG: u32 = 256;
/// Values per workgroup of the first argmax pass (four per lane).
const ARGMAX_SPAN: usize = 4 * ARGMAX_WG as usize;

/// The WebGPU backend.
pub struct WgpuBackend {
    dev: GpuDevice,
    tuning: Tuning,
    /// Bytes one storage binding may hold (weights are split into pieces below it).
    max_binding: u64,
    state: Mutex<State>,
}

/// The order in which a wide matvec unpacks `bits`-bit codes, which 8-bit activation blocks
/// must follow (`ORDER_*` in q8.wgsl: 2- and 3-bit stride-4, 4-bit even/odd, 8-bit natural).
fn code_order(bits: u8) -> u32 {
    match bits {
        2 | 3 => 2,
        4 => 1,
        _ => 0,
    }
}

/// What a matmul's `x` holds.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// f32 activations.
    F32,
    /// f32 activations to RMS-normalise on the fly (decode matvec only).
    Norm(&'a RmsNorm),
    /// 8-bit activation blocks in the weight format's order (wide matvec only, `q8.wgsl`).
    Q8,
    /// The same with a scale per word of four codes (`q8.wgsl`), as `Epilogue::Swiglu` writes.
    Q8Words,
    /// Words of g · x as `Epilogue::AddNorm` writes them, then its `parts` partial sums of x²:
    /// the matvec scales its sums by 1 / sqrt(Σx² / cols + eps), an RMSNorm of x with weights g.
    Q8WordsRms { parts: u32, eps: f32 },
}

/// What a matmul does with its sums.
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    /// `out = sums`.
    Store,
    /// `out += sums` (a residual add).
    Add,
    /// The q|k|v rows of one decode token (one piece; see `rope_epilogue`): RoPE(q) to `out`,
    /// RoPE(k) and v to row `p.pos0` of the caches.
    Rope {
        k_cache: BufferId,
        v_cache: BufferId,
        p: &'a QkvParams,
    },
    /// The gate|up rows of one decode token (one piece, gate rows then up rows; see
    /// `swiglu_epilogue`): silu(gate) · up to `out` as 8-bit words with their own scales
    /// (`Input::Q8Words`) in code order `order`.
    Swiglu { order: u32 },
    /// `out += sums` of one decode token (wide matvec, one piece), preparing the next RMSNorm
    /// of `out` as well: g · out (g: `norm`'s weights) to `words` as 8-bit words with their own
    /// scales in code order `order`, then one partial sum of out² per workgroup
    /// (`Input::Q8WordsRms`) for the matvec of `next`.
    AddNorm {
        norm: RmsNorm,
        words: BufferId,
        order: u32,
        next: WeightId,
    },
}

/// How an RMSNorm's output reaches the matmul after it (`WgpuBackend::norm_feed`).
#[derive(Clone, Copy)]
enum NormFeed {
    /// Fused into the decode matvec, which normalises as it loads.
    Fused,
    /// The norm writes 8-bit activation blocks in this code order for the wide matvec.
    Q8(u32),
    /// The norm writes f32 rows.
    F32,
}

/// Values (f32 slots) a row of `len` activations takes: `len`, or as 8-bit activation blocks
/// (12 words per 32 values, see q8.wgsl).
fn q8_len(len: usize, q8: bool) -> usize {
    if q8 {
        len / 32 * 12
    } else {
        len
    }
}

/// Values (f32 slots) a row of `len` activations takes as 8-bit words with their own scales
/// (16 words per 32 values, see q8.wgsl).
fn q8_words_len(len: usize) -> usize {
    len / 32 * 16
}

fn check_len(what: &str, b: &Buf, need: usize) -> Result<()> {
    if b.len < need {
        return Err(Error::invalid_config(format!(
            "{what} needs {need} values, the buffer holds {}",
            b.len
        )));
    }
    Ok(())
}

/// The uploaded weight `id`, or an error naming it.
fn weight(weights: &HashMap<u32, GpuWeight>, id: WeightId) -> Result<&GpuWeight> {
    weights
        .get(&id.0)
        .ok_or_else(|| Error::invalid_config(format!("unknown weight {}", id.0)))
}

fn distinct(what: &str, a: BufferId, b: BufferId) -> Result<()> {
    if a == b {
        return Err(Error::invalid_config(format!(
            "{what}: input and output must be different buffers"
        )));
    }
    Ok(())
}

impl WgpuBackend {
    /// Opens a device per `opts`.
    pub fn new(opts: &WgpuOptions) -> Result<Self> {
        let dev = GpuDevice::open(opts)?;
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
            norm_hint: None,
            norm_ready: None,
            norm_words: None,
            dummy,
        };
        Ok(WgpuBackend {
            dev,
            tuning,
            max_binding,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let h = self.lock().rec.host;
        [
            ("host: record dispatches", h.record_ns, h.dispatches),
            ("host: finish + submit", h.submit_ns, h.submits),
            ("host: wait for read-back", h.wait_ns, h.reads),
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
        if let Some(p) = st.rec.profiler() {
            p.reset();
        }
    }

    /// Constants every kernel shares.
    fn base_defines(&self, wg: u32) -> Vec<(&'static str, Define)> {
        vec![
            ("WORKGROUP_SIZE", Define::U32(wg)),
            ("USE_SUBGROUPS", Define::Bool(self.dev.subgroups)),
        ]
    }

    fn weight_defines(kind: WeightKind, f16: bool) -> Vec<(&'static str, Define)> {
        let (k, bits, group, asym) = match kind {
            WeightKind::Quant(s) => (0, s.bits, s.group_size, s.scheme == Scheme::Asymmetric),
            WeightKind::F32 => (1, 8, 32, false),
            WeightKind::F16 => (2, 8, 32, false),
        };
        vec![
            ("WEIGHT_KIND", Define::U32(k)),
            ("BITS", Define::U32(u32::from(bits))),
            ("GROUP_SIZE", Define::U32(group as u32)),
            ("ASYMMETRIC", Define::Bool(asym)),
            ("USE_F16", Define::Bool(f16)),
        ]
    }

    /// The scratch buffer of this kind, at least `bytes` long (grown, never shrunk).
    fn scratch(&self, st: &mut State, kind: Scratch, bytes: u64) -> Result<wgpu::Buffer> {
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

    /// The RoPE table of (theta, head_dim) covering positions `0..need`, grown (doubling) when
    /// too short.
    fn rope_table(
        &self,
        st: &mut State,
        theta: f32,
        head_dim: usize,
        need: usize,
    ) -> Result<wgpu::Buffer> {
        let i = st
            .rope
            .iter()
            .position(|r| r.theta_bits == theta.to_bits() && r.head_dim == head_dim);
        if let Some(r) = i.map(|i| &st.rope[i]).filter(|r| r.positions >= need) {
            return Ok(r.buffer.clone());
        }
        let positions = need.next_power_of_two().max(ROPE_MIN_POSITIONS);
        let half = head_dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        let mut table = Vec::with_capacity(positions * half * 2);
        for pos in 0..positions {
            for f in &freqs {
                let (s, c) = (pos as f64 * f).sin_cos();
                table.push(c as f32);
                table.push(s as f32);
            }
        }
        self.dev
            .check_buffer_size(table.len() as u64 * 4, "the RoPE table")?;
        let buffer = self.dev.scoped("allocating the RoPE table", || {
            self.dev
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("rope table"),
                    contents: bytemuck::cast_slice(&table),
                    usage: wgpu::BufferUsages::STORAGE,
                })
        })?;
        let r = RopeTable {
            theta_bits: theta.to_bits(),
            head_dim,
            positions,
            buffer: buffer.clone(),
        };
        match i {
            Some(i) => {
                let old = std::mem::replace(&mut st.rope[i], r);
                st.rec.forget(&old.buffer);
            }
            None => st.rope.push(r),
        }
        Ok(buffer)
    }

    fn max_groups(&self) -> u32 {
        self.dev.limits.max_compute_workgroups_per_dimension
    }

    /// Creates a storage buffer of `len` f32, zeroed or holding `data`.
    fn create_buffer(&self, len: usize, data: Option<&[f32]>) -> Result<BufferId> {
        let bytes = (len.max(4) as u64 * 4).next_multiple_of(16);
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
                padded.resize(bytes as usize / 4, 0.0);
                self.dev
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: bytemuck::cast_slice(&padded),
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
        st.buffers.insert(id, Buf { buffer, len });
        Ok(BufferId(id))
    }

    /// RMSNorm of `rows` rows; with `q8` (`Some(order)`, see [`code_order`]; decode rows of a multiple of 32
    /// values) `out` receives 8-bit activation blocks for a wide matvec (`q8.wgsl`) instead.
    #[allow(clippy::too_many_arguments)]
    fn norm_into(
        &self,
        x: BufferId,
        weight: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
        q8: Option<u32>,
    ) -> Result<()> {
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        distinct("rms_norm weight", weight, out)?;
        let in_place = x == out;
        if q8.is_some() && (in_place || !dim.is_multiple_of(32) || self.tuning.norm_wg < 8) {
            return Err(Error::invalid_config(
                "8-bit norm output needs a distinct output, rows of a multiple of 32 and 8 lanes",
            ));
        }
        let wg = self.tuning.norm_wg;
        let mut st = self.lock();
        let (xb, wb, ob) = (st.buf(x)?, st.buf(weight)?, st.buf(out)?);
        check_len("rms_norm input", xb, rows * dim)?;
        check_len("rms_norm weight", wb, dim)?;
        check_len("rms_norm output", ob, rows * q8_len(dim, q8.is_some()))?;
        let (xb, wb, ob) = (xb.buffer.clone(), wb.buffer.clone(), ob.buffer.clone());
        let mut defines = self.base_defines(wg);
        defines.extend([
            ("IN_PLACE", Define::Bool(in_place)),
            ("Q8_OUT", Define::Bool(q8.is_some())),
            ("ORDER", Define::U32(q8.unwrap_or(0))),
        ]);
        let key = KernelKey {
            file: ShaderFile::Norm,
            entry: "rms_norm",
            defines,
        };
        use Slot::*;
        let all = [Bind::Buffer(&wb), Bind::Buffer(&xb), Bind::Buffer(&ob)];
        let (slots, bindings): (&[Slot], &[Bind]) = if in_place {
            (&[Uniform, Read, ReadWrite], &all[..2])
        } else {
            (&[Uniform, Read, Read, ReadWrite], &all)
        };
        let kernel = st.pipelines.get(&self.dev, &key, slots)?;
        // One workgroup per row, or with 8-bit output (ceil(8 lanes × blocks / lanes), rows).
        let groups = if q8.is_some() {
            [
                ((dim / 32) * 8).div_ceil(wg as usize) as u32,
                rows as u32,
                1,
            ]
        } else {
            let (gx, gy) = fold(rows as u32, self.max_groups());
            [gx, gy, 1]
        };
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[dim as u32, eps.to_bits()],
                bindings,
                groups,
            },
        )
    }

    /// SwiGLU; with `q8` (`Some(order)`, see [`code_order`]; widths of a multiple of 32) `out` receives 8-bit
    /// activation blocks for a wide matvec (`q8.wgsl`) instead.
    fn swiglu_into(
        &self,
        gate_up: BufferId,
        out: BufferId,
        n: usize,
        width: usize,
        q8: Option<u32>,
    ) -> Result<()> {
        let len = n * width;
        if len == 0 {
            return Ok(());
        }
        distinct("swiglu", gate_up, out)?;
        if q8.is_some() && (!width.is_multiple_of(32) || self.tuning.elementwise_wg < 8) {
            return Err(Error::invalid_config(
                "8-bit swiglu output needs a width of a multiple of 32 and 8 lanes",
            ));
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len("swiglu input", st.buf(gate_up)?, 2 * len)?;
        check_len(
            "swiglu output",
            st.buf(out)?,
            n * q8_len(width, q8.is_some()),
        )?;
        let (ob, gb) = (st.buf(out)?.buffer.clone(), st.buf(gate_up)?.buffer.clone());
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry: "swiglu",
            defines: {
                let mut d = self.elementwise_defines(wg, "OP_SWIGLU");
                d.extend([
                    ("Q8_OUT", Define::Bool(q8.is_some())),
                    ("ORDER", Define::U32(q8.unwrap_or(0))),
                ]);
                d
            },
        };
        use Slot::*;
        let kernel = st
            .pipelines
            .get(&self.dev, &key, &[Uniform, ReadWrite, Read])?;
        // One invocation per value, or eight per 32-value block with 8-bit output.
        let items = if q8.is_some() { len / 4 } else { len };
        let (gx, gy) = fold(items.div_ceil(wg as usize) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[len as u32, 0, 0, width as u32],
                bindings: &[Bind::Buffer(&ob), Bind::Buffer(&gb)],
                groups: [gx, gy, 1],
            },
        )
    }

    /// Whether `n` activation rows times `gw` take the wide matvec.
    fn wide_matvec(&self, gw: &GpuWeight, n: usize) -> bool {
        let t = self.tuning;
        // Rows of at least 32 values per lane of 2-, 3-, 4- or 8-bit codes (whole blocks per
        // lane, 8-, 12- or 16-byte code reads).
        let vec_codes = matches!(gw.kind, WeightKind::Quant(s) if matches!(s.bits, 2 | 3 | 4 | 8));
        n == 1 && t.wide_matvec && vec_codes && gw.cols >= 32 * t.matvec_wg as usize
    }

    /// Attention (see `Backend::attention`); with `q8` (decode, head dimension a multiple of
    /// 32) the output as 8-bit activation blocks in that code order.
    fn attention_into(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        out: BufferId,
        p: &AttentionParams,
        q8: Option<u32>,
    ) -> Result<()> {
        if p.n_tokens == 0 {
            return Ok(());
        }
        if p.n_heads == 0 || p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
            return Err(Error::invalid_config(format!(
                "attention needs query heads ({}) to be a multiple of kv heads ({})",
                p.n_heads, p.n_kv_heads
            )));
        }
        if p.head_dim == 0 || p.head_dim > MAX_HEAD_DIM {
            return Err(Error::unsupported(format!(
                "the WebGPU attention kernels support head dimensions 1..={MAX_HEAD_DIM}, got {}",
                p.head_dim
            )));
        }
        for b in [q, k_cache, v_cache] {
            distinct("attention", b, out)?;
        }
        let t = self.tuning;
        let hd = p.head_dim;
        let q_len = p.n_tokens * p.n_heads * hd;
        let kv_len = (p.pos0 + p.n_tokens) * p.n_kv_heads * hd;
        let decode = p.n_tokens == 1;
        let wg = t.attn_wg_for(&self.dev.limits);
        if q8.is_some() && (!decode || !hd.is_multiple_of(32) || wg < 8) {
            return Err(Error::invalid_config(
                "8-bit attention output needs one decode row, whole 32-value blocks per head and 8+ lanes",
            ));
        }
        let n_splits = t.n_splits(p.pos0 + p.n_tokens);
        let part_len = if decode {
            p.n_tokens * p.n_heads * n_splits as usize * (hd + 2)
        } else {
            4
        };
        let mut st = self.lock();
        check_len("attention query", st.buf(q)?, q_len)?;
        check_len("attention keys", st.buf(k_cache)?, kv_len)?;
        check_len("attention values", st.buf(v_cache)?, kv_len)?;
        check_len(
            "attention output",
            st.buf(out)?,
            q8_len(q_len, q8.is_some()),
        )?;
        let part = self.scratch(&mut st, Scratch::AttentionPartials, part_len as u64 * 4)?;
        let bufs = [q, k_cache, v_cache, out].map(|id| st.buf(id).map(|b| b.buffer.clone()));
        let [qb, kb, vb, ob] = bufs;
        let (qb, kb, vb, ob) = (qb?, kb?, vb?, ob?);
        let mut defines = self.base_defines(wg);
        // Decode scores: lanes per key, a power of two up to an eighth of the head's vectors.
        let key_lanes = (hd / 32).max(1);
        defines.extend([
            ("HEAD_DIM", Define::U32(hd as u32)),
            ("KEY_LANES", Define::U32(1 << key_lanes.ilog2())),
            ("VEC4", Define::Bool(hd.is_multiple_of(4))),
            ("SPLIT_LEN", Define::U32(t.split_len)),
            ("Q8_OUT", Define::Bool(q8.is_some())),
            ("ORDER", Define::U32(q8.unwrap_or(0))),
        ]);
        let (q_rows, k_tile) = t.prefill_tiles(hd);
        use Slot::*;
        let slots = [Uniform, Read, Read, Read, ReadWrite, ReadWrite];
        let params = [
            p.n_tokens as u32,
            p.pos0 as u32,
            p.n_heads as u32,
            p.n_kv_heads as u32,
            p.scale.to_bits(),
            n_splits,
        ];
        let bindings = [&qb, &kb, &vb, &ob, &part].map(Bind::Buffer);
        let key = |entry| {
            let mut defines = defines.clone();
            let prefill = entry == "attn_prefill";
            defines.push(("PREFILL", Define::Bool(prefill)));
            if prefill {
                defines.push(("Q_ROWS", Define::U32(q_rows)));
                defines.push(("K_TILE", Define::U32(k_tile)));
            }
            KernelKey {
                file: ShaderFile::Attention,
                entry,
                defines,
            }
        };
        let passes = if decode {
            let split = (
                "attn_split",
                [n_splits, p.n_heads as u32, p.n_tokens as u32],
            );
            let merge = ("attn_merge", [p.n_heads as u32, p.n_tokens as u32, 1]);
            // A single split writes the final output itself.
            if n_splits == 1 {
                vec![split]
            } else {
                vec![split, merge]
            }
        } else {
            let q_groups = p.n_tokens.div_ceil(q_rows as usize) as u32;
            vec![("attn_prefill", [q_groups, p.n_heads as u32, 1])]
        };
        for (entry, groups) in passes {
            let kernel = st.pipelines.get(&self.dev, &key(entry), &slots)?;
            st.rec.dispatch(
                &self.dev,
                &Dispatch {
                    kernel: &kernel,
                    params: &params,
                    bindings: &bindings,
                    groups,
                },
            )?;
        }
        Ok(())
    }

    /// The code order in which `n` rows of `cols` activations made by a producer of
    /// `producer_lanes` lanes may reach `w` as 8-bit blocks (the wide matvec; eight lanes per
    /// block), if they may.
    fn q8_input(
        &self,
        w: WeightId,
        n: usize,
        cols: usize,
        producer_lanes: u32,
    ) -> Result<Option<u32>> {
        let st = self.lock();
        let gw = weight(&st.weights, w)?;
        let (WeightKind::Quant(spec), true) = (gw.kind, self.wide_matvec(gw, n)) else {
            return Ok(None);
        };
        Ok((gw.cols == cols && producer_lanes >= 8).then_some(code_order(spec.bits)))
    }

    /// How an RMSNorm of `dim` values over `n` rows feeds the matmul of `w`: as 8-bit blocks
    /// for a wide matvec, fused into a narrow decode matvec where that pays
    /// (`Tuning::fuse_norm_into_narrow`), else as f32 rows.
    fn norm_feed(&self, w: WeightId, n: usize, dim: usize) -> Result<NormFeed> {
        let t = self.tuning;
        if let Some(order) = self.q8_input(w, n, dim, t.norm_wg)? {
            return Ok(NormFeed::Q8(order));
        }
        let st = self.lock();
        let gw = weight(&st.weights, w)?;
        let fuse = t.fused_norm
            && n == 1
            && !self.wide_matvec(gw, n)
            && gw.cols == dim
            && dim.is_multiple_of(8)
            && t.fuse_norm_into_narrow(&self.dev.limits, gw.rows, gw.cols);
        Ok(if fuse { NormFeed::Fused } else { NormFeed::F32 })
    }

    /// RMSNorm of `x` (through `scratch` unless fused) into the matmul of `w`, whose sums go
    /// to `out` as `epilogue` says.
    #[allow(clippy::too_many_arguments)]
    fn norm_matmul_into(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        if let Some((words, input)) = self.prepared_norm(x, norm, w, n)? {
            return self.matmul_into(w, words, out, n, epilogue, input);
        }
        let (dim, eps) = (norm.dim, norm.eps);
        match self.norm_feed(w, n, dim)? {
            NormFeed::Fused => self.matmul_into(w, x, out, n, epilogue, Input::Norm(norm)),
            NormFeed::Q8(order) => {
                self.norm_into(x, norm.weight, scratch, n, dim, eps, Some(order))?;
                self.matmul_into(w, scratch, out, n, epilogue, Input::Q8)
            }
            NormFeed::F32 => {
                self.norm_into(x, norm.weight, scratch, n, dim, eps, None)?;
                self.matmul_into(w, scratch, out, n, epilogue, Input::F32)
            }
        }
    }

    /// `x · Wᵀ` into `out` as `epilogue` says; `input` says what `x` holds.
    fn matmul_into(
        &self,
        w: WeightId,
        x: BufferId,
        out: BufferId,
        n: usize,
        epilogue: Epilogue<'_>,
        input: Input<'_>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (norm, xq8, words) = match input {
            Input::F32 => (None, false, false),
            Input::Norm(nm) => (Some(nm), false, false),
            Input::Q8 => (None, true, false),
            Input::Q8Words | Input::Q8WordsRms { .. } => (None, true, true),
        };
        let rms_in = match input {
            Input::Q8WordsRms { parts, eps } => Some((parts, eps)),
            _ => None,
        };
        if let Some(nm) = norm {
            distinct("rms_norm_matmul", nm.weight, out)?;
        }
        let t = self.tuning;
        let mut st = self.lock();
        let rope = match epilogue {
            Epilogue::Rope {
                k_cache,
                v_cache,
                p,
            } => {
                self.check_rope_epilogue(&st, w, n, p)?;
                for (a, b) in [(x, out), (x, k_cache), (x, v_cache)] {
                    distinct("q|k|v projection with RoPE", a, b)?;
                }
                for (a, b) in [(out, k_cache), (out, v_cache), (k_cache, v_cache)] {
                    distinct("q|k|v projection with RoPE", a, b)?;
                }
                check_len("RoPE q output", st.buf(out)?, p.q_dim())?;
                for c in [k_cache, v_cache] {
                    p.check_cache(st.buf(c)?.len)?;
                }
                let table = self.rope_table(&mut st, p.theta, p.head_dim, p.pos0 + 1)?;
                let (k, v) = (
                    st.buf(k_cache)?.buffer.clone(),
                    st.buf(v_cache)?.buffer.clone(),
                );
                Some((table, k, v, p))
            }
            _ => None,
        };
        let swiglu = match epilogue {
            Epilogue::Swiglu { order } => {
                if !self.swiglu_epilogue(&st, w, n)? {
                    return Err(Error::invalid_config(
                        "the SwiGLU epilogue needs one decode token into the wide matvec of a one-piece gate|up matrix",
                    ));
                }
                distinct("gate|up projection with SwiGLU", x, out)?;
                Some(order)
            }
            _ => None,
        };
        let norm_out = match epilogue {
            Epilogue::AddNorm {
                norm,
                words,
                order,
                next,
            } => {
                distinct("residual add with the next norm's input", x, words)?;
                distinct("residual add with the next norm's input", out, words)?;
                distinct("residual add with the next norm's input", norm.weight, out)?;
                Some((norm, words, order, next))
            }
            _ => None,
        };
        let accumulate = matches!(epilogue, Epilogue::Add | Epilogue::AddNorm { .. });
        let State {
            buffers,
            weights,
            pipelines,
            rec,
            dummy,
            ..
        } = &mut *st;
        let gw = weight(weights, w)?;
        let get = |id: BufferId| {
            buffers
                .get(&id.0)
                .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", id.0)))
        };
        let (xb, ob) = (get(x)?, get(out)?);
        let in_len = if words {
            q8_words_len(gw.cols) + rms_in.map_or(0, |(parts, _)| parts as usize)
        } else {
            q8_len(gw.cols, xq8)
        };
        check_len("matmul input", xb, n * in_len)?;
        if swiglu.is_some() {
            check_len("SwiGLU output", ob, q8_words_len(gw.rows / 2))?;
        } else if rope.is_none() {
            check_len("matmul output", ob, n * gw.rows)?;
        }
        let tiled = n > 1;
        let wide = self.wide_matvec(gw, n);
        if xq8 && (!wide || norm.is_some()) {
            return Err(Error::invalid_config(
                "8-bit activations feed only the wide decode matvec, without a fused norm",
            ));
        }
        if wide && norm.is_some() {
            return Err(Error::invalid_config(
                "a fused RMSNorm feeds only the narrow decode matvec (the wide one takes 8-bit blocks)",
            ));
        }
        let (entry, (wg, unroll), rows_per_wg) = if tiled {
            ("matmul_tiled", (256, 1), t.matvec_rows)
        } else if wide {
            let shape = t.wide_shape(&self.dev.limits, gw.cols, gw.kind);
            // The SwiGLU epilogue: a word's four gate and four up rows per workgroup; the
            // next norm's input: whole words (4 or 8 rows).
            let rows = if swiglu.is_some() {
                8
            } else if norm_out.is_some() {
                if t.matvec_rows >= 8 {
                    8
                } else {
                    4
                }
            } else {
                t.matvec_rows
            };
            ("matvec", shape, rows)
        } else {
            let (lanes, rows) = t.narrow_shape(&self.dev.limits);
            ("matvec", (lanes, 1), rows)
        };
        let norm_w = match norm {
            Some(nm) if !tiled && nm.dim == gw.cols => {
                let b = get(nm.weight)?;
                check_len("rms_norm weight", b, nm.dim)?;
                Some((b.buffer.clone(), nm.eps))
            }
            Some(_) => {
                return Err(Error::invalid_config(
                    "a fused RMSNorm needs a decode matvec and a norm as long as the rows",
                ))
            }
            None => None,
        };
        let norm_out = match norm_out {
            Some((nm, words, order, next)) => {
                if !wide || gw.pieces.len() != 1 || gw.rows != nm.dim || !nm.dim.is_multiple_of(32)
                {
                    return Err(Error::invalid_config(
                        "a residual add preparing the next norm needs one decode token into the wide matvec of a one-piece matrix with rows of whole 32-value blocks",
                    ));
                }
                let parts = (gw.rows as u32).div_ceil(rows_per_wg);
                let (g, wb) = (get(nm.weight)?, get(words)?);
                check_len("rms_norm weight", g, nm.dim)?;
                check_len(
                    "the next norm's input",
                    wb,
                    q8_words_len(nm.dim) + parts as usize,
                )?;
                Some((
                    g.buffer.clone(),
                    wb.buffer.clone(),
                    nm,
                    words,
                    order,
                    parts,
                    next,
                ))
            }
            None => None,
        };
        let out_order = swiglu.or(norm_out.as_ref().map(|n| n.4));
        // Prefill on cooperative matrices: fixed 128-token × 128-row tiles (eight 32-lane
        // subgroups of 32 × 64 outputs each).
        let coop = tiled && self.dev.coop_matrix;
        let (tile_t, tile_r, tile_k) = if coop {
            (COOP_TILE_T, COOP_TILE_R, COOP_TILE_K)
        } else {
            (t.tile_t, t.tile_r, t.tile_k())
        };
        let mut defines = self.base_defines(wg);
        defines.extend(Self::weight_defines(gw.kind, self.dev.f16));
        defines.extend([
            ("ROWS_PER_WG", Define::U32(rows_per_wg)),
            (
                "VEC2",
                Define::Bool(matches!(gw.kind, WeightKind::Quant(s) if s.bits == 2)),
            ),
            (
                "CODES3",
                Define::Bool(matches!(gw.kind, WeightKind::Quant(s) if s.bits == 3)),
            ),
            (
                "ORDER",
                Define::U32(match gw.kind {
                    WeightKind::Quant(s) => code_order(s.bits),
                    _ => 0,
                }),
            ),
            ("TILE_T", Define::U32(tile_t)),
            ("TILE_R", Define::U32(tile_r)),
            ("TILE_K", Define::U32(tile_k)),
            ("COOP_TILED", Define::Bool(coop)),
            (
                "INT_TILED",
                Define::Bool(
                    tiled
                        && !coop
                        && t.int_prefill
                        && matches!(gw.kind, WeightKind::Quant(s) if matches!(s.bits, 2 | 3 | 4 | 8)),
                ),
            ),
            ("WIDE", Define::Bool(wide)),
            ("UNROLL", Define::U32(unroll)),
            ("ACCUMULATE", Define::Bool(accumulate)),
            ("NORM", Define::Bool(norm_w.is_some())),
            ("XQ8", Define::Bool(xq8)),
            ("WORD_SCALES", Define::Bool(words)),
            ("ROPE", Define::Bool(rope.is_some())),
            ("SWIGLU", Define::Bool(swiglu.is_some())),
            ("NORM_OUT", Define::Bool(norm_out.is_some())),
            ("RMS_IN", Define::Bool(rms_in.is_some())),
            ("OUT_ORDER", Define::U32(out_order.unwrap_or(0))),
        ]);
        let key = KernelKey {
            file: ShaderFile::Matmul,
            entry,
            defines,
        };
        use Slot::*;
        // Codes, group parameters, input, output; then the wide kernel's fused norm weights
        // and its RoPE epilogue's table and caches, where present.
        let mut slots = vec![Uniform, Read, Read, Read, ReadWrite];
        if norm_w.is_some() {
            slots.push(Read);
        }
        if rope.is_some() {
            slots.extend([Read, ReadWrite, ReadWrite]);
        }
        if norm_out.is_some() {
            slots.extend([Read, ReadWrite]);
        }
        let kernel = pipelines.get(&self.dev, &key, &slots)?;
        for p in &gw.pieces {
            let groups = if tiled {
                [
                    p.rows.div_ceil(tile_r as usize) as u32,
                    n.div_ceil(tile_t as usize) as u32,
                    1,
                ]
            } else {
                let (gx, gy) = fold(
                    p.rows.div_ceil(rows_per_wg as usize) as u32,
                    self.max_groups(),
                );
                [gx, gy, n as u32]
            };
            let mut params = vec![
                p.rows as u32,
                gw.cols as u32,
                n as u32,
                gw.rows as u32,
                p.row_start as u32,
                norm_w
                    .as_ref()
                    .map(|nw| nw.1)
                    .or(rms_in.map(|r| r.1))
                    .unwrap_or(0.0)
                    .to_bits(),
                rms_in.map_or(0, |r| r.0),
            ];
            let mut bindings = vec![
                Bind::Buffer(&p.data),
                Bind::Buffer(p.params.as_ref().unwrap_or(dummy)),
                Bind::Buffer(&xb.buffer),
                Bind::Buffer(&ob.buffer),
            ];
            if let Some((nw, _)) = &norm_w {
                bindings.push(Bind::Buffer(nw));
            }
            if let Some((table, k, v, qp)) = &rope {
                params.extend([
                    qp.pos0 as u32,
                    qp.head_dim as u32,
                    qp.q_dim() as u32,
                    qp.kv_dim() as u32,
                    u32::from(qp.style == RopeStyle::Adjacent),
                ]);
                bindings.extend([table, k, v].map(Bind::Buffer));
            }
            if let Some((g, wb, ..)) = &norm_out {
                bindings.extend([g, wb].map(Bind::Buffer));
            }
            rec.dispatch(
                &self.dev,
                &Dispatch {
                    kernel: &kernel,
                    params: &params,
                    bindings: &bindings,
                    groups,
                },
            )?;
        }
        st.norm_ready = norm_out.map(|(_, _, norm, words, _, parts, next)| NormReady {
            x: out,
            norm,
            w: next,
            words,
            parts,
            dispatches: st.rec.host.dispatches,
        });
        Ok(())
    }

    /// The epilogue of a residual add into `out` by one decode token through the matvec of
    /// `w`: `Epilogue::AddNorm` where `Backend::expect_norm` announced the next RMSNorm of
    /// `out` and both matvecs can take it (the wide matvec of one-piece `w` with rows of whole
    /// 32-value blocks, the next one wide over as many columns), else `Epilogue::Add`.
    fn residual_epilogue(&self, w: WeightId, out: BufferId) -> Result<Epilogue<'static>> {
        let hint = {
            let mut st = self.lock();
            let Some(h) = st.norm_hint.take() else {
                return Ok(Epilogue::Add);
            };
            let gw = weight(&st.weights, w)?;
            let fits = h.x == out
                && self.wide_matvec(gw, 1)
                && gw.pieces.len() == 1
                && gw.rows == h.norm.dim
                && h.norm.dim.is_multiple_of(32);
            if !fits {
                return Ok(Epilogue::Add);
            }
            h
        };
        let dim = hint.norm.dim;
        let Some(order) = self.q8_input(hint.w, 1, dim, u32::MAX)? else {
            return Ok(Epilogue::Add);
        };
        // Words, then one partial per workgroup of at least 4 rows.
        let len = q8_words_len(dim) + dim / 4;
        let have = {
            let st = self.lock();
            st.norm_words
                .filter(|id| st.buffers.get(&id.0).is_some_and(|b| b.len >= len))
        };
        let words = match have {
            Some(id) => id,
            None => {
                let id = self.create_buffer(len, None)?;
                let mut st = self.lock();
                if let Some(old) = st.norm_words.replace(id) {
                    if let Some(b) = st.buffers.remove(&old.0) {
                        st.rec.forget(&b.buffer);
                    }
                }
                id
            }
        };
        Ok(Epilogue::AddNorm {
            norm: hint.norm,
            words,
            order,
            next: hint.w,
        })
    }

    /// The input a residual add prepared for this RMSNorm of `x` into the matvec of `w`
    /// (`Epilogue::AddNorm`), if nothing has been recorded since: `(words, Input)`.
    fn prepared_norm(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        w: WeightId,
        n: usize,
    ) -> Result<Option<(BufferId, Input<'static>)>> {
        // The same `w` over as many columns takes the code order the words were made in.
        let ready = {
            let mut st = self.lock();
            let dispatches = st.rec.host.dispatches;
            st.norm_ready.take().filter(|r| {
                r.dispatches == dispatches
                    && r.x == x
                    && r.w == w
                    && r.norm.weight == norm.weight
                    && r.norm.dim == norm.dim
            })
        };
        let Some(r) = ready.filter(|_| n == 1) else {
            return Ok(None);
        };
        let input = Input::Q8WordsRms {
            parts: r.parts,
            eps: norm.eps,
        };
        Ok(Some((r.words, input)))
    }

    /// Whether the gate|up matvec of `w` for `n` tokens can apply the SwiGLU in its epilogue
    /// (`Epilogue::Swiglu`): one decode token, the wide matvec, one piece, whole 32-value
    /// blocks of output (gate and up rows alike), at least 8 lanes.
    fn swiglu_epilogue(&self, st: &State, w: WeightId, n: usize) -> Result<bool> {
        let gw = weight(&st.weights, w)?;
        let (lanes, _) = self.tuning.wide_shape(&self.dev.limits, gw.cols, gw.kind);
        Ok(n == 1
            && self.wide_matvec(gw, n)
            && gw.pieces.len() == 1
            && gw.rows.is_multiple_of(64)
            && lanes >= 8)
    }

    /// Errors unless the q|k|v matmul of `w` can take the RoPE epilogue (see `rope_epilogue`).
    fn check_rope_epilogue(&self, st: &State, w: WeightId, n: usize, p: &QkvParams) -> Result<()> {
        if n != 1 || !self.rope_epilogue(st, w, p)? {
            return Err(Error::invalid_config(
                "the RoPE epilogue needs one decode token into the matvec of a one-piece q|k|v matrix",
            ));
        }
        Ok(())
    }

    /// Whether the q|k|v matvec of `w` for `p` (one decode token, wide or narrow) can rotate
    /// and store as it writes: one piece of `p.row_len()` rows, RoPE pairs whole within a
    /// workgroup (even rows per workgroup), and the eight storage bindings it needs.
    fn rope_epilogue(&self, st: &State, w: WeightId, p: &QkvParams) -> Result<bool> {
        let gw = weight(&st.weights, w)?;
        let t = self.tuning;
        let even_rows = if self.wide_matvec(gw, 1) {
            t.matvec_rows.is_multiple_of(2)
        } else {
            t.narrow_shape(&self.dev.limits).1.is_multiple_of(2)
        };
        Ok(p.n_tokens == 1
            && gw.pieces.len() == 1
            && gw.rows == p.row_len()
            && p.head_dim.is_multiple_of(2)
            && even_rows
            && self.dev.limits.max_storage_buffers_per_shader_stage >= 8)
    }

    /// Embedding lookup of token ids from the host or from a device buffer.
    fn embed_from(&self, table: WeightId, ids: EmbedIds<'_>, out: BufferId) -> Result<()> {
        let n = match ids {
            EmbedIds::Host(t) => t.len(),
            EmbedIds::Device { n, .. } => n,
        };
        if n == 0 {
            return Ok(());
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        let State {
            buffers,
            weights,
            pipelines,
            rec,
            dummy,
            ..
        } = &mut *st;
        let w = weight(weights, table)?;
        // Host ids go through the upload ring; device ids are bound where they are.
        let (id_bind, id_offset) = match ids {
            EmbedIds::Host(tokens) => {
                if let Some(&t) = tokens.iter().find(|&&t| t as usize >= w.rows) {
                    return Err(Error::invalid_config(format!(
                        "token id {t} is outside the table ({} rows)",
                        w.rows
                    )));
                }
                (Bind::Upload(tokens), 0)
            }
            EmbedIds::Device { ids, offset, n } => {
                let b = buffers
                    .get(&ids.0)
                    .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", ids.0)))?;
                check_len("embed ids", b, offset + n)?;
                (Bind::Buffer(&b.buffer), offset)
            }
        };
        let indirect = matches!(id_bind, Bind::Buffer(_));
        let o = buffers
            .get(&out.0)
            .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", out.0)))?;
        check_len("embed output", o, n * w.cols)?;
        let mut defines = self.base_defines(wg);
        defines.extend(Self::weight_defines(w.kind, false));
        defines.push(("INDIRECT", Define::Bool(indirect)));
        defines.push(("WIDE", Define::Bool(false)));
        let key = KernelKey {
            file: ShaderFile::Embed,
            entry: "embed",
            defines,
        };
        use Slot::*;
        let id_slot = if indirect { Read } else { Upload };
        let kernel = pipelines.get(&self.dev, &key, &[Uniform, Read, Read, id_slot, ReadWrite])?;
        let (gx, gy) = fold(
            (n * w.cols / 8).div_ceil(wg as usize) as u32,
            self.max_groups(),
        );
        for p in &w.pieces {
            rec.dispatch(
                &self.dev,
                &Dispatch {
                    kernel: &kernel,
                    params: &[
                        w.cols as u32,
                        n as u32,
                        p.row_start as u32,
                        p.rows as u32,
                        id_offset as u32,
                    ],
                    bindings: &[
                        Bind::Buffer(&p.data),
                        Bind::Buffer(p.params.as_ref().unwrap_or(dummy)),
                        id_bind,
                        Bind::Buffer(&o.buffer),
                    ],
                    groups: [gx, gy, 1],
                },
            )?;
        }
        Ok(())
    }

    /// Base defines of `elementwise.wgsl` with exactly the operation `op` (`OP_ADD`, …) on.
    fn elementwise_defines(&self, wg: u32, op: &str) -> Vec<(&'static str, Define)> {
        let mut defines = self.base_defines(wg);
        for name in ["OP_ADD", "OP_SILU_MUL", "OP_COPY", "OP_SWIGLU"] {
            defines.push((name, Define::Bool(name == op)));
        }
        defines
    }

    fn copy_values(
        &self,
        st: &mut State,
        dst: &wgpu::Buffer,
        dst_offset: usize,
        src: Bind<'_>,
        src_offset: usize,
        len: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let wg = self.tuning.elementwise_wg;
        let upload = matches!(src, Bind::Upload(_));
        let mut defines = self.elementwise_defines(wg, "OP_COPY");
        defines.push(("SRC_UPLOAD", Define::Bool(upload)));
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry: "copy",
            defines,
        };
        let src_slot = if upload { Slot::Upload } else { Slot::Read };
        let kernel =
            st.pipelines
                .get(&self.dev, &key, &[Slot::Uniform, Slot::ReadWrite, src_slot])?;
        let (gx, gy) = fold(len.div_ceil(wg as usize) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[len as u32, src_offset as u32, dst_offset as u32],
                bindings: &[Bind::Buffer(dst), src],
                groups: [gx, gy, 1],
            },
        )
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
        let w = upload(&self.dev, weight, self.max_binding)?;
        let mut st = self.lock();
        let id = st.next_weight;
        st.next_weight += 1;
        st.weight_bytes += w.bytes;
        st.weights.insert(id, w);
        Ok(WeightId(id))
    }

    fn upload(&self, data: &[f32]) -> Result<BufferId> {
        self.create_buffer(data.len(), Some(data))
    }

    fn alloc(&self, len: usize) -> Result<BufferId> {
        self.create_buffer(len, None)
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
        let b = st.buf(buf)?;
        check_len("write", b, offset + data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let dst = b.buffer.clone();
        // Through the upload ring and the copy kernel, so the write lands in program order.
        self.copy_values(
            &mut st,
            &dst,
            offset,
            Bind::Upload(bytemuck::cast_slice(data)),
            0,
            data.len(),
        )
    }

    fn read(&self, buf: BufferId, offset: usize, len: usize) -> Result<Vec<f32>> {
        let mut st = self.lock();
        let State { buffers, rec, .. } = &mut *st;
        let b = buffers
            .get(&buf.0)
            .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", buf.0)))?;
        check_len("read", b, offset + len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = rec.read(&self.dev, &b.buffer, offset as u64 * 4, len as u64 * 4)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    fn queues_work(&self) -> bool {
        true
    }

    fn read_start(&self, buf: BufferId, offset: usize, len: usize) -> Result<PendingRead> {
        if len == 0 {
            return Ok(PendingRead::Ready(Vec::new()));
        }
        let mut st = self.lock();
        let State { buffers, rec, .. } = &mut *st;
        let b = buffers
            .get(&buf.0)
            .ok_or_else(|| Error::invalid_config(format!("unknown buffer {}", buf.0)))?;
        check_len("read", b, offset + len)?;
        let t = rec.read_start(&self.dev, &b.buffer, offset as u64 * 4, len as u64 * 4)?;
        Ok(PendingRead::Ticket(t))
    }

    fn read_finish(&self, read: PendingRead) -> Result<Vec<f32>> {
        let ticket = match read {
            PendingRead::Ready(v) => return Ok(v),
            PendingRead::Ticket(t) => t,
        };
        let in_flight = self.lock().rec.take_read(ticket)?;
        // Wait without the lock: other requests keep recording meanwhile.
        let t0 = std::time::Instant::now();
        let (bytes, buffer) = wait_read(&self.dev, in_flight)?;
        self.lock().rec.finish_read(t0.elapsed(), buffer);
        Ok(bytemuck::cast_slice(&bytes).to_vec())
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

    fn embed(&self, table: WeightId, tokens: &[u32], out: BufferId) -> Result<()> {
        self.embed_from(table, EmbedIds::Host(tokens), out)
    }

    fn embed_indirect(
        &self,
        table: WeightId,
        ids: BufferId,
        offset: usize,
        n: usize,
        out: BufferId,
    ) -> Result<()> {
        self.embed_from(table, EmbedIds::Device { ids, offset, n }, out)
    }

    fn argmax(&self, x: BufferId, len: usize, out: BufferId, out_offset: usize) -> Result<()> {
        distinct("argmax", x, out)?;
        let wg = ARGMAX_WG;
        let mut st = self.lock();
        check_len("argmax input", st.buf(x)?, len)?;
        check_len("argmax output", st.buf(out)?, out_offset + 1)?;
        let (xb, ob) = (st.buf(x)?.buffer.clone(), st.buf(out)?.buffer.clone());
        use Slot::*;
        let kernel = |st: &mut State, partial: bool, pairs: bool| {
            let mut defines = self.base_defines(wg);
            defines.extend([
                ("PARTIAL", Define::Bool(partial)),
                ("PAIRS", Define::Bool(pairs)),
            ]);
            let key = KernelKey {
                file: ShaderFile::Sample,
                entry: "argmax",
                defines,
            };
            st.pipelines
                .get(&self.dev, &key, &[Uniform, Read, ReadWrite])
        };
        // One workgroup scans a long vocabulary slowly (H100: 31 µs for 128,256 logits), so
        // long inputs are split over workgroups of ARGMAX_SPAN values, then their pairs reduced.
        let groups = len.div_ceil(ARGMAX_SPAN);
        if groups <= 1 {
            let k = kernel(&mut st, false, false)?;
            return st.rec.dispatch(
                &self.dev,
                &Dispatch {
                    kernel: &k,
                    params: &[len as u32, out_offset as u32, len as u32],
                    bindings: &[Bind::Buffer(&xb), Bind::Buffer(&ob)],
                    groups: [1, 1, 1],
                },
            );
        }
        let pairs = self.scratch(&mut st, Scratch::ArgmaxPairs, groups as u64 * 8)?;
        let (gx, gy) = fold(groups as u32, self.max_groups());
        let k = kernel(&mut st, true, false)?;
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &k,
                params: &[len as u32, 0, ARGMAX_SPAN as u32],
                bindings: &[Bind::Buffer(&xb), Bind::Buffer(&pairs)],
                groups: [gx, gy, 1],
            },
        )?;
        let k = kernel(&mut st, false, true)?;
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &k,
                params: &[groups as u32, out_offset as u32, groups as u32],
                bindings: &[Bind::Buffer(&pairs), Bind::Buffer(&ob)],
                groups: [1, 1, 1],
            },
        )
    }

    fn rms_norm(
        &self,
        x: BufferId,
        weight: BufferId,
        out: BufferId,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.norm_into(x, weight, out, rows, dim, eps, None)
    }

    fn matmul(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()> {
        self.matmul_into(w, x, out, n, Epilogue::Store, Input::F32)
    }

    fn matmul_add(&self, w: WeightId, x: BufferId, out: BufferId, n: usize) -> Result<()> {
        self.matmul_into(w, x, out, n, Epilogue::Add, Input::F32)
    }

    fn rms_norm_matmul(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
    ) -> Result<()> {
        self.norm_matmul_into(x, norm, scratch, w, out, n, Epilogue::Store)
    }

    fn expect_norm(&self, x: BufferId, norm: &RmsNorm, w: WeightId) -> Result<()> {
        self.lock().norm_hint = Some(NormHint { x, norm: *norm, w });
        Ok(())
    }

    fn rms_norm_qkv_rope(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        scratch: BufferId,
        w: WeightId,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        // One decode token: the q|k|v matvec rotates and stores as it writes (no RoPE
        // dispatch, `qkv` unused).
        p.check_head_dim()?;
        if self.rope_epilogue(&self.lock(), w, p)? {
            let epilogue = Epilogue::Rope {
                k_cache,
                v_cache,
                p,
            };
            return self.norm_matmul_into(x, norm, scratch, w, q_out, 1, epilogue);
        }
        self.rms_norm_matmul(x, norm, scratch, w, qkv, p.n_tokens)?;
        self.rope_store_qkv(qkv, q_out, k_cache, v_cache, p)
    }

    fn rope_store_qkv(
        &self,
        qkv: BufferId,
        q_out: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        p: &QkvParams,
    ) -> Result<()> {
        if p.n_tokens == 0 {
            return Ok(());
        }
        p.check_head_dim()?;
        for (a, b) in [
            (qkv, q_out),
            (qkv, k_cache),
            (qkv, v_cache),
            (q_out, k_cache),
            (q_out, v_cache),
            (k_cache, v_cache),
        ] {
            distinct("rope_store_qkv", a, b)?;
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len(
            "rope_store_qkv input",
            st.buf(qkv)?,
            p.n_tokens * p.row_len(),
        )?;
        check_len(
            "rope_store_qkv q output",
            st.buf(q_out)?,
            p.n_tokens * p.q_dim(),
        )?;
        for c in [k_cache, v_cache] {
            p.check_cache(st.buf(c)?.len)?;
        }
        let bufs = [qkv, q_out, k_cache, v_cache].map(|id| st.buf(id).map(|b| b.buffer.clone()));
        let [a, b, c, d] = bufs;
        let bufs = [a?, b?, c?, d?];
        let table = self.rope_table(&mut st, p.theta, p.head_dim, p.pos0 + p.n_tokens)?;
        let mut defines = self.base_defines(wg);
        defines.push(("QKV", Define::Bool(true)));
        let key = KernelKey {
            file: ShaderFile::Rope,
            entry: "rope_qkv",
            defines,
        };
        use Slot::*;
        let kernel = st.pipelines.get(
            &self.dev,
            &key,
            &[Uniform, Read, Read, ReadWrite, ReadWrite, ReadWrite],
        )?;
        let total = p.n_tokens * (p.n_heads + 2 * p.n_kv_heads) * (p.head_dim / 2);
        let (gx, gy) = fold(total.div_ceil(wg as usize) as u32, self.max_groups());
        let [b_qkv, b_q, b_k, b_v] = &bufs;
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    p.n_tokens as u32,
                    p.n_heads as u32,
                    p.n_kv_heads as u32,
                    p.head_dim as u32,
                    u32::from(p.style == RopeStyle::Adjacent),
                    p.pos0 as u32,
                ],
                bindings: &[&table, b_qkv, b_q, b_k, b_v].map(Bind::Buffer),
                groups: [gx, gy, 1],
            },
        )
    }

    fn swiglu(&self, gate_up: BufferId, out: BufferId, n: usize, width: usize) -> Result<()> {
        self.swiglu_into(gate_up, out, n, width, None)
    }

    fn ffn_swiglu(
        &self,
        x: BufferId,
        norm: &RmsNorm,
        normed: BufferId,
        w_gate_up: WeightId,
        gate_up: BufferId,
        hidden: BufferId,
        w_down: WeightId,
        n: usize,
        width: usize,
    ) -> Result<()> {
        // Decode through wide matvecs: the norm writes the gate|up matvec's 8-bit blocks, and
        // that matvec applies the SwiGLU and writes the down matvec's 8-bit words with their own
        // scales (each by one lane, so any producer width will do), one dispatch fewer.
        let fused = {
            let st = self.lock();
            self.swiglu_epilogue(&st, w_gate_up, n)?
                && weight(&st.weights, w_gate_up)?.rows == 2 * width
        };
        let orders = if fused {
            let t = self.tuning;
            let gu = self.q8_input(w_gate_up, n, norm.dim, t.norm_wg)?;
            gu.zip(self.q8_input(w_down, n, width, u32::MAX)?)
        } else {
            None
        };
        match orders {
            Some((gu_order, order)) => {
                let swiglu = Epilogue::Swiglu { order };
                match self.prepared_norm(x, norm, w_gate_up, n)? {
                    Some((words, input)) => {
                        self.matmul_into(w_gate_up, words, hidden, n, swiglu, input)?;
                    }
                    None => {
                        let (dim, eps) = (norm.dim, norm.eps);
                        self.norm_into(x, norm.weight, normed, n, dim, eps, Some(gu_order))?;
                        self.matmul_into(w_gate_up, normed, hidden, n, swiglu, Input::Q8)?;
                    }
                }
                let add = self.residual_epilogue(w_down, x)?;
                self.matmul_into(w_down, hidden, x, n, add, Input::Q8Words)
            }
            None => {
                self.lock().norm_hint = None;
                self.rms_norm_matmul(x, norm, normed, w_gate_up, gate_up, n)?;
                self.swiglu_matmul_add(gate_up, hidden, w_down, x, n, width)
            }
        }
    }

    fn swiglu_matmul_add(
        &self,
        gate_up: BufferId,
        scratch: BufferId,
        w: WeightId,
        out: BufferId,
        n: usize,
        width: usize,
    ) -> Result<()> {
        // Decode rows for a wide matvec: SwiGLU writes 8-bit activation blocks that the
        // matvec reads as they are (no per-workgroup quantization).
        match self.q8_input(w, n, width, self.tuning.elementwise_wg)? {
            Some(order) => {
                self.swiglu_into(gate_up, scratch, n, width, Some(order))?;
                self.matmul_into(w, scratch, out, n, Epilogue::Add, Input::Q8)
            }
            None => {
                self.swiglu(gate_up, scratch, n, width)?;
                self.matmul_add(w, scratch, out, n)
            }
        }
    }

    fn rope(
        &self,
        x: BufferId,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
        style: RopeStyle,
    ) -> Result<()> {
        if n_tokens == 0 || n_heads == 0 {
            return Ok(());
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid_config(format!(
                "rope needs an even head dimension, got {head_dim}"
            )));
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        let xb = st.buf(x)?;
        check_len("rope input", xb, n_tokens * n_heads * head_dim)?;
        let xb = xb.buffer.clone();
        let table = self.rope_table(&mut st, theta, head_dim, pos0 + n_tokens)?;
        let key = KernelKey {
            file: ShaderFile::Rope,
            entry: "rope",
            defines: {
                let mut d = self.base_defines(wg);
                d.push(("QKV", Define::Bool(false)));
                d
            },
        };
        use Slot::*;
        let kernel = st
            .pipelines
            .get(&self.dev, &key, &[Uniform, Read, ReadWrite])?;
        let total = n_tokens * n_heads * (head_dim / 2);
        let (gx, gy) = fold(total.div_ceil(wg as usize) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    n_tokens as u32,
                    n_heads as u32,
                    head_dim as u32,
                    u32::from(style == RopeStyle::Adjacent),
                    pos0 as u32,
                ],
                bindings: &[Bind::Buffer(&table), Bind::Buffer(&xb)],
                groups: [gx, gy, 1],
            },
        )
    }

    fn kv_store(
        &self,
        src: BufferId,
        cache: BufferId,
        pos0: usize,
        n_tokens: usize,
        row_len: usize,
    ) -> Result<()> {
        distinct("kv_store", src, cache)?;
        let mut st = self.lock();
        let (s, c) = (st.buf(src)?, st.buf(cache)?);
        check_len("kv_store source", s, n_tokens * row_len)?;
        if c.len < (pos0 + n_tokens) * row_len {
            return Err(Error::context_overflow(format!(
                "the KV cache holds {} rows of {row_len}; rows up to {} were asked",
                c.len / row_len.max(1),
                pos0 + n_tokens
            )));
        }
        let (s, c) = (s.buffer.clone(), c.buffer.clone());
        self.copy_values(
            &mut st,
            &c,
            pos0 * row_len,
            Bind::Buffer(&s),
            0,
            n_tokens * row_len,
        )
    }

    fn attention(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        out: BufferId,
        p: &AttentionParams,
    ) -> Result<()> {
        self.attention_into(q, k_cache, v_cache, out, p, None)
    }

    fn attention_matmul_add(
        &self,
        q: BufferId,
        k_cache: BufferId,
        v_cache: BufferId,
        scratch: BufferId,
        p: &AttentionParams,
        w: WeightId,
        out: BufferId,
    ) -> Result<()> {
        // Decode: the attention writes 8-bit activation blocks that the output projection's
        // matvec reads as they are (no per-workgroup quantization).
        let q8 = if p.n_tokens == 1 && p.head_dim.is_multiple_of(32) {
            let lanes = self.tuning.attn_wg_for(&self.dev.limits);
            self.q8_input(w, 1, p.n_heads * p.head_dim, lanes)?
        } else {
            None
        };
        match q8 {
            Some(order) => {
                self.attention_into(q, k_cache, v_cache, scratch, p, Some(order))?;
                let add = self.residual_epilogue(w, out)?;
                self.matmul_into(w, scratch, out, 1, add, Input::Q8)
            }
            None => {
                self.lock().norm_hint = None;
                self.attention(q, k_cache, v_cache, scratch, p)?;
                self.matmul_add(w, scratch, out, p.n_tokens)
            }
        }
    }

    fn silu_mul(&self, gate: BufferId, up: BufferId, out: BufferId, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (ag, au) = (gate == out, up == out);
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        for (what, id) in [
            ("silu_mul gate", gate),
            ("silu_mul up", up),
            ("silu_mul output", out),
        ] {
            check_len(what, st.buf(id)?, len)?;
        }
        let mut ids = vec![out];
        if !ag {
            ids.push(gate);
        }
        if !au {
            ids.push(up);
        }
        let bufs: Vec<wgpu::Buffer> = ids
            .iter()
            .map(|&i| st.buf(i).map(|b| b.buffer.clone()))
            .collect::<Result<_>>()?;
        let mut defines = self.elementwise_defines(wg, "OP_SILU_MUL");
        defines.extend([
            ("ALIAS_SELF", Define::Bool(false)),
            ("ALIAS_GATE", Define::Bool(ag && !au)),
            ("ALIAS_UP", Define::Bool(au && !ag)),
            ("ALIAS_GATE_UP", Define::Bool(ag && au)),
        ]);
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry: "silu_mul",
            defines,
        };
        let mut slots = vec![Slot::Uniform, Slot::ReadWrite];
        slots.resize(bufs.len() + 1, Slot::Read);
        let kernel = st.pipelines.get(&self.dev, &key, &slots)?;
        let (gx, gy) = fold(len.div_ceil(wg as usize) as u32, self.max_groups());
        let bindings: Vec<Bind> = bufs.iter().map(Bind::Buffer).collect();
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[len as u32],
                bindings: &bindings,
                groups: [gx, gy, 1],
            },
        )
    }

    fn add(&self, dst: BufferId, src: BufferId, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let same = dst == src;
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len("add destination", st.buf(dst)?, len)?;
        check_len("add source", st.buf(src)?, len)?;
        let (db, sb) = (st.buf(dst)?.buffer.clone(), st.buf(src)?.buffer.clone());
        let mut defines = self.elementwise_defines(wg, "OP_ADD");
        defines.push(("ALIAS_SELF", Define::Bool(same)));
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry: "add",
            defines,
        };
        use Slot::*;
        let all = [Bind::Buffer(&db), Bind::Buffer(&sb)];
        let (slots, bindings): (&[Slot], &[Bind]) = if same {
            (&[Uniform, ReadWrite], &all[..1])
        } else {
            (&[Uniform, ReadWrite, Read], &all)
        };
        let kernel = st.pipelines.get(&self.dev, &key, slots)?;
        let (gx, gy) = fold(len.div_ceil(wg as usize) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[len as u32],
                bindings,
                groups: [gx, gy, 1],
            },
        )
    }

    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let mut st = self.lock();
        st.norm_ready = None;
        check_len("copy source", st.buf(src)?, src_offset + len)?;
        check_len("copy destination", st.buf(dst)?, dst_offset + len)?;
        if len == 0 {
            return Ok(());
        }
        let (s, d) = (st.buf(src)?.buffer.clone(), st.buf(dst)?.buffer.clone());
        let bytes = len as u64 * 4;
        let (so, doff) = (src_offset as u64 * 4, dst_offset as u64 * 4);
        if src != dst {
            // Large copies go to the device's copy path (vkCmdCopyBuffer: the fastest device-
            // to-device copy there is); small ones stay in the step's compute pass as a kernel.
            if bytes >= LARGE_COPY_BYTES {
                st.rec.copy(&self.dev, &s, so, &d, doff, bytes);
                return Ok(());
            }
            return self.copy_values(&mut st, &d, dst_offset, Bind::Buffer(&s), src_offset, len);
        }
        // A buffer cannot be copied onto itself: go through a temporary (memmove semantics).
        let tmp = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("copy temporary"),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        st.rec.copy(&self.dev, &s, so, &tmp, 0, bytes);
        st.rec.copy(&self.dev, &tmp, 0, &s, doff, bytes);
        Ok(())
    }
}
