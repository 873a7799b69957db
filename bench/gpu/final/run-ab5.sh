#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary and the matvec bench binary, .gl/ the Vulkan loader debs.
# Same-machine A/B of the SwiGLU epilogue (LOWBIT_WGPU_SWIGLU_EPILOGUE=1 / 0), alternating,
# 5 reps each: the 8B int4 FFN and layer, 8B and 1B int4 decode.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
for round in 1 2 3; do
  for e in 1 0; do
    export LOWBIT_WGPU_SWIGLU_EPILOGUE=$e
    l=$(LOWBIT_MATVEC_BENCH=decode timeout 60 .peer/matvec-bench 2>&1 | grep -E "whole layer|gate.up \+ swiglu" | awk -F'|' '{printf "%s ", $6}')
    r8=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
    r1=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3.2-1b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
    echo "round $round swiglu_epilogue=$e: ffn/layer us $l | 8B $r8 | 1B $r1"
  done
done | tee $OUT/ab5.txt
