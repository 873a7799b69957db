#!/bin/bash
# Session 7: padded tiles (coop matmul: 80-byte tile rows; prefill attention: keys HEAD_DIM + 1
# apart). Kernel tests on the GPU, then pp512 and the 8B int4 kernel timings.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
timeout 200 .dev7/ops --include-ignored coop_prefill_every_format quantized_matmul_every_format attention_decode_and_prefill_gqa 2>&1 | tail -8 | tee $OUT/ops-gpu.txt; el
B=.dev7/lowbit
show() { grep -h "| lowbit" $OUT/$1.md | awk -F'|' '{print $4 $8 $9}'; el; }
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/8b-coop.md 2>&1; show 8b-coop
timeout 60 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/1b-coop.md 2>&1; show 1b-coop
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 512 --gen-tokens 0 --reps 1 --kernel-timings > $OUT/8b-coop-kt.md 2>&1; grep -A8 -i "kernel timings" $OUT/8b-coop-kt.md | cut -c1-60,400-; el
