#!/usr/bin/env bash
# One benchmark run on a device, driven by arguments (or a file of them): lowbit's bench rows
# for synthetic model shapes, optionally llama.cpp built on the device and its llama-bench rows
# in the same `lowbit bench` run, the device's copy bandwidth (CUDA device-to-device) and the
# time to first token with a cold and a warm pipeline cache. Every row is appended to
# OUT/results.jsonl (date, commit, command, device, backend, driver, configuration, figures);
# the printed tables go beside it (OUT/SHAPE.md, OUT/copy.txt, OUT/ttft-SHAPE.md).
#
# Usage (from the repository root):
#   bench/run-device.sh [--config FILE] [options]
#     --shapes LIST          synthetic shapes, comma-separated (default llama-3-8b,llama-3.2-1b,smollm2-135m)
#     --quants LIST          lowbit precisions (default int8,int4,int3,int2)
#     --backend NAME         lowbit backend (default webgpu)
#     --prompt-tokens N      prefill test, 0 skips it (default 512)
#     --gen-tokens N         decode test, 0 skips it (default 128)
#     --reps N               repetitions (default 2)
#     --bench-args "ARGS"    more `lowbit bench` flags, e.g. "--profile chrome --kernel-timings"
#     --lowbit LIST          lowbit binaries, comma-separated (default target/release/lowbit);
#                            with several, each shape runs every binary in turn (an A/B)
#     --rounds N             times the lowbit rows are repeated, alternating binaries (default 1)
#     --peer cuda|vulkan|none  build llama.cpp with that backend and run llama-bench beside
#                            lowbit (default none)
#     --peer-quants LIST     llama.cpp types (default Q8_0,Q4_0,Q3_K_M,Q2_K)
#     --copy | --no-copy     CUDA device-to-device copy bandwidth, passed on as
#                            --reference-copy-gbs (default: on where nvcc is found)
#     --ttft                 also time start-up and the first token of a 128-token int4 prompt,
#                            cold then warm pipeline cache
#     --device NAME          device label of the output folder (default from nvidia-smi: h100,
#                            h200; else e.g. 2core-x86)
#     --out DIR              output folder (default $OUT, else bench/results/DATE-DEVICE)
#     --timeout S            limit of one lowbit or llama-bench call, seconds (default 300)
#   A config file holds the same options, one or more a line; `#` starts a comment. Options on
#   the command line come after the file's, so they win.
#
# The peer (--peer) needs, in .peer/ (git-ignored, made before the run): llamacpp-src.tgz
# (vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist as src/), ggml-vocab-llama-bpe.gguf
# (from the sdist's models/) and make-synthetic-gguf.py (from the project's shared/tools/, which
# is used in place when the checkout has it beside or inside it), which makes the shapes' GGUFs.
# A Vulkan build also needs .vk/ (glslc, libshaderc1 from Debian bookworm; libvulkan-dev and
# spirv-headers from trixie, whose headers have VK_EXT_layer_settings). .gl/ may hold the Vulkan
# loader debs (installed first when present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

shapes=llama-3-8b,llama-3.2-1b,smollm2-135m quants=int8,int4,int3,int2 backend=webgpu
prompt=512 gen=128 reps=2 bench_args="" bins=target/release/lowbit rounds=1
peer=none peer_quants=Q8_0,Q4_0,Q3_K_M,Q2_K copy=auto ttft=0 device="" out="${OUT:-}" limit=300

if [ "${1:-}" = --config ]; then
  [ -f "${2:-}" ] || { echo "no config file: ${2:-}" >&2; exit 2; }
  file=$2
  shift 2
  # The file's words, quoted as on a command line, before the command line's.
  eval "config=($(sed 's/#.*//' "$file"))"
  set -- "${config[@]}" "$@"
