#!/bin/bash
# Session 7, call 1 (device tool, repository root, .gl/ and .peer/ carried): CUDA D2D copy, every
# lowbit figure of the 8B and 1B shapes with the default settings, and beside them the integer
# prefill kernel (LOWBIT_WGPU_INT_PREFILL=1, pp512 only) and the narrow matvec
# (LOWBIT_WGPU_WIDE_MATVEC=0, int3/int4 tg128 only) as A/B against the defaults.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name,clocks.max.memory,memory.total --format=csv,noheader | tee $OUT/copy.txt
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
$NVCC -O2 -o /tmp/d2d .peer/d2d.cu && /tmp/d2d | tee -a $OUT/copy.txt
REF=$(grep -o "[0-9.]* GB/s" $OUT/copy.txt | head -1 | awk '{print $1}')
B=.peer/lowbit
show() { grep -h "| lowbit\|% of the reference" $OUT/$1.md | awk -F'|' '{ if (NF>5) print $4 $8 $9 $10; else print }'; el; }
timeout 220 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 --copy-bandwidth --reference-copy-gbs ${REF:-3013} > $OUT/8b.md 2>&1; show 8b
LOWBIT_WGPU_INT_PREFILL=1 timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/8b-int-prefill.md 2>&1; show 8b-int-prefill
LOWBIT_WGPU_WIDE_MATVEC=0 timeout 60 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4,int3 --prompt-tokens 0 --gen-tokens 128 --reps 2 > $OUT/8b-narrow.md 2>&1; show 8b-narrow
timeout 80 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/1b.md 2>&1; show 1b
LOWBIT_WGPU_INT_PREFILL=1 timeout 40 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/1b-int-prefill.md 2>&1; show 1b-int-prefill
LOWBIT_WGPU_WIDE_MATVEC=0 timeout 30 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int4,int3 --prompt-tokens 0 --gen-tokens 128 --reps 2 > $OUT/1b-narrow.md 2>&1; show 1b-narrow
echo "elapsed $(( $(date +%s) - T0 )) s"
