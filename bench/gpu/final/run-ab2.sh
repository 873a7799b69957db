#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary and the matvec bench binary, .gl/ the Vulkan loader debs.
# A/B: the RMSNorm fused into the q|k|v + RoPE matvec (default) or writing 8-bit blocks
# (LOWBIT_WGPU_FUSED_NORM=0), alternating, 5 reps each; then the 8B int4 kernel profile.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
LOWBIT_MATVEC_BENCH=decode timeout 60 .peer/matvec-bench 2>&1 | grep "^|" | head -9 | tee $OUT/layer.md
for fn in 1 0 1 0; do
  for m in llama-3-8b llama-3.2-1b; do
    r=$(LOWBIT_WGPU_FUSED_NORM=$fn timeout 90 $B bench --backend webgpu --profile chrome --synthetic $m --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
    echo "$m int4 fused_norm=$fn: $r"
  done
done | tee $OUT/ab.txt
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 32 --reps 1 --kernel-timings > $OUT/8b-kt.md 2>&1
sed -E 's/USE_SUBGROUPS=1,//; s/WEIGHT_KIND=0,//; s/GROUP_SIZE=32,ASYMMETRIC=0,USE_F16=1,//; s/TILE_T=32,TILE_R=64,TILE_K=32,//' $OUT/8b-kt.md | grep "^|" | tail -16
