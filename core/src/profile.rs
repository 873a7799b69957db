//! The [`BrowserProfile`] trait: a named set of constraints and tuning for the WebGPU backend.

/// Constraints and tuning of one target (a browser, a device class, or native).
pub trait BrowserProfile: Send + Sync {
    /// Name: `chrome`, `edge`, `firefox`, `safari`, `mobile`, `native`, or a plugin's.
    fn name(&self) -> &str;
    /// Workgroup size of the matmul kernels `(x, y)`.
    fn matmul_workgroup(&self) -> (u32, u32);
    /// Weight bit widths this target can run.
    fn supported_bits(&self) -> &[u8];
    /// Whether f16 shader arithmetic may be used.
    fn allow_f16(&self) -> bool;
    /// Whether subgroup operations may be used.
    fn allow_subgroups(&self) -> bool;
    /// Largest storage-buffer binding, bytes.
    fn max_storage_binding(&self) -> u64;
}
