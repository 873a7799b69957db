#!/bin/bash
# Session 7, call 2 (same machine as call 1): lowbit's SmolLM2-shape figures (and the integer
# prefill beside them), time to first token for a 128-token prompt with a cold and a warm
# pipeline cache (1B and 8B int4), then llama.cpp CUDA built from the sdist and its rows for the
# shapes given (bench/gpu/session6/run-peer.sh).
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
show() { grep -h "| lowbit" $OUT/$1.md | awk -F'|' '{print $4 $8 $9 $10}'; el; }
timeout 60 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/smollm2.md 2>&1; show smollm2
LOWBIT_WGPU_INT_PREFILL=1 timeout 30 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/smollm2-int-prefill.md 2>&1; show smollm2-int-prefill
export __GL_SHADER_DISK_CACHE=0
for i in cold warm; do
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc1 timeout 60 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-1b-$i.md 2>&1
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc8 timeout 80 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-8b-$i.md 2>&1
done
unset __GL_SHADER_DISK_CACHE
for f in /tmp/ttft-*.md; do echo "== $(basename $f .md)"; cat $f; done > $OUT/ttft.md
grep -h -A3 "start-up" /tmp/ttft-*.md | grep "|.*ms\|cold\|warm" | grep -v "^|---"; el
PEER=cuda PEER_BUDGET=$(( 575 - ($(date +%s) - T0) )) bash bench/gpu/session6/run-peer.sh "$@"
