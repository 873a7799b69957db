#!/bin/bash
# Call 1 of the same-machine comparison: CUDA D2D, every lowbit decode/prefill figure, then the
# llama.cpp CUDA build and as many peer rows as the call's time allows.
T0=$(date +%s)
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory,memory.total --format=csv,noheader | tee $OUT/copy.txt
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
$NVCC -O2 -o /tmp/d2d .peer/d2d.cu && /tmp/d2d | tee -a $OUT/copy.txt
REF=$(grep -o "[0-9.]* GB/s" $OUT/copy.txt | head -1 | awk '{print $1}')
B=.peer/lowbit
timeout 200 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 --copy-bandwidth --reference-copy-gbs ${REF:-3013} > $OUT/8b.md 2>&1
timeout 90 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/1b.md 2>&1
timeout 80 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/smollm2.md 2>&1
grep -h "tg128\|% of the reference" $OUT/*.md
echo "lowbit done in $(( $(date +%s) - T0 )) s"
PEER_BUDGET=$(( 570 - ($(date +%s) - T0) )) bash .peer/run-peer-cuda.sh smollm2-135m
