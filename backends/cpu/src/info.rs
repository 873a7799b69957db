//! Description of the host CPU for [`lowbit_core::BackendInfo`].

/// The CPU model name from `/proc/cpuinfo` (Linux), or the architecture name elsewhere.
pub(crate) fn cpu_model() -> String {
    #[cfg(target_os = "linux")]
    {
        if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
            let name = text
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string());
            if let Some(n) = name.filter(|n| !n.is_empty()) {
                return n;
            }
        }
    }
    format!("{} CPU", std::env::consts::ARCH)
}
