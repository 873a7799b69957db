#!/bin/bash
# Session 8, same machine as run-same-machine.sh (still warm): time to first token for a
# 128-token prompt, int4, with a cold and then a warm pipeline cache (.peer/lowbit).
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __GL_SHADER_DISK_CACHE=0
B=.peer/lowbit
for i in cold warm; do
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc1 timeout 60 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-1b-$i.md 2>&1
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc8 timeout 80 $B bench --backend webgpu --synthetic llama-3-8b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-8b-$i.md 2>&1
done
for f in /tmp/ttft-*.md; do echo "== $(basename $f .md)"; cat $f; done > $OUT/ttft.md
cat $OUT/ttft.md
