//! GPU timestamps around every compute pass, summed per kernel.

use crate::device::GpuDevice;
use crate::recorder::read_mapped;
use lowbit_core::Result;
use std::collections::BTreeMap;

/// The pseudo-kernel under which the time between consecutive kernels is summed.
const GAP: &str = "(between kernels: barrier and launch)";

/// Passes timed per submission (two timestamps each).
const PASSES: u32 = 1024;

pub use lowbit_core::backend::KernelTiming;

/// Timestamp queries of the open submission and the totals so far.
pub(crate) struct Profiler {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    labels: Vec<String>,
    totals: BTreeMap<String, (u64, u64)>,
    period_ns: f64,
}

impl Profiler {
    pub fn new(dev: &GpuDevice) -> Self {
        let bytes = u64::from(PASSES) * 2 * 8;
        let mk = |usage| {
            dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Profiler {
            queries: dev.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: PASSES * 2,
            }),
            resolve: mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            labels: Vec::new(),
            totals: BTreeMap::new(),
            period_ns: f64::from(dev.queue.get_timestamp_period()),
        }
    }

    /// Whether the query set is used up (the recorder submits first).
    pub fn full(&self) -> bool {
        self.labels.len() as u32 >= PASSES
    }

    /// Timestamp writes for the next pass, timed under `label`.
    pub fn begin_pass(&mut self, label: &str) -> wgpu::ComputePassTimestampWrites<'_> {
        let i = self.labels.len() as u32;
        self.labels.push(label.to_string());
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        }
    }

    /// Records the resolve of this submission's queries.
    pub fn resolve(&mut self, enc: &mut wgpu::CommandEncoder) {
        let n = self.labels.len() as u32 * 2;
        if n == 0 {
            return;
        }
        enc.resolve_query_set(&self.queries, 0..n, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, u64::from(n) * 8);
    }

    /// Waits for the submission and adds its timings to the totals.
    pub fn collect(&mut self, dev: &GpuDevice) -> Result<()> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let bytes = read_mapped(dev, &self.readback, self.readback.size())?;
        let ts: &[u64] = bytemuck::cast_slice(&bytes);
        let to_ns = |ticks: u64| (ticks as f64 * self.period_ns) as u64;
        for (i, label) in self.labels.drain(..).enumerate() {
            let e = self.totals.entry(label).or_default();
            e.0 += to_ns(ts[2 * i + 1].saturating_sub(ts[2 * i]));
            e.1 += 1;
            // The device's time between one kernel's end and the next one's start (barriers,
            // launch): part of a step's time that no kernel accounts for.
            if i > 0 {
                let e = self.totals.entry(GAP.to_string()).or_default();
                e.0 += to_ns(ts[2 * i].saturating_sub(ts[2 * i - 1]));
                e.1 += 1;
            }
        }
        Ok(())
    }

    /// Totals per kernel, longest first.
    pub fn timings(&self) -> Vec<KernelTiming> {
        let mut v: Vec<_> = self
            .totals
            .iter()
            .map(|(k, (ns, n))| KernelTiming {
                kernel: k.clone(),
                total_ns: *ns,
                count: *n,
            })
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.total_ns));
        v
    }

    /// Forgets the totals.
    pub fn reset(&mut self) {
        self.totals.clear();
    }
}
