#!/usr/bin/env bash
# Runs the README's "run the main job" command verbatim, as a new user would: in a fresh clone
# of this repository (its committed state), with HOME set to an empty folder. Fails unless the
# command exits 0 and prints generated text. The test command (scripts/test.sh) runs it, so a
# README whose first command breaks turns CI red.
#
# Reused so CI does not download or build twice: pip's and npm's package caches (their own
# cache options, PIP_CACHE_DIR / npm_config_cache), the Rust toolchain (CARGO_HOME,
# RUSTUP_HOME) and a copy of the checkout's compiled dependencies (a copy, so the clone's build
# never replaces the checkout's own `target/release/lowbit`). Nothing of lowbit's own state is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
real_home=${HOME:-/root}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# The first ```sh block under "## Quick start".
cmd=$(awk '/^## Quick start/{q=1} q&&/^```sh/{f=1;next} f&&/^```/{exit} f{print}' "$root/README.md")
[ -n "$cmd" ] || { echo "readme-run: no \`\`\`sh block under '## Quick start' in README.md" >&2; exit 1; }
echo "== README run command, in a fresh clone with an empty HOME:"
echo "   $cmd"

git clone --quiet "$root" "$tmp/clone"
mkdir -p "$tmp/target"
[ -d "$root/target/release" ] && cp -a "$root/target/release" "$tmp/target/"
mkdir -p "$tmp/home"
set +e
(cd "$tmp/clone" && env -u LOWBIT_MODELS_DIR -u XDG_RUNTIME_DIR -u XDG_CACHE_HOME \
  HOME="$tmp/home" \
  PIP_CACHE_DIR="${PIP_CACHE_DIR:-$real_home/.cache/pip}" \
  npm_config_cache="${npm_config_cache:-$real_home/.npm}" \
  CARGO_HOME="${CARGO_HOME:-$real_home/.cargo}" \
  RUSTUP_HOME="${RUSTUP_HOME:-$real_home/.rustup}" \
  CARGO_TARGET_DIR="$tmp/target" \
  bash -c "$cmd") >"$tmp/out" 2>"$tmp/err"
rc=$?
set -e
echo "-- stdout (tail):"; tail -n 5 "$tmp/out"
echo "-- stderr (tail):"; tail -n 5 "$tmp/err"
if [ "$rc" -ne 0 ]; then
  echo "readme-run: FAILED: the README's run command exited $rc" >&2
  exit 1
fi
if ! grep -q '[[:alnum:]]' "$tmp/out"; then
  echo "readme-run: FAILED: the README's run command printed no generated text" >&2
  exit 1
fi
if grep -q '^error:' "$tmp/err"; then
  echo "readme-run: FAILED: the default path printed error lines" >&2
  exit 1
fi
[ -f "$tmp/clone/models/SmolLM2-135M-Instruct.Q4_1.gguf" ] \
  || { echo "readme-run: FAILED: the model was not fetched into the clone's models/" >&2; exit 1; }
echo "readme-run: ok (exit 0, generated text printed, no error lines)"
