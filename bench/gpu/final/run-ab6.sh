#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary (new: RoPE epilogue in the narrow matvec too) and the one before it
# (lowbit-old), .gl/ the Vulkan loader debs. Same-machine A/B, alternating, 5 reps each:
# SmolLM2 int8 / int4 and 8B int3 decode (narrow kernels), 8B int4 (unchanged path).
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for round in 1 2; do
  for b in old new; do
    B=.peer/lowbit; [ $b = old ] && B=.peer/lowbit-old
    s=$(timeout 60 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep tg128 | awk -F'|' '{printf "%s ", $9}')
    r3=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int3,int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep tg128 | awk -F'|' '{printf "%s ", $9}')
    echo "round $round $b: SmolLM2 int8/int4 $s | 8B int3/int4 $r3"
  done
done | tee $OUT/ab6.txt
