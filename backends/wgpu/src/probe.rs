//! Lists the WebGPU adapters of this machine without opening a device (`lowbit doctor`).

use lowbit_core::config::GpuCapabilities;

/// One adapter as the capability detector sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterReport {
    /// Adapter name.
    pub name: String,
    /// Graphics API (`Vulkan`, `Metal`, `Dx12`, `Gl`).
    pub backend: String,
    /// PCI vendor id.
    pub vendor: u32,
    /// PCI device id.
    pub device_id: u32,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` (software) or `Other`.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether compute shaders run on it at all.
    pub compute: bool,
    /// A software rasteriser (lavapipe, SwiftShader): `auto` never prefers it over the native
    /// CPU backend.
    pub software: bool,
    /// Feature names that matter to lowbit (`shader-f16`, `subgroups`, `timestamp-query`).
    pub features: Vec<String>,
    /// Key limits, by their WebGPU names.
    pub limits: Vec<(String, u64)>,
    /// The same facts for the config validator.
    pub capabilities: GpuCapabilities,
}

/// Every adapter of every graphics API wgpu was built with.
pub fn probe_adapters() -> Vec<AdapterReport> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            let f = a.features();
            let l = a.limits();
            let mut features = Vec::new();
            for (flag, name) in [
                (wgpu::Features::SHADER_F16, "shader-f16"),
                (wgpu::Features::SUBGROUP, "subgroups"),
                (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
                (
                    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
                    "cooperative-matrix",
                ),
            ] {
                if f.contains(flag) {
                    features.push(name.to_string());
                }
            }
            let software = info.device_type == wgpu::DeviceType::Cpu;
            let limits = vec![
                (
                    "maxStorageBufferBindingSize".into(),
                    l.max_storage_buffer_binding_size,
                ),
                ("maxBufferSize".into(), l.max_buffer_size),
                (
                    "maxUniformBufferBindingSize".into(),
                    l.max_uniform_buffer_binding_size,
                ),
                (
                    "maxComputeInvocationsPerWorkgroup".into(),
                    l.max_compute_invocations_per_workgroup.into(),
                ),
                (
                    "maxComputeWorkgroupSizeX".into(),
                    l.max_compute_workgroup_size_x.into(),
                ),
                (
                    "maxComputeWorkgroupSizeY".into(),
                    l.max_compute_workgroup_size_y.into(),
                ),
                (
                    "maxComputeWorkgroupSizeZ".into(),
                    l.max_compute_workgroup_size_z.into(),
                ),
                (
                    "maxComputeWorkgroupStorageSize".into(),
                    l.max_compute_workgroup_storage_size.into(),
                ),
                (
                    "maxComputeWorkgroupsPerDimension".into(),
                    l.max_compute_workgroups_per_dimension.into(),
                ),
            ];
            AdapterReport {
                capabilities: GpuCapabilities {
                    name: info.name.clone(),
                    shader_f16: f.contains(wgpu::Features::SHADER_F16),
                    subgroups: f.contains(wgpu::Features::SUBGROUP),
                    max_workgroup_size: [
                        l.max_compute_workgroup_size_x,
                        l.max_compute_workgroup_size_y,
                        l.max_compute_workgroup_size_z,
                    ],
                    max_invocations: l.max_compute_invocations_per_workgroup,
                    max_storage_binding: l.max_storage_buffer_binding_size,
                    software,
                },
                name: info.name,
                backend: format!("{:?}", info.backend),
                vendor: info.vendor,
                device_id: info.device,
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                compute: a
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
                software,
                features,
                limits,
            }
        })
        .collect()
}
