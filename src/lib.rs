//! lowbit: facade crate.
pub use lowbit_core as core;
