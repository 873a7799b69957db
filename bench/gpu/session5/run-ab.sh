#!/bin/bash
# A/B: .peer/lowbit-old vs .peer/lowbit-new alternating, 8B and 1B int4 tg128, 3 reps each.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for round in 1 2 3; do
for v in old new; do
  B=.peer/lowbit-$v
  r8=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  r1=$(timeout 90 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  echo "round $round $v: 8B $r8 | 1B $r1"
done
done | tee $OUT/ab.txt
timeout 120 .peer/lowbit-new bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 64 --reps 1 --kernel-timings > $OUT/8b-kt.md 2>&1
