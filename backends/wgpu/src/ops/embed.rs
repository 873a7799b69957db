//! Token lookups and greedy selection: the `Embed` op (ids from the host through the upload
//! ring, or from a device buffer) and the `Argmax` op (one or two passes).

use crate::backend::WgpuBackend;
use crate::buffers::{check_len, distinct, weight, Scratch, State};
use crate::ops::rotate::RotateIo;
use crate::pipelines::Slot;
use crate::recorder::{Bind, Dispatch};
use crate::shader::{Define, KernelKey, ShaderFile};
use crate::tuning::fold;
use lowbit_core::ops::TokenIds;
use lowbit_core::{BufferId, Error, Result, WeightId};

/// Workgroup size of the argmax kernel (one workgroup scans the whole row).
const ARGMAX_WG: u32 = 256;
/// Values per workgroup of the first argmax pass (four per lane).
const ARGMAX_SPAN: usize = 4 * ARGMAX_WG as usize;

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

impl WgpuBackend {
    /// The `Embed` op.
    pub(crate) fn embed(&self, table: WeightId, ids: &TokenIds, out: BufferId) -> Result<()> {
        let ids = match ids {
            TokenIds::Host(t) => EmbedIds::Host(t),
            TokenIds::Device { buf, offset, n } => EmbedIds::Device {
                ids: *buf,
                offset: *offset,
                n: *n,
            },
        };
        self.embed_from(table, ids, out)
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
        if w.stored_cols != w.cols {
            return Err(Error::unsupported(format!(
                "webgpu: embedding tables need a multiple of 32 columns, got {}",
                w.cols
            )));
        }
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
        // A table stored in a rotated basis: the gathered rows are rotated back in place (with
        // device ids, only the rows the lookup wrote).
        let Some(rot) = &w.rotation else {
            return Ok(());
        };
        let (r, signs, cols, table_rows) = (rot.rot, rot.signs.clone(), w.cols, w.rows);
        let out_buf = o.buffer.clone();
        let id_buf = match id_bind {
            Bind::Buffer(b) => Some(b.clone()),
            Bind::Upload(_) => None,
        };
        let io = RotateIo::InPlace {
            buf: &out_buf,
            ids: id_buf.as_ref().map(|b| (b, id_offset, table_rows)),
        };
        self.rotate_dispatch(&mut st, r, &signs, io, n, cols, true)
    }

    /// The `Argmax` op.
    pub(crate) fn argmax(
        &self,
        x: BufferId,
        len: usize,
        out: BufferId,
        out_offset: usize,
    ) -> Result<()> {
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
}