fi
while [ $# -gt 0 ]; do
  case $1 in
    --shapes) shapes=$2; shift ;;
    --quants) quants=$2; shift ;;
    --backend) backend=$2; shift ;;
    --prompt-tokens) prompt=$2; shift ;;
    --gen-tokens) gen=$2; shift ;;
    --reps) reps=$2; shift ;;
    --bench-args) bench_args=$2; shift ;;
    --lowbit) bins=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --peer) peer=$2; shift ;;
    --peer-quants) peer_quants=$2; shift ;;
    --copy) copy=1 ;;
    --no-copy) copy=0 ;;
    --ttft) ttft=1 ;;
    --device) device=$2; shift ;;
    --out) out=$2; shift ;;
    --timeout) limit=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
case $peer in cuda|vulkan|none) ;; *) echo "--peer: cuda, vulkan or none" >&2; exit 2 ;; esac
for bin in ${bins//,/ }; do
  [ -x "$bin" ] || { echo "no lowbit binary at $bin (cargo build --release, or --lowbit PATH)" >&2; exit 2; }
done

# The GPU's Vulkan loader and NVIDIA's ICD, where the machine needs them installed.
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $icd ] && export VK_DRIVER_FILES=$icd

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
if [ -z "$device" ]; then
  # "NVIDIA H100 80GB HBM3" → h100; no NVIDIA GPU → e.g. 2core-x86.
  device=$(echo "$gpu" | grep -oE '\b[A-Z]+[0-9]{2,4}[A-Z]?\b' | head -1 | tr 'A-Z' 'a-z' || true)
  arch=$(uname -m)
  [ -n "$device" ] || device="$(nproc)core-${arch%_64}"
fi
out=${out:-bench/results/$(date -u +%F)-$device}
mkdir -p "$out"
jsonl=$out/results.jsonl
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
say "device $device, output $out"

# Copy bandwidth: what the GPU can move, the reference decode bandwidth is a fraction of.
ref=""
nvcc=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1 || true)
if [ "$copy" = 1 ] || { [ "$copy" = auto ] && [ -n "$nvcc" ]; }; then
  [ -n "$nvcc" ] || { echo "--copy: no nvcc on this machine" >&2; exit 1; }
  nvidia-smi --query-gpu=name,clocks.max.memory,memory.total --format=csv,noheader | tee "$out/copy.txt"
  "$nvcc" -O2 -o /tmp/lowbit-d2d bench/d2d.cu
  /tmp/lowbit-d2d | tee -a "$out/copy.txt"
  ref=$(grep -o "[0-9.]* GB/s" "$out/copy.txt" | head -1 | awk '{print $1}')
  printf '{"date":"%s","engine":"cuda","device":"%s","backend":"cuda","driver":"%s","test":"d2d_copy","config":{"bytes":1073741824},"copy_gb_per_s":%s}\n' \
    "$(date -u +%FT%TZ)" "$gpu" "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)" "$ref" >> "$jsonl"
fi

