//! Matrices quantized in a rotated basis ([`Rotation`], `quantization.rotation`): a linear map
//! rotates its input rows before the quantized matmul (`W x = (W Rᵀ)(R x)`), and an embedding
//! lookup rotates the rows it gathered back (`rotate.wgsl`, one workgroup per row and block,
//! the Hadamard transform in workgroup memory). The ops and the model never see it: the matmul
//! and the embedding of such a weight do it themselves, and the fused paths that would hand the
//! matmul anything but f32 rows (8-bit blocks, a norm applied on load) step aside for it.

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, weight, Internal, State};
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::quant::Rotation;
use lowbit_core::{BufferId, Error, Result, WeightId};

/// Most lanes of a rotation workgroup (each lane takes `block / 2 / lanes` butterflies of a
/// stage).
const ROTATE_WG: usize = 256;

/// Where a rotation reads and writes.
pub(crate) enum RotateIo<'a> {
    /// From `src` into `dst`.
    Into {
        src: &'a wgpu::Buffer,
        dst: &'a wgpu::Buffer,
    },
    /// In place, rows whose token id lies in the table only when `ids` is given: `(ids,
    /// first id, table rows)` (an embedding of device ids, which leaves the other rows as they
    /// were).
    InPlace {
        buf: &'a wgpu::Buffer,
        ids: Option<(&'a wgpu::Buffer, usize, usize)>,
    },
}

impl WgpuBackend {
    /// Checks that this device can apply `rot` to rows of `cols` values: the block's values
    /// must fit the workgroup storage (16 KiB, 4096 values, wherever WebGPU runs).
    ///
    /// Errors: `INVALID_CONFIG` for a rotation that does not fit the matrix; `UNSUPPORTED` for
    /// a block beyond the device's workgroup storage.
    pub(crate) fn check_rotation(&self, rot: &Rotation, cols: usize) -> Result<()> {
        rot.check(cols)
            .map_err(|e| Error::invalid_config(format!("upload_weight: {}", e.message)))?;
        let need = rot.block * 4;
        let have = self.dev.limits.max_compute_workgroup_storage_size as usize;
        if need > have {
            return Err(Error::unsupported(format!(
                "webgpu: a rotation block of {} values needs {need} bytes of workgroup storage; \
                 this device offers {have}",
                rot.block
            )));
        }
        Ok(())
    }

    /// `n` rows of `x` (the columns of `w`) rotated by the rotation of `w`, in the backend's
    /// own buffer (returned): the input of the matmul of a matrix stored in a rotated basis.
    pub(crate) fn rotate_rows(&self, w: WeightId, x: BufferId, n: usize) -> Result<BufferId> {
        let cols = weight(&self.lock().weights, w)?.cols;
        let rotated = self.internal(Internal::RotatedRows, n * cols)?;
        let mut st = self.lock();
        check_len("matmul input", st.buf(x)?, n * cols)?;
        let (xb, rb) = (st.buf(x)?.buffer.clone(), st.buf(rotated)?.buffer.clone());
        let (rot, signs) = match &weight(&st.weights, w)?.rotation {
            Some(r) => (r.rot, r.signs.clone()),
            None => {
                return Err(Error::invalid_config(
                    "rotate_rows: the matrix is not stored in a rotated basis",
                ))
            }
        };
        let io = RotateIo::Into { src: &xb, dst: &rb };
        self.rotate_dispatch(&mut st, rot, &signs, io, n, cols, false)?;
        Ok(rotated)
    }

    /// Records `rows` rows of `cols` values rotated by `rot` (`inverse`: rotated back) as `io`
    /// says; `signs` holds the sign bits of the columns ([`Rotation::sign_words`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rotate_dispatch(
        &self,
        st: &mut State,
        rot: Rotation,
        signs: &wgpu::Buffer,
        io: RotateIo<'_>,
        rows: usize,
        cols: usize,
        inverse: bool,
    ) -> Result<()> {
        let block = rot.block;
        if rows == 0 {
            return Ok(());
        }
        let wg = (block / 2).min(ROTATE_WG) as u32;
        let (in_place, ids) = match &io {
            RotateIo::Into { .. } => (false, None),
            RotateIo::InPlace { ids, .. } => (true, *ids),
        };
        let mut defines = self.base_defines(wg);
        defines.extend([
            ("BLOCK", Define::U32(block as u32)),
            ("INVERSE", Define::Bool(inverse)),
            ("IN_PLACE", Define::Bool(in_place)),
            ("IDS", Define::Bool(ids.is_some())),
        ]);
        let key = KernelKey {
            file: ShaderFile::Rotate,
            entry: "rotate",
            defines,
        };
        use Slot::*;
        let (slots, bindings): (&[Slot], Vec<Bind>) = match io {
            RotateIo::Into { src, dst } => (
                &[Uniform, Read, Read, ReadWrite],
                vec![Bind::Buffer(signs), Bind::Buffer(src), Bind::Buffer(dst)],
            ),
            RotateIo::InPlace {
                buf,
                ids: Some((idb, ..)),
            } => (
                &[Uniform, Read, ReadWrite, Read],
                vec![Bind::Buffer(signs), Bind::Buffer(buf), Bind::Buffer(idb)],
            ),
            RotateIo::InPlace { buf, ids: None } => (
                &[Uniform, Read, ReadWrite],
                vec![Bind::Buffer(signs), Bind::Buffer(buf)],
            ),
        };
        let kernel = st.pipelines.get(&self.dev, &key, slots)?;
        let (id_offset, table_rows) = ids.map_or((0, 0), |(_, o, t)| (o, t));
        let scale = 1.0 / (block as f32).sqrt();
        let (gx, gy) = fold((rows * (cols / block)) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    cols as u32,
                    rows as u32,
                    scale.to_bits(),
                    table_rows as u32,
                    id_offset as u32,
                ],
                bindings: &bindings,
                groups: [gx, gy, 1],
            },
        )
    }
}
