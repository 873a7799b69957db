//! Records the git commit the `lowbit` binary is built from (`LOWBIT_COMMIT`), so every result
//! it writes (`--output`) names the code that measured it. Outside a git checkout (a source
//! archive, a vendored copy) the commit is `unknown`.

use std::process::Command;

/// The package's folder, read when the script runs: cargo may reuse one compiled build script
/// for checkouts at other paths (its hash takes the path relative to the workspace), so a
/// compile-time `env!` would name whichever checkout compiled it first.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(Into::into)
        .unwrap_or_default()
}

/// Runs git in the package's folder; `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LOWBIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it points at (a commit),
    // loose or packed. Only paths that exist are named: cargo reruns a build script on every
    // build while a named path is missing.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for p in watched.into_iter().flatten() {
        let p = manifest_dir().join(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
