//! The `lowbit` command-line tool.

mod cli;

/// Without a desktop session (no `XDG_RUNTIME_DIR`) there is no display whose GPU Mesa's
/// implicit Vulkan layer `VK_LAYER_MESA_device_select` could put first, yet it still tries to
/// connect to a Wayland display while adapters are enumerated and prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` once per probe. lowbit
/// ranks adapters itself, so the layer is turned off through its own switch
/// (`NODEVICE_SELECT=1`, the manifest's `disable_environment`), unless a log level is asked for
/// (`LOWBIT_LOG`, `RUST_LOG`: then the driver's messages stay visible) or the user set it.
fn quiet_driver_probe() {
    let asked_for_logs = ["LOWBIT_LOG", "RUST_LOG"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let no_session = std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| d.is_empty());
    if no_session && !asked_for_logs && std::env::var_os("NODEVICE_SELECT").is_none() {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() {
    quiet_driver_probe();
    std::process::exit(cli::run());
}
