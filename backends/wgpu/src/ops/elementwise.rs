//! Elementwise kernels: residual add, copies (dense, strided, from host data), activations, GLUs
//! (SwiGLU also as 8-bit blocks), the fused SwiGLU feed-forward, and the `Add`, `Copy`,
//! `Activation` and `Glu` ops.

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct, weight, Internal, State};
use crate::ops::linear::{q8_len, q8_words_len, Epilogue, Input};
use crate::ops::norm::RmsNorm;
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::ops::Activation;
use lowbit_core::{BufferId, Error, Result, WeightId};

/// Copies from this size on use the transfer path instead of the copy kernel.
const LARGE_COPY_BYTES: u64 = 1 << 20;

/// A strided copy: rows of `width` values, `src_stride` and `dst_stride` apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CopyRows {
    pub width: usize,
    pub src_stride: usize,
    pub dst_stride: usize,
    /// Write whole destination rows, columns `width .. dst_stride` as zeros (the copy's `len`
    /// then counts destination values).
    pub zero_pad: bool,
}

impl WgpuBackend {
    /// The `Glu` op on its own.
    pub(crate) fn glu(
        &self,
        act: Activation,
        x: BufferId,
        out: BufferId,
        n: usize,
        width: usize,
    ) -> Result<()> {
        self.glu_into(act, x, out, n, width, None)
    }

    /// The `Activation` op: `out[i] = act(x[i])` over `len` values (`x` may be `out`).
    pub(crate) fn activation(
        &self,
        act: Activation,
        x: BufferId,
        out: BufferId,
        len: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let code = ("ACT", Define::U32(act_code(act)));
        self.elementwise_pair("activation", "OP_ACTIVATION", Some(code), out, x, len)
    }

    /// Base defines of `elementwise.wgsl` with exactly the operation `op` (`OP_ADD`, …) on.
    pub(crate) fn elementwise_defines(&self, wg: u32, op: &str) -> Vec<(&'static str, Define)> {
        let mut defines = self.base_defines(wg);
        for name in [
            "OP_ADD",
            "OP_SILU_MUL",
            "OP_COPY",
            "OP_SWIGLU",
            "OP_ACTIVATION",
            "OP_SCALE",
        ] {
            defines.push((name, Define::Bool(name == op)));
        }
        defines
    }

