//! The shared op conformance suite (`lowbit_core::conformance`) on Mesa's lavapipe (CI
//! installs mesa-vulkan-drivers; no adapter is a failure, not a skip), on two backends that
//! between them take every kernel path: the adapter's own (f16 arithmetic and subgroup
//! reductions where it has them) with the wide decode matvec and the norm fused into the
//! narrow one, and f32 arithmetic with workgroup-memory reductions and neither fusion. (Each
//! configuration compiles its own kernels, minutes of LLVM on a cold Mesa shader cache, so the
//! other two combinations are left to `tests/ops/`.) Run with `--nocapture` to see the table.

use lowbit_core::block_on;
use lowbit_core::conformance::{run_all, table};
use lowbit_wgpu::{WgpuBackend, WgpuOptions};

fn backend(options: WgpuOptions) -> WgpuBackend {
    WgpuBackend::new(&options).expect("a software WebGPU adapter (install mesa-vulkan-drivers)")
}

#[test]
fn every_case_passes_on_every_kernel_path() {
    let auto = backend(WgpuOptions::software()).paths();
    let configs = [(auto.f16, auto.subgroups, true), (false, false, false)];
    let mut failed = Vec::new();
    for (f16, subgroups, wide) in configs {
        let b = backend(WgpuOptions {
            f16: Some(f16),
            subgroups: Some(subgroups),
            wide_matvec: wide,
            fused_norm: wide,
            ..WgpuOptions::software()
        });
        let label = format!("f16={f16} subgroups={subgroups} wide_matvec={wide}");
        let results = block_on(run_all(&b));
        println!("WebGPU {label}\n{}", table(&results));
        assert!(!results.is_empty());
        failed.extend(
            results
                .into_iter()
                .filter(|r| !r.passed)
                .map(|r| format!("{label}: {} {} {}", r.op, r.shape, r.format)),
        );
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}
