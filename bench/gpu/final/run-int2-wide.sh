#!/bin/bash
# Kept as run on the device: the int2 rows after the wide 2-bit path (expects .peer/lowbit, .gl/).
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit
timeout 150 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int2,int4 --prompt-tokens 512 --gen-tokens 128 --reps 2 --reference-copy-gbs 3013 > $OUT/8b-int2.md 2>&1
grep -E "lowbit|reference copy" $OUT/8b-int2.md
timeout 100 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/1b-int2.md 2>&1
grep lowbit $OUT/1b-int2.md
timeout 80 $B bench --backend webgpu --synthetic smollm2-135m --quants int2 --prompt-tokens 512 --gen-tokens 128 --reps 2 > $OUT/smollm2-int2.md 2>&1
grep lowbit $OUT/smollm2-int2.md
