#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the lowbit release binary and the matvec bench binary, .gl/ the Vulkan loader debs.
# Decode after the 4-row matvec, the two-pass argmax, 8-bit attention output and the RoPE
# epilogue: the layer kernels, 8B int4 tg128 at a few matvec shapes, the other widths and
# shapes, and the 8B int4 kernel profile.
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
LOWBIT_MATVEC_BENCH=decode timeout 60 .peer/matvec-bench > $OUT/layer.md 2>&1
cat $OUT/layer.md | grep "^|"
for shape in default 128x2 64x2 128x4; do
  if [ $shape = default ]; then unset LOWBIT_WGPU_MATVEC; else export LOWBIT_WGPU_MATVEC=$shape; fi
  r=$(timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 --copy-bandwidth --reference-copy-gbs 3013 2>&1 | grep -E "tg128|% of")
  echo "8B int4 $shape: $r"
done | tee $OUT/shapes.txt
unset LOWBIT_WGPU_MATVEC
timeout 200 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 0 --gen-tokens 128 --reps 2 --copy-bandwidth --reference-copy-gbs 3013 > $OUT/8b.md 2>&1
grep -E "lowbit|% of" $OUT/8b.md
timeout 100 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 0 --gen-tokens 128 --reps 2 > $OUT/1b.md 2>&1
grep lowbit $OUT/1b.md
timeout 80 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 0 --gen-tokens 128 --reps 2 > $OUT/smollm2.md 2>&1
grep lowbit $OUT/smollm2.md
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 32 --reps 1 --kernel-timings > $OUT/8b-kt.md 2>&1
head -30 $OUT/8b-kt.md | cut -c1-200
