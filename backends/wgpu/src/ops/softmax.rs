//! The `Softmax` op: row-wise, in place, one workgroup per row (`softmax.wgsl`).

use crate::backend::WgpuBackend;
use crate::buffers::check_len;
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::{BufferId, Result};

impl WgpuBackend {
    /// Softmax of `rows` rows of `len` values of `x`, in place.
    pub(crate) fn softmax(&self, x: BufferId, rows: usize, len: usize) -> Result<()> {
        if rows == 0 || len == 0 {
            return Ok(());
        }
        // Row-wise reductions as the norms do them.
        let wg = self.tuning.norm_wg;
        let mut st = self.lock();
        check_len("softmax rows", st.buf(x)?, rows * len)?;
        let xb = st.buf(x)?.buffer.clone();
        let key = KernelKey {
            file: ShaderFile::Softmax,
            entry: "softmax",
            defines: self.base_defines(wg),
        };
        let kernel = st
            .pipelines
            .get(&self.dev, &key, &[Slot::Uniform, Slot::ReadWrite])?;
        let (gx, gy) = fold(rows as u32, self.max_groups());
        st.rec.dispatch(
            &self.dev,
            &Dispatch {
                kernel: &kernel,
                params: &[len as u32],
                bindings: &[Bind::Buffer(&xb)],
                groups: [gx, gy, 1],
            },
        )
    }
}
