#!/bin/bash
# A/B: .peer/lowbit-old (HEAD) vs .peer/lowbit-new, and new with LOWBIT_WGPU_FUSED_NORM=0, alternating; 8B and 1B int4 tg128, 3 reps.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for round in 1 2 3; do
for v in old new new-unfused; do
  B=.peer/lowbit-${v%-unfused}
  fn=1; [ "$v" = new-unfused ] && fn=0
  r8=$(LOWBIT_WGPU_FUSED_NORM=$fn timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  r1=$(LOWBIT_WGPU_FUSED_NORM=$fn timeout 90 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  echo "round $round $v: 8B $r8 | 1B $r1"
done
done | tee $OUT/ab.txt
