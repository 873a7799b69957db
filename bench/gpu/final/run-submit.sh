#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary, .gl/ the Vulkan loader debs. What a submission boundary costs:
# 8B int4 decode with one submission per step (default) and with each step split into 2, 4
# and 8 (LOWBIT_WGPU_DISPATCHES_PER_SUBMIT), alternating, 5 reps each.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
for round in 1 2; do
  for n in 0 132 66 33; do
    if [ $n = 0 ]; then unset LOWBIT_WGPU_DISPATCHES_PER_SUBMIT; else export LOWBIT_WGPU_DISPATCHES_PER_SUBMIT=$n; fi
    r=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 --host-timings 2>&1 | grep -E "tg128|host:" | awk -F'|' '{printf "%s %s %s; ", $2, $9, $4}')
    echo "round $round dispatches/submit $n: $r"
  done
done | tee $OUT/submit.txt
