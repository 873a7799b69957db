//! The `Im2col` op: convolution columns (`im2col.wgsl`), so a conv1d, conv2d or patch
//! embedding runs as the `Linear` after it.

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct};
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::ops::Im2col;
use lowbit_core::{BufferId, Error, Result};

impl WgpuBackend {
    /// The columns of `x` (`channels` planes of `height × width`) into `out`
    /// (`out_rows × row_len`, see [`Im2col`]).
    pub(crate) fn im2col(&self, x: BufferId, out: BufferId, s: &Im2col) -> Result<()> {
        distinct("im2col", x, out)?;
        if s.kernel_h == 0 || s.kernel_w == 0 || s.stride == 0 {
            return Err(Error::invalid_config(format!(
                "im2col needs a kernel and a stride of at least 1, got {}x{} stride {}",
                s.kernel_h, s.kernel_w, s.stride
            )));
        }
        let (oh, ow) = s.out_grid();
        let total = oh * ow * s.row_len();
        if total == 0 {
            return Ok(());
        }
        if total > u32::MAX as usize {
            return Err(Error::invalid_config(format!(
                "im2col output of {total} values exceeds the kernel's 32-bit indices"
            )));
        }
        let wg = self.tuning.elementwise_wg;
        let mut st = self.lock();
        check_len("im2col input", st.buf(x)?, s.channels * s.height * s.width)?;
        check_len("im2col output", st.buf(out)?, total)?;
        let (xb, ob) = (st.buf(x)?.buffer.clone(), st.buf(out)?.buffer.clone());
        let key = KernelKey {
            file: ShaderFile::Im2col,
            entry: "im2col",
            defines: self.base_defines(wg),
        };
        use Slot::*;
        let kernel = st
            .pipelines
            .get(&self.dev, &key, &[Uniform, Read, ReadWrite])?;
        let (gx, gy) = fold(total.div_ceil(wg as usize) as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[
                    total as u32,
                    s.row_len() as u32,
                    s.height as u32,
                    s.width as u32,
                    s.kernel_h as u32,
                    s.kernel_w as u32,
                    s.stride as u32,
                    s.pad_h() as u32,
                    s.pad as u32,
                    ow as u32,
                ],
                bindings: &[Bind::Buffer(&xb), Bind::Buffer(&ob)],
                groups: [gx, gy, 1],
            },
        )
    }
}
