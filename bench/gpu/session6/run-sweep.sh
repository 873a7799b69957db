#!/bin/bash
# Session 6 probe (device tool, repository root, .gl/ and .peer/ carried): the CUDA D2D copy,
# per-kernel GPU timings of an 8B int4 decode step, and forced decode matvec shapes
# (LOWBIT_WGPU_MATVEC=LANESxROWS[xUNROLL], every wide matvec alike) on 8B int4 tg128.
T0=$(date +%s)
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory --format=csv,noheader
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
$NVCC -O2 -o /tmp/d2d .peer/d2d.cu && /tmp/d2d
B=.peer/lowbit
timeout 100 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 32 --reps 1 --kernel-timings 2>&1 | tail -30
tg() { timeout 100 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}'; }
echo "default: $(tg)"
for s in 32x4 64x4 128x4 256x4 64x8 128x8 64x4x1 128x4x1 256x4x1 128x8x1 64x2 128x2; do
  echo "$s: $(LOWBIT_WGPU_MATVEC=$s tg)"
done
echo "default: $(tg)"
echo "elapsed $(( $(date +%s) - T0 )) s"
