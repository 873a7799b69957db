#!/bin/bash
# Session 7: the cooperative-matrix prefill kernel on the GPU. .dev7/ carried: `lowbit` and the
# wgpu ops test binary (`cargo test --release -p lowbit-wgpu --test ops --no-run`). First the
# kernel tests on the GPU (the coop test is ignored in CI, whose lavapipe has no cooperative
# matrices; the other matmul tests run the coop tiles too where the adapter has them), then
# pp512 with the coop kernel against the integer and f32 tiled kernels.
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 .dev7/ops --include-ignored coop_prefill_every_format quantized_matmul_every_format dense_matmul_f32_and_f16 2>&1 | tail -15 | tee $OUT/ops-gpu.txt; el
B=.dev7/lowbit
show() { grep -h "| lowbit" $OUT/$1.md | awk -F'|' '{print $4 $8 $9}'; grep -h "cooperative\|error" $OUT/$1.md | head -3; el; }
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/8b-coop.md 2>&1; show 8b-coop
LOWBIT_WGPU_COOP=0 LOWBIT_WGPU_INT_PREFILL=1 timeout 60 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/8b-int.md 2>&1; show 8b-int
timeout 60 $B bench --backend webgpu --synthetic llama-3.2-1b --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/1b-coop.md 2>&1; show 1b-coop
timeout 40 $B bench --backend webgpu --synthetic smollm2-135m --quants int8,int4,int3,int2 --prompt-tokens 512 --gen-tokens 0 --reps 2 > $OUT/smollm2-coop.md 2>&1; show smollm2-coop
timeout 90 $B bench --backend webgpu --profile chrome --synthetic llama-3-8b --quants int4 --prompt-tokens 512 --gen-tokens 0 --reps 1 --kernel-timings > $OUT/8b-coop-kt.md 2>&1; grep -A25 -i "kernel" $OUT/8b-coop-kt.md | head -40; el
