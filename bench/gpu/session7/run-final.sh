#!/bin/bash
# Session 7 final lowbit figures (.dev7/ carried: lowbit of the final commit, d2d.cu): CUDA D2D,
# decode and prefill of every shape and width, TTFT with a cold and a warm pipeline cache.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory,memory.total --format=csv,noheader | tee $OUT/copy.txt
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
$NVCC -O2 -o /tmp/d2d .dev7/d2d.cu && /tmp/d2d | tee -a $OUT/copy.txt
REF=$(grep -o "[0-9.]* GB/s" $OUT/copy.txt | head -1 | awk '{print $1}')
B=.dev7/lowbit
show() { grep -h "| lowbit\|% of the reference" $OUT/$1.md | awk -F'|' '{ if (NF>5) print $4 $8 $9 $10; else print }'; el; }
timeout 200 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 --copy-bandwidth --reference-copy-gbs ${REF:-3013} > $OUT/8b.md 2>&1; show 8b
timeout 80 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/1b.md 2>&1; show 1b
timeout 60 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/smollm2.md 2>&1; show smollm2
export __GL_SHADER_DISK_CACHE=0
for i in cold warm; do
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc1 timeout 60 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-1b-$i.md 2>&1
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc8 timeout 80 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-8b-$i.md 2>&1
done
for f in /tmp/ttft-*.md; do echo "== $(basename $f .md)"; cat $f; done > $OUT/ttft.md
grep -h -A3 "start-up" /tmp/ttft-*.md | grep "cold\|warm" ; el
