#!/bin/bash
# Session 8: the pipelined coop prefill kernel in three tile shapes of 128 · 128 outputs
# (.dev8/ carried: lowbit-tT built with COOP_TILE_T = T tokens × COOP_TILE_R = 16384 / T rows;
# ops-tT their ops test binaries): 128 × 128 (as committed), 256 tokens × 64 rows (weights
# dequantized once per 256 tokens), 64 tokens × 256 rows (activations converted once per 256
# rows).
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for k in t256 t64; do
  timeout 60 .dev8/ops-$k --include-ignored coop_prefill_every_format > $OUT/ops-$k.txt 2>&1; tail -3 $OUT/ops-$k.txt; el
done
show() { grep -h "| lowbit\|^backend" $1 | awk -F'|' '{ if (NF>5) print $4 $8 $9; else print }'; }
for shape in llama-3-8b llama-3.2-1b; do
  for b in t128 t256 t64; do
    timeout 70 .dev8/lowbit-$b bench --backend webgpu --synthetic $shape --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 3 > $OUT/$shape-$b.md 2>&1
    echo "== $shape $b"; show $OUT/$shape-$b.md; el
  done
done
