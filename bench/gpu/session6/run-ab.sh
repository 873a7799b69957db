#!/bin/bash
# Session 6 A/B (run through the `device` tool from the repository root, .gl/ and .peer/
# carried): old = .peer/lowbit-old (the norms as their own kernels), new = .peer/lowbit (the
# residual adds prepare the next norm's input). 8B and 1B int4 tg128, alternating rounds.
T0=$(date +%s)
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory --format=csv,noheader
tg() { timeout 100 $1 bench --backend webgpu --profile chrome --synthetic $2 --quants ${3:-int4} --prompt-tokens 0 --gen-tokens 128 --reps ${REPS:-5} 2>&1 | grep -E "tg128" | awk -F'|' '{print $3 $9}' | tr '\n' ' '; }
for round in 1 2 3; do
  for v in old new; do
    B=.peer/lowbit-$v; [ $v = new ] && B=.peer/lowbit
    echo "round $round $v: 8B $(tg $B llama-3-8b) 1B $(tg $B llama-3.2-1b)"
  done
done
echo "elapsed $(( $(date +%s) - T0 )) s"
