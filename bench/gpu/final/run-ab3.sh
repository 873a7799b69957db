#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary (new) and the one before the striding matvec (lowbit-old), .gl/ the
# Vulkan loader debs. Same-machine A/B, alternating: old, new (one workgroup per row group),
# new with 4224 striding workgroups; 8B int4 decode, 5 reps each.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for round in 1 2 3; do
  for v in old new:0 new:4224 new:1056; do
    b=${v%%:*}; wg=${v#*:}; [ "$wg" = "$v" ] && wg=0
    B=.peer/lowbit; [ $b = old ] && B=.peer/lowbit-old
    r=$(LOWBIT_WGPU_WIDE_WORKGROUPS=$wg timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
    echo "round $round $v: 8B $r"
  done
done | tee $OUT/ab3.txt
