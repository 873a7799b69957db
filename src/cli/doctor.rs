//! `lowbit doctor`: every WebGPU adapter, the CPU's SIMD features, and what `auto` chooses.

use clap::Args;
use lowbit::selection::{resolve, ConfigRequest};
use lowbit::Result;

/// `lowbit doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Prints the report.
pub fn run(a: &DoctorArgs) -> Result<()> {
    // Through the configuration, so `backend.webgpu.allow_software_adapter` (file, environment)
    // counts as it does for the other commands.
    let d = resolve(&ConfigRequest::default())?.detection;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
        return Ok(());
    }
    println!("WebGPU adapters ({}):", d.adapters.len());
    if d.adapters.is_empty() {
        println!("  none");
    }
    for (i, ad) in d.adapters.iter().enumerate() {
        println!(
            "  [{i}] {} — {} {}{}",
            ad.name,
            ad.backend,
            ad.device_type,
            if ad.software { " (software)" } else { "" }
        );
        println!(
            "      vendor 0x{:04x} device 0x{:04x}, driver {}",
            ad.vendor, ad.device_id, ad.driver
        );
        println!(
            "      compute shaders: {}; features: {}",
            if ad.compute { "yes" } else { "no" },
            if ad.features.is_empty() {
                "none of shader-f16/subgroups/timestamp-query".to_string()
            } else {
                ad.features.join(", ")
            }
        );
        for (k, v) in &ad.limits {
            println!("      {k:34} {v}");
        }
    }
    println!("CPU:");
    println!("  {}", d.cpu.device);
    println!(
        "  kernels: {}; SIMD: {}; {} logical cores",
        d.cpu.isa,
        d.cpu.simd.join(", "),
        d.cpu.cores
    );
    println!("Backends (fallback order):");
    for b in &d.capabilities.backends {
        println!(
            "  {:7} {} — {}",
            b.name,
            if b.available {
                "available  "
            } else {
                "unavailable"
            },
            b.detail
        );
    }
    println!("auto backend: {} — {}", d.backend.name, d.backend.reason);
    println!("auto profile: {} — {}", d.profile.name, d.profile.reason);
    println!(
        "profiles: auto, {}",
        lowbit::core::registry::profile_names().join(", ")
    );
    Ok(())
}