# The peer: llama.cpp built here, GGUFs of the same shapes and types made by llama-quantize.
peer_dir=/tmp/lowbit-peer-$peer
if [ "$peer" != none ]; then
  mkdir -p $peer_dir
  if [ ! -x $peer_dir/build/bin/llama-bench ]; then
    rm -rf $peer_dir/src
    tar xzf .peer/llamacpp-src.tgz -C $peer_dir
    command -v cmake >/dev/null || pip install -q cmake ninja
    flags=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF)
    if [ "$peer" = vulkan ]; then
      v=/tmp/lowbit-vkroot/usr
      mkdir -p /tmp/lowbit-vkroot
      for f in .vk/*.deb .gl/libvulkan1_*.deb; do [ -f "$f" ] && dpkg -x "$f" /tmp/lowbit-vkroot; done
      export LD_LIBRARY_PATH=$v/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      flags+=(-DGGML_VULKAN=ON -DCMAKE_PREFIX_PATH=$v -DVulkan_INCLUDE_DIR=$v/include
        -DVulkan_LIBRARY=$v/lib/x86_64-linux-gnu/libvulkan.so -DVulkan_GLSLC_EXECUTABLE=$v/bin/glslc)
    else
      flags+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native)
    fi
    cmake -S $peer_dir/src -B $peer_dir/build -G Ninja "${flags[@]}" > "$out/peer-$peer-build.log" 2>&1
    cmake --build $peer_dir/build -j"$(nproc)" --target llama-bench llama-quantize >> "$out/peer-$peer-build.log" 2>&1
    say "built llama.cpp ($peer)"
  fi
  $peer_dir/build/bin/llama-bench --list-devices > "$out/peer-$peer-devices.txt" 2>&1 || true
fi

# The GGUFs of one shape for the peer, comma-separated (made once, kept in $peer_dir).
peer_models() {
  local shape=$1 shape_args f16 q files=()
  case $shape in
    llama-3-8b) shape_args=(--preset llama-3-8b) ;;
    llama-3.2-1b) shape_args=(--preset llama-3.2-1b --tie-embeddings) ;;
    smollm2-135m) shape_args=(--n-layer 30 --n-embd 576 --n-ff 1536 --n-head 9 --n-head-kv 3 --rope-base 100000 --tie-embeddings) ;;
    *) echo "no peer GGUF recipe for $shape" >&2; return 1 ;;
  esac
  f16=$peer_dir/$shape-f16.gguf
  maker=$(ls .peer/make-synthetic-gguf.py shared/tools/make-synthetic-gguf.py \
    ../shared/tools/make-synthetic-gguf.py 2>/dev/null | head -1)
  [ -f "$f16" ] || python3 "$maker" "$f16" \
    --vocab-file .peer/ggml-vocab-llama-bpe.gguf "${shape_args[@]}" > /dev/null
  for q in ${peer_quants//,/ }; do
    [ -f "$peer_dir/$shape-$q.gguf" ] || $peer_dir/build/bin/llama-quantize "$f16" "$peer_dir/$shape-$q.gguf" "$q" "$(nproc)" > /dev/null 2>&1
    files+=("$peer_dir/$shape-$q.gguf")
  done
  (IFS=,; echo "${files[*]}")
}

# lowbit's rows, shape by shape (and llama-bench's in the same call with --peer).
for shape in ${shapes//,/ }; do
  peer_flags=()
  if [ "$peer" != none ]; then
    peer_flags=(--llama-bench $peer_dir/build/bin/llama-bench --peer-models "$(peer_models "$shape")")
  fi
  for round in $(seq "$rounds"); do
    for bin in ${bins//,/ }; do
      label=$shape
      [ "$bins" = "${bins%,*}" ] || label=$shape-$(basename "$bin")
      [ "$rounds" = 1 ] || label=$label-round$round
      # shellcheck disable=SC2086 # --bench-args is a list of flags
      timeout "$limit" "$bin" bench --backend "$backend" --synthetic "$shape" --quants "$quants" \
        --prompt-tokens "$prompt" --gen-tokens "$gen" --reps "$reps" \
        ${ref:+--copy-bandwidth --reference-copy-gbs "$ref"} $bench_args \
        "${peer_flags[@]}" --output "$jsonl" > "$out/$label.md" 2> "$out/$label.log" || say "$label: failed (see $label.log)"
      peer_flags=()
      grep -E '^\| (lowbit|llama.cpp) ' "$out/$label.md" | awk -F'|' '{print $2 $4 $8 $9}' || true
      say "$label done"
    done
  done
done

# Start-up and time to first token: a cold pipeline cache, then the warm one it left.
if [ "$ttft" = 1 ]; then
  export __GL_SHADER_DISK_CACHE=0 # NVIDIA's own shader cache would hide the cold start
  bin=${bins%%,*}
  for shape in ${shapes//,/ }; do
    cache=$(mktemp -d)
    for state in cold warm; do
      # shellcheck disable=SC2086
      LOWBIT_PIPELINE_CACHE_DIR=$cache timeout "$limit" "$bin" bench --backend "$backend" \
        --synthetic "$shape" --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 \
        $bench_args --output "$jsonl" > "$out/ttft-$shape-$state.md" 2>&1 || say "ttft $shape $state failed"
    done
    rm -rf "$cache"
    say "ttft $shape done"
  done
fi
say "done: $(wc -l < "$jsonl") rows in $jsonl"
