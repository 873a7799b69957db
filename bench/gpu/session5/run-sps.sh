#!/bin/bash
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
for round in 1 2; do
for s in 1 2 4 8 16; do
  r8=$(LOWBIT_WGPU_STEPS_PER_SUBMIT=$s timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  r1=$(LOWBIT_WGPU_STEPS_PER_SUBMIT=$s timeout 90 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  echo "round $round steps/submit $s: 8B $r8 | 1B $r1"
done
done | tee $OUT/sps.txt
