//! Compute pipelines, created at first use and cached by [`KernelKey`].

use crate::device::GpuDevice;
use crate::shader::KernelKey;
use lowbit_core::Result;
use std::collections::HashMap;
use std::sync::Arc;

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
    map: HashMap<KernelKey, Arc<Kernel>>,
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
            let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
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
                cache: None,
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
