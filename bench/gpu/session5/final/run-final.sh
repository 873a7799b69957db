#!/bin/bash
# Session 5 final run: CUDA D2D reference, an A/B of the SwiGLU epilogue (old = without, new =
# with; 8B int4 tg128, alternating), then every lowbit figure with the new binary.
T0=$(date +%s)
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory,memory.total --format=csv,noheader | tee $OUT/copy.txt
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
$NVCC -O2 -o /tmp/d2d .peer/d2d.cu && /tmp/d2d | tee -a $OUT/copy.txt
REF=$(grep -o "[0-9.]* GB/s" $OUT/copy.txt | head -1 | awk '{print $1}')
for round in 1 2 3; do
for v in old new; do
  B=.peer/lowbit-$v; [ $v = new ] && B=.peer/lowbit
  r8=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 5 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  echo "round $round $v: 8B $r8"
done
done | tee $OUT/ab-swiglu-epilogue.txt
B=.peer/lowbit
timeout 240 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 --copy-bandwidth --reference-copy-gbs ${REF:-3013} > $OUT/8b.md 2>&1
grep -E "lowbit|% of|copy bandwidth" $OUT/8b.md
timeout 100 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/1b.md 2>&1
grep lowbit $OUT/1b.md
timeout 80 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/smollm2.md 2>&1
grep lowbit $OUT/smollm2.md
export __GL_SHADER_DISK_CACHE=0
for i in cold warm; do
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc1 timeout 60 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-1b-$i.md 2>&1
  LOWBIT_PIPELINE_CACHE_DIR=/tmp/pc8 timeout 80 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --ttft --prompt-tokens 128 --gen-tokens 0 --reps 1 > /tmp/ttft-8b-$i.md 2>&1
done
for f in /tmp/ttft-*.md; do echo "== $(basename $f .md)"; cat $f; done > $OUT/ttft.md
grep -h -A4 "start-up" /tmp/ttft-*.md | grep -v "^--"
echo "elapsed $(( $(date +%s) - T0 )) s"
