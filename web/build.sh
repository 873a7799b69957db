#!/usr/bin/env bash
# Builds lowbit for the browser: the engine compiled to wasm32 with simd128, and its JS glue
# (wasm-bindgen, ES module) in web/pkg/. The page's API is web/js/lowbit.js.
# Usage: web/build.sh [--debug]
# Needs: rustup target wasm32-unknown-unknown, wasm-bindgen-cli 0.2.130
#   (`cargo install wasm-bindgen-cli --version 0.2.130`; the version must match Cargo.lock).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=release
[ "${1:-}" = --debug ] && profile=debug
command -v wasm-bindgen >/dev/null || {
  echo "error: wasm-bindgen not found: cargo install wasm-bindgen-cli --version 0.2.130" >&2; exit 1; }
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')
have=$(wasm-bindgen --version | awk '{print $2}')
[ "$want" = "$have" ] || {
  echo "error: wasm-bindgen $have, but Cargo.lock has $want: cargo install wasm-bindgen-cli --version $want" >&2; exit 1; }
flags=(--target wasm32-unknown-unknown -p lowbit-web --target-dir target/wasm-simd128)
[ "$profile" = release ] && flags+=(--release)
RUSTFLAGS="-C target-feature=+simd128" cargo build "${flags[@]}"
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
  "target/wasm-simd128/wasm32-unknown-unknown/$profile/lowbit_web.wasm"
echo "web/pkg: $(du -h web/pkg/lowbit_web_bg.wasm | cut -f1) wasm" >&2
