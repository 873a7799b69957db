//! The shared op conformance suite (`lowbit_core::conformance`) on the CPU backend: every
//! instruction set this machine has, with activations quantized to int8 (the default) and
//! exact. Run with `--nocapture` to see the table.

mod common;

use lowbit_core::block_on;
use lowbit_core::conformance::{run_all, table};

#[test]
fn every_case_passes_on_every_isa_and_activation_mode() {
    let mut failed = Vec::new();
    for exact in [false, true] {
        for backend in common::backends() {
            let backend = backend.exact_activations(exact);
            let results = block_on(run_all(&backend));
            println!(
                "CPU {} exact_activations={exact}\n{}",
                backend.isa().name(),
                table(&results)
            );
            assert!(!results.is_empty());
            failed.extend(results.into_iter().filter(|r| !r.passed).map(|r| {
                format!(
                    "{} exact={exact}: {} {} {}",
                    r.backend, r.op, r.shape, r.format
                )
            }));
        }
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}
