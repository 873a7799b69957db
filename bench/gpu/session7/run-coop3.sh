#!/bin/bash
# Session 7: the coop kernel with 128 x 128 tiles (2 x 4 products per subgroup, four halves per
# workgroup-memory store) and prefill attention on 256 lanes. GPU kernel tests, then pp512.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
timeout 200 .dev7/ops --include-ignored coop_prefill_every_format quantized_matmul_every_format dense_matmul attention 2>&1 | tail -9 | tee $OUT/ops-gpu.txt; el
B=.dev7/lowbit
show() { grep -h "| lowbit" $OUT/$1.md | awk -F'|' '{print $4 $8 $9}'; el; }
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/8b-coop.md 2>&1; show 8b-coop
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 512 --gen-tokens 0 --reps 1 --kernel-timings > $OUT/8b-coop-kt.md 2>&1; grep "^| matmul_tiled\|^| attn" $OUT/8b-coop-kt.md | awk -F'|' '{print substr($2,1,14), $3, $4, $5, $6}'; grep -o "ACCUMULATE=[01]" $OUT/8b-coop-kt.md | tr '\n' ' '; el
