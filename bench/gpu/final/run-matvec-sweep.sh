#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): it expects
# .peer/ to hold the lowbit release binary, llamacpp-src.tgz (llama.cpp from the llama-cpp-python
# sdist), make-synthetic-gguf.py, ggml-vocab-llama-bpe.gguf and d2d.cu, and .gl/ the Vulkan loader debs.
# Device run P: decode matvec shape sweep (lanes x rows) with and without the fused RMSNorm.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
for shape in 64x4 64x8 64x16 128x4 128x8 128x16 256x4 256x8; do
  for fn in 1 0; do
    r=$(LOWBIT_WGPU_MATVEC=$shape LOWBIT_WGPU_FUSED_NORM=$fn timeout 60 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 2 2>&1 | grep tg128 | awk -F'|' '{print $9}')
    echo "matvec $shape fused_norm=$fn: $r"
  done
done | tee $OUT/sweep.txt
