#!/bin/bash
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=.peer/lowbit-ablate
run() {
  r=$(LOWBIT_ABLATE="$2" timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 0 --gen-tokens 128 --reps 3 2>&1 | grep -E "tg128" | awk -F'|' '{print $9}')
  echo "$1: $r"
}
for round in 1 2; do
run none "NOTHING_MATCHES"
run attention "attn_split"
run norm "rms_norm["
run swiglu "swiglu["
run qkv "ROPE=1"
run o "WORKGROUP_SIZE=64+ACCUMULATE=1+BITS=4"
run down "WORKGROUP_SIZE=256+ACCUMULATE=1+BITS=4"
run gateup "WORKGROUP_SIZE=64+ACCUMULATE=0+XQ8=1+BITS=4"
run head "BITS=8+WIDE=1"
run argmax "argmax["
run embed "embed["
run all-but-matvec "attn_split,rms_norm[,swiglu[,argmax[,embed["
done | tee $OUT/ablate.txt
