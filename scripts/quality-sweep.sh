#!/usr/bin/env bash
# Low-bit quality sweep: perplexity and whole-model bits/weight of lowbit's quantization
# methods, each as an ablation step (plain search → + calibration importance → + error
# feedback → + rotation → + learned grid → + mixed-width allocation), on one model and the Brown text
# (ctx 512, CHUNKS chunks), calibrated on models/brown-calib.txt (disjoint from the scored
# text). Runs JOBS lowbit processes of THREADS CPU threads at a time; every row is appended to
# OUT/results.jsonl as it is measured (`lowbit perplexity --output`), each job's table to
# OUT/<job>.md. Then: scripts/quality-plot.py OUT/results.jsonl for the table and the PNG.
#
# Usage: scripts/quality-sweep.sh [MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf] [CHUNKS=20]
#   (a Gemma 3 model, models/gemma-3-270m-q4_k_m.gguf, runs its own job list below)
# Environment: LOWBIT_BIN (default target/release/lowbit), JOBS (default 1), THREADS (default
#   nproc / JOBS), OUT (default bench/results/DATE-<nproc>core-ARCH/quality-sweep),
#   CALIB_CHUNKS (default 32), ONLY (a regex: run only jobs whose name matches).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}; chunks=${2:-20}
bin=${LOWBIT_BIN:-target/release/lowbit}
[ -x "$bin" ] || cargo build --release --bin lowbit
jobs=${JOBS:-1}; threads=${THREADS:-$(( $(nproc) / jobs ))}; [ "$threads" -ge 1 ] || threads=1
arch=$(uname -m)
out=${OUT:-bench/results/$(date -u +%F)-$(nproc)core-${arch%_64}/quality-sweep}; mkdir -p "$out"
calib="--calibrate models/brown-calib.txt --set quantization.calibration.chunks=${CALIB_CHUNKS:-32}"
imp="$calib --set quantization.calibration.error_feedback=false"
emb4="--set quantization.overrides=token_embd.weight=4"
# name | flags (each job may measure several widths: calibration runs once per job)
smollm2_sweep=(
  # First: it measures the sensitivities the other alloc jobs reuse (the longest job).
  "alloc5.0-g32-sym|--quant int4 --scheme sym --group-size 32 $calib --target-bits 5.0"
  "alloc5.0-rot-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 5.0"
  "plain-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32"
  "imp-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 $imp"
  "gptq-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 $calib"
  "gptq-rot-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 --rotate $calib"
  "gptq-rot-g128-sym|--quants int4,int3,int2 --scheme sym --group-size 128 --rotate $calib"
  "gptq-g64-asym|--quants int4,int3,int2 --scheme asym --group-size 64 $calib"
  "gptq-emb4-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 $calib $emb4"
  "gptq-emb4-g64-asym|--quants int4,int3,int2 --scheme asym --group-size 64 $calib $emb4"
  # Allocation that may also give a unit groups of 128 (quantization.target_coarse_group).
  "alloc5.0-rot-cg128-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 5.0 --set quantization.target_coarse_group=128"
  # Learned grids (quantization.grid = learned) on top of each step.
  "alloc5.0-rot-grid-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate --grid learned $calib --target-bits 5.0"
  "gptq-rot-grid-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 --rotate --grid learned $calib"
  "gptq-grid-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 --grid learned $calib"
  "imp-grid-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32 --grid learned $imp"
  # Without calibration (candidates for the default precision).
  "plain-g32-asym|--quants int4,int3 --scheme asym --group-size 32"
  "plain-grid-g32-asym|--quants int4,int3 --scheme asym --group-size 32 --grid learned"
  "plain-rot-g32-asym|--quants int4,int3 --scheme asym --group-size 32 --rotate"
  "plain-rot-grid-g32-asym|--quants int4,int3 --scheme asym --group-size 32 --rotate --grid learned"
  "gptq-rot-grid-g128-sym|--quants int4,int3,int2 --scheme sym --group-size 128 --rotate --grid learned $calib"
  # Phase 2 (after the rest): these reuse the sensitivities alloc5.0 measured (kept on disk).
  "2:alloc4.3-g32-sym|--quant int3 --scheme sym --group-size 32 $calib --target-bits 4.3"
  "2:alloc3.6-g32-sym|--quant int2 --scheme sym --group-size 32 $calib --target-bits 3.6"
  "2:alloc3.3-g32-sym|--quant int2 --scheme sym --group-size 32 $calib --target-bits 3.3"
  "2:alloc5.3-rot-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 5.3"
  "2:alloc5.9-rot-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 5.9"
  "2:alloc6.1-rot-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 6.1"
  # At llama.cpp's Q4_K_S and Q4_K_M sizes on this model (5.962, 6.165 bits/weight).
  "2:alloc5.96-rot-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 5.96"
  "2:alloc6.16-rot-g32-sym|--quant int4 --scheme sym --group-size 32 --rotate $calib --target-bits 6.16"
  "2:alloc4.6-g32-sym|--quant int4 --scheme sym --group-size 32 $calib --target-bits 4.6"
  "2:alloc4.3-rot-g32-sym|--quant int3 --scheme sym --group-size 32 --rotate $calib --target-bits 4.3"
  "2:alloc3.6-rot-g32-sym|--quant int2 --scheme sym --group-size 32 --rotate $calib --target-bits 3.6"
  "2:alloc4.3-rot-cg128-sym|--quant int3 --scheme sym --group-size 32 --rotate $calib --target-bits 4.3 --set quantization.target_coarse_group=128"
  "2:alloc3.6-rot-cg128-sym|--quant int2 --scheme sym --group-size 32 --rotate $calib --target-bits 3.6 --set quantization.target_coarse_group=128"
  "2:alloc4.3-rot-grid-g32-sym|--quant int3 --scheme sym --group-size 32 --rotate --grid learned $calib --target-bits 4.3"
  "2:alloc3.6-rot-grid-g32-sym|--quant int2 --scheme sym --group-size 32 --rotate --grid learned $calib --target-bits 3.6"
)
# Gemma 3 270M: the tied 262k×640 embedding is 63% of the weights, so llama.cpp's types land at
# 6.7 to 7.4 bits/weight (they keep it at Q6_K/Q8_0); the allocated rows aim just under each.
rot="--scheme sym --group-size 32 --rotate $calib"
gemma3_sweep=(
  # First: it measures the sensitivities the allocated rows reuse; then in order of need.
  "alloc6.7-rot-g32-sym|--quant int4 $rot --target-bits 6.7"
  "2:alloc6.95-rot-g32-sym|--quant int4 $rot --target-bits 6.95"
  "2:alloc7.25-rot-g32-sym|--quant int4 $rot --target-bits 7.25"
  "2:fp32-int8|--quants fp32,int8 --scheme sym --group-size 32"
  "2:plain-g32-asym|--quants int4 --scheme asym --group-size 32"
  "2:plain-grid-g32-asym|--quants int4 --scheme asym --group-size 32 --grid learned"
  "2:alloc7.35-rot-g32-sym|--quant int4 $rot --target-bits 7.35"
  "2:plain-g32-sym|--quants int4,int3,int2 --scheme sym --group-size 32"
  "2:gptq-rot-g32-sym|--quants int4,int3,int2 $rot"
  "2:alloc5.5-rot-g32-sym|--quant int4 $rot --target-bits 5.5"
  "2:alloc4.5-rot-g32-sym|--quant int3 $rot --target-bits 4.5"
)
case $(basename "$model") in
  gemma-3*) sweep=("${gemma3_sweep[@]}") ;;
  *) sweep=("${smollm2_sweep[@]}") ;;
esac
run_job() { # name flags
  local name=$1 flags=$2
  [ -s "$out/$name.md" ] && { echo "exists: $out/$name.md" >&2; return; }
  echo "== $name: lowbit perplexity $flags" >&2
  # shellcheck disable=SC2086
  "$bin" perplexity --backend cpu -t "$threads" -m "$model" -f models/brown.txt --ctx 512 \
    --chunks "$chunks" --output "$out/results.jsonl" $flags > "$out/$name.md.part" 2> "$out/$name.log" \
    && mv "$out/$name.md.part" "$out/$name.md" || echo "FAILED: $name (see $out/$name.log)" >&2
}
running=0
phase=1
for item in "${sweep[@]}"; do
  name=${item%%|*}; flags=${item#*|}
  if [[ $name == 2:* ]]; then
    name=${name#2:}
    if [ "$phase" = 1 ]; then wait; running=0; phase=2; fi
  fi
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then continue; fi
  run_job "$name" "$flags" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
done
wait
cat "$out"/*.md | grep '^| int\|^| fp' | sort -u
