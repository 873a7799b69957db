#!/bin/bash
# Session 8, the machine of the Vulkan peer's 8B run still warm (.gl/ .peer/ .vk/ carried;
# .peer/lowbit built from this commit): CUDA D2D, lowbit 8B under the default (native)
# profile, llama.cpp Vulkan 1B and SmolLM2 rows, then lowbit 1B and SmolLM2.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory,memory.total --format=csv,noheader | tee $OUT/copy.txt
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
$NVCC -O2 -o /tmp/d2d .peer/d2d.cu && /tmp/d2d | tee -a $OUT/copy.txt
REF=$(grep -o "[0-9.]* GB/s" $OUT/copy.txt | head -1 | awk '{print $1}')
B=.peer/lowbit
show() { grep -h "| lowbit\|% of the reference\|^backend" $OUT/$1.md | awk -F'|' '{ if (NF>5) print $4 $8 $9 $10; else print }'; el; }
timeout 200 $B bench --backend webgpu --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 --copy-bandwidth --reference-copy-gbs ${REF:-3013} > $OUT/8b.md 2>&1; show 8b
PEER=vulkan PEER_BUDGET=$(( 520 - ($(date +%s) - T0) - 120 )) bash bench/gpu/session6/run-peer.sh llama-3.2-1b smollm2-135m; el
timeout 70 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/1b.md 2>&1; show 1b
timeout 50 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/smollm2.md 2>&1; show smollm2
