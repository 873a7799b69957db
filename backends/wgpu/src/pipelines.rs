//! Compute pipelines, created at first use and cached by [`KernelKey`].

use crate::device::GpuDevice;
use crate::shader::KernelKey;
use lowbit_core::Result;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// The multiply-rotate hash of rustc (FxHash): the recording hot path hashes a pipeline key and
/// a bind-group key per dispatch, and these are not attacker-controlled, so SipHash's cost buys
/// nothing.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// How a kernel uses one binding. Binding 0 is always the 64-byte parameter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `var<uniform>`: the parameter block, bound in the upload ring at a dynamic offset.
    Uniform,
    /// `var<storage, read>` of host data in the upload ring, at a dynamic offset.
    Upload,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// A compiled kernel and the layout its bind groups are built against.
pub(crate) struct Kernel {
    /// Unique per cache: keys the bind groups built against `layout`.
    pub id: u32,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// [`KernelKey::label`], for profiles and errors.
    pub label: String,
}

/// Pipelines by key.
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: FastMap<KernelKey, Arc<Kernel>>,
    /// Kernels compiled since the disk cache was last saved.
    pub unsaved: usize,
}

impl PipelineCache {
    /// The kernel for `key` whose bindings are `slots`, compiling it on first use. Shader
    /// compilation errors come back as `WEBGPU_NOT_SUPPORTED` naming the kernel.
    pub fn get(&mut self, dev: &GpuDevice, key: &KernelKey, slots: &[Slot]) -> Result<Arc<Kernel>> {
        if let Some(k) = self.map.get(key) {
            return Ok(k.clone());
        }
        let label = key.label();
        let id = self.map.len() as u32;
        let source = key.source()?;
        let entries: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match s {
                        Slot::Uniform => wgpu::BufferBindingType::Uniform,
                        Slot::Read | Slot::Upload => {
                            wgpu::BufferBindingType::Storage { read_only: true }
                        }
                        Slot::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: matches!(s, Slot::Uniform | Slot::Upload),
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let kernel = dev.scoped(&format!("compiling kernel {label}"), || {
            let d = &dev.device;
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            };
            let module = if dev.checked_shaders && dev.loop_bounding {
                d.create_shader_module(desc)
            } else if dev.checked_shaders {
                // SAFETY: as below for loop bounding; bounds checks stay on.
                unsafe {
                    d.create_shader_module_trusted(
                        desc,
                        wgpu::ShaderRuntimeChecks {
                            force_loop_bounding: false,
                            ..wgpu::ShaderRuntimeChecks::checked()
                        },
                    )
                }
            } else {
                // SAFETY: the source is one of lowbit's own kernels (never user input): every
                // loop is bounded by its parameters, no division has a zero divisor, and the
                // kernel tests check every path's indexing on random awkward sizes; buffer
                // accesses stay under the driver's robust buffer access.
                unsafe {
                    d.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            };
            let layout = d.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
            let pl = d.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: Default::default(),
                cache: dev.pipeline_cache.as_ref().map(|c| &c.cache),
            });
            Kernel {
                id,
                pipeline,
                layout,
                label: label.clone(),
            }
        })?;
        tracing::debug!(kernel = %label, "compiled");
        let kernel = Arc::new(kernel);
        self.unsaved += 1;
        self.map.insert(key.clone(), kernel.clone());
        Ok(kernel)
    }

    /// Labels of every kernel compiled so far, sorted.
    pub fn labels(&self) -> Vec<String> {
        let mut v: Vec<_> = self.map.values().map(|k| k.label.clone()).collect();
        v.sort();
        v
    }
}
