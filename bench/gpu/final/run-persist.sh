#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary and the matvec bench binary, .gl/ the Vulkan loader debs.
# Sweep of LOWBIT_WGPU_WIDE_WORKGROUPS (wide matvec workgroups striding over row groups; 0 =
# one per group): the 8B int4 layer and 8B / 1B int4 decode, 5 reps each.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
for wg in 0 264 528 1056 2112 4224 0 1056; do
  export LOWBIT_WGPU_WIDE_WORKGROUPS=$wg
  l=$(LOWBIT_MATVEC_BENCH=decode timeout 60 .peer/matvec-bench 2>&1 | grep -E "whole layer|swiglu \(8-bit out\)" | awk -F'|' '{printf "%s ", $6}')
  r8=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  r1=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3.2-1b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  echo "workgroups $wg: layer/qkv/o/gateup/down/head $l | 8B $r8 | 1B $r1"
done | tee $OUT/persist.txt
