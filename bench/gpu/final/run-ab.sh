#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary and the matvec bench binary, .gl/ the Vulkan loader debs.
# A/B of decode matvec shapes on 8B int4 (alternating, 5 reps each), with the GPU clocks, and
# the layer kernels after the attention and norm changes.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
LOWBIT_MATVEC_BENCH=decode timeout 60 .peer/matvec-bench 2>&1 | grep "^|" | tee $OUT/layer.md
for shape in 128x2 default 128x2 default 64x2 128x2x2 128x4; do
  if [ $shape = default ]; then unset LOWBIT_WGPU_MATVEC; else export LOWBIT_WGPU_MATVEC=$shape; fi
  for m in llama-3-8b llama-3.2-1b; do
    r=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic $m --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
    echo "$m int4 $shape: $r  clocks $(nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader)"
  done
done | tee $OUT/ab.txt
