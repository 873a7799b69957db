#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need, fetches the models (cached in ~/.cache/lowbit between runs),
# checks formatting, lints, builds the wasm32 target of core + cpu, then runs every test.
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
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
rustup component add clippy rustfmt >/dev/null 2>&1 || true

# Models live in a cache outside the clone, so CI fetches them once.
cache=${LOWBIT_CACHE:-$HOME/.cache/lowbit}/models
mkdir -p "$cache"
[ -e models ] || ln -s "$cache" models
echo "== fetching models"
scripts/fetch-models.sh all

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== wasm32 build of core + cpu (scalar and simd128)"
cargo build --release --target wasm32-unknown-unknown -p lowbit-core --no-default-features
cargo build --release --target wasm32-unknown-unknown -p lowbit-cpu
RUSTFLAGS="-C target-feature=+simd128" cargo build --release --target wasm32-unknown-unknown \
  -p lowbit-cpu --target-dir target/wasm-simd128
echo "== cargo test"
cargo test --release --workspace
echo "== three replicas behind nginx, one killed mid-load"
scripts/nginx-replicas.sh
