#!/bin/bash
# Session 8: the coop prefill kernel with its next step's loads requested before this step's
# products (software pipelining), at 32 and 64 columns per step, against the kernel before
# (.dev8/ carried: lowbit-base = commit 697bd0b, lowbit-k32 / lowbit-k64 and their ops test
# binaries = the pipelined kernel with COOP_TILE_K 32 / 64).
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for k in k32 k64; do
  timeout 60 .dev8/ops-$k --include-ignored coop_prefill_every_format > $OUT/ops-$k.txt 2>&1; tail -3 $OUT/ops-$k.txt; el
done
show() { grep -h "| lowbit\|^backend" $1 | awk -F'|' '{ if (NF>5) print $4 $8 $9; else print }'; }
for shape in llama-3-8b llama-3.2-1b; do
  for b in base k32 k64; do
    timeout 70 .dev8/lowbit-$b bench --backend webgpu --synthetic $shape --quants int8,int4,int2 --prompt-tokens 512 --gen-tokens 0 --reps 3 > $OUT/$shape-$b.md 2>&1
    echo "== $shape $b"; show $OUT/$shape-$b.md; el
  done
done