    /// Records a copy of `len` values (`rows`: strided rows) from `src` into `dst` by the copy
    /// kernel, in the step's compute pass.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_values(
        &self,
        st: &mut State,
        dst: &wgpu::Buffer,
        dst_offset: usize,
        src: Bind<'_>,
        src_offset: usize,
        len: usize,
        rows: Option<CopyRows>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let wg = self.tuning.elementwise_wg;
        let upload = matches!(src, Bind::Upload(_));
        let mut defines = self.elementwise_defines(wg, "OP_COPY");
        defines.push(("SRC_UPLOAD", Define::Bool(upload)));
        defines.push(("STRIDED", Define::Bool(rows.is_some())));
        defines.push(("ZERO_PAD", Define::Bool(rows.is_some_and(|r| r.zero_pad))));
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
        let r = rows.unwrap_or(CopyRows {
            width: 0,
            src_stride: 0,
            dst_stride: 0,
            zero_pad: false,
        });
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    len as u32,
                    src_offset as u32,
                    dst_offset as u32,
                    r.width as u32,
                    r.src_stride as u32,
                    r.dst_stride as u32,
                ],
                bindings: &[Bind::Buffer(dst), src],
                groups: [gx, gy, 1],
            },
        )
    }

    /// A GLU with `act` on the gate (SiLU: SwiGLU); with `q8` (`Some(order)`, see
    /// [`code_order`]; widths of a multiple of 32) `out` receives 8-bit activation blocks for a
    /// wide matvec (`q8.wgsl`) instead.
    pub(crate) fn glu_into(
        &self,
        act: Activation,
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
        distinct("glu", gate_up, out)?;
        if q8.is_some() && (!width.is_multiple_of(32) || self.tuning.elementwise_wg < 8) {
            return Err(Error::invalid_config(
                "8-bit glu output needs a width of a multiple of 32 and 8 lanes",
            ));
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len("glu input", st.buf(gate_up)?, 2 * len)?;
        check_len("glu output", st.buf(out)?, n * q8_len(width, q8.is_some()))?;
        let (ob, gb) = (st.buf(out)?.buffer.clone(), st.buf(gate_up)?.buffer.clone());
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry: "swiglu",
            defines: {
                let mut d = self.elementwise_defines(wg, "OP_SWIGLU");
                d.extend([
                    ("Q8_OUT", Define::Bool(q8.is_some())),
                    ("ORDER", Define::U32(q8.unwrap_or(0))),
                    ("ACT", Define::U32(act_code(act))),
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

    /// `Norm + Linear(gate|up) + Glu{Silu} + Linear(down, accumulate into the norm's input)`
    /// fused: at decode the gate|up matvec applies the SwiGLU as it writes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ffn_swiglu(
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
                // 8-bit activations go to the backend's own buffers: `normed`, `gate_up` and
                // `hidden` stay unwritten.
                let swiglu = Epilogue::Swiglu { order };
                let words = self.internal(Internal::Words, q8_words_len(width))?;
                match self.prepared_norm(x, norm, w_gate_up, n)? {
                    Some((prepared, input)) => {
                        self.matmul_into(w_gate_up, prepared, words, n, swiglu, input)?;
                    }
                    None => {
                        let (dim, eps) = (norm.dim, norm.eps);
                        let blocks = self.internal(Internal::Blocks, q8_len(dim, true))?;
                        self.norm_into(x, norm.weight, blocks, n, dim, eps, Some(gu_order))?;
                        self.matmul_into(w_gate_up, blocks, words, n, swiglu, Input::Q8)?;
                    }
                }
                let add = self.residual_epilogue(w_down, x)?;
                self.matmul_into(w_down, words, x, n, add, Input::Q8Words)
            }
            None => {
                self.lock().norm_hint = None;
                self.rms_norm_matmul(x, norm, normed, w_gate_up, gate_up, n)?;
                self.swiglu_matmul_add(gate_up, hidden, w_down, x, n, width)
            }
        }
    }

    /// `Glu{Silu} + Linear(accumulate)` fused: 8-bit SwiGLU output for a wide matvec.
    pub(crate) fn swiglu_matmul_add(
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
                // The blocks go to the backend's own buffer: `scratch` stays unwritten.
                let blocks = self.internal(Internal::Blocks, n * q8_len(width, true))?;
                self.glu_into(Activation::Silu, gate_up, blocks, n, width, Some(order))?;
                self.matmul_into(w, blocks, out, n, Epilogue::Add, Input::Q8)
            }
            None => {
                self.glu_into(Activation::Silu, gate_up, scratch, n, width, None)?;
                self.matmul_into(w, scratch, out, n, Epilogue::Add, Input::F32)
            }
        }
    }

    /// The `Add` op.
    pub(crate) fn add(&self, dst: BufferId, src: BufferId, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.elementwise_pair("add", "OP_ADD", None, dst, src, len)
    }

    /// The `Scale` op: `x *= factor` in place (the factor a parameter, not a define, so one
    /// pipeline serves every factor).
    pub(crate) fn scale(&self, x: BufferId, len: usize, factor: f32) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len("scale", st.buf(x)?, len)?;
        let xb = st.buf(x)?.buffer.clone();
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry: "scale",
            defines: self.elementwise_defines(wg, "OP_SCALE"),
        };
        let kernel = st
            .pipelines
            .get(&self.dev, &key, &[Slot::Uniform, Slot::ReadWrite])?;
        let (gx, gy) = fold(len.div_ceil(wg as usize) as u32, self.max_groups());
        // Params: len, then the copy/swiglu fields unused here, then the factor's bits.
        let params = [len as u32, 0, 0, 0, 0, 0, factor.to_bits()];
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &params,
                bindings: &[Bind::Buffer(&xb)],
                groups: [gx, gy, 1],
            },
        )
    }

    /// One elementwise kernel of `elementwise.wgsl` (entry `entry`, operation `op`, plus an
    /// optional define) over `len` values: `out` written from `input` (and itself, for `add`),
    /// bound once when they are the same buffer.
    fn elementwise_pair(
        &self,
        entry: &'static str,
        op: &str,
        extra: Option<(&'static str, Define)>,
        out: BufferId,
        input: BufferId,
        len: usize,
    ) -> Result<()> {
        let same = out == input;
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len(&format!("{entry} input"), st.buf(input)?, len)?;
        check_len(&format!("{entry} output"), st.buf(out)?, len)?;
        let (ob, ib) = (st.buf(out)?.buffer.clone(), st.buf(input)?.buffer.clone());
        let mut defines = self.elementwise_defines(wg, op);
        defines.push(("ALIAS_SELF", Define::Bool(same)));
        defines.extend(extra);
        let key = KernelKey {
            file: ShaderFile::Elementwise,
            entry,
            defines,
        };
        use Slot::*;
        let all = [Bind::Buffer(&ob), Bind::Buffer(&ib)];
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

    /// `n` rows of `cols` values of `x` widened with zero columns to `stored` values each, in
    /// the backend's own buffer (returned): the input of a matmul over a padded dense matrix.
    pub(crate) fn pad_rows(
        &self,
        x: BufferId,
        n: usize,
        cols: usize,
        stored: usize,
    ) -> Result<BufferId> {
        let padded = self.internal(Internal::PaddedRows, n * stored)?;
        let mut st = self.lock();
        check_len("matmul input", st.buf(x)?, n * cols)?;
        let (xb, pb) = (st.buf(x)?.buffer.clone(), st.buf(padded)?.buffer.clone());
        let rows = CopyRows {
            width: cols,
            src_stride: cols,
            dst_stride: stored,
            zero_pad: true,
        };
        self.copy_values(
            &mut st,
            &pb,
            0,
            Bind::Buffer(&xb),
            0,
            n * stored,
            Some(rows),
        )?;
        Ok(padded)
    }

    /// The `Copy` op (memmove semantics within one buffer).
    pub(crate) fn copy(
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
            return self.copy_values(
                &mut st,
                &d,
                dst_offset,
                Bind::Buffer(&s),
                src_offset,
                len,
                None,
            );
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

/// The `ACT` constant of `activation.wgsl` for `act`.
fn act_code(act: Activation) -> u32 {
    match act {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::QuickGelu => 3,
    }
}
