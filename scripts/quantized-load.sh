#!/usr/bin/env bash
# `lowbit quantize` files against quantizing at load: for each configuration, writes the
# quantized model file once (`lowbit quantize`, timed), then times `lowbit generate` (load +
# greedy decode of the README's prompt, N tokens) twice: from the original model quantizing at
# load with the same flags, and from the quantized file. The greedy text of both must be equal
# (the script says so per row). Prints a markdown table and appends one JSON object per
# configuration to OUT/load.jsonl.
#
# Usage: scripts/quantized-load.sh [MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf]
# Environment: LOWBIT_BIN (default target/release/lowbit), THREADS (default nproc), N (tokens,
#   default 24), OUT (default bench/results/DATE-<nproc>core-ARCH/quantized-load),
#   CONFIGS (newline-separated "name|flags"; default below), PROMPT.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
bin=${LOWBIT_BIN:-target/release/lowbit}
[ -x "$bin" ] || cargo build --release --bin lowbit
threads=${THREADS:-$(nproc)}; n=${N:-24}
prompt=${PROMPT:-The capital of France is}
arch=$(uname -m)
out=${OUT:-bench/results/$(date -u +%F)-$(nproc)core-${arch%_64}/quantized-load}; mkdir -p "$out"
calib="--calibrate models/brown-calib.txt --set quantization.calibration.chunks=32"
default_configs="int4-g32-asym|--quant int4
gptq-int4-g32-sym|--quant int4 --scheme sym --group-size 32 $calib
alloc5.0-g32-sym|--quant int4 --scheme sym --group-size 32 $calib --target-bits 5.0
alloc4.3-g32-sym|--quant int3 --scheme sym --group-size 32 $calib --target-bits 4.3
alloc3.6-g32-sym|--quant int2 --scheme sym --group-size 32 $calib --target-bits 3.6"
configs=${CONFIGS:-$default_configs}
secs() { date +%s.%N; }
echo "| configuration | quantize (s) | file MB | generate, quantizing at load (s) | generate from file (s) | same text | greedy text |"
echo "|---|---|---|---|---|---|---|"
while IFS= read -r line; do
  [ -n "$line" ] || continue
  name=${line%%|*}; flags=${line#*|}
  file=$out/$name.gguf
  t0=$(secs)
  # shellcheck disable=SC2086
  "$bin" quantize "$model" --out "$file" --backend cpu -t "$threads" $flags > "$out/$name.quantize.log" 2>&1 \
    || { echo "FAILED: quantize $name (see $out/$name.quantize.log)" >&2; continue; }
  t1=$(secs)
  # shellcheck disable=SC2086
  at_load=$("$bin" generate -m "$model" --backend cpu -t "$threads" $flags -p "$prompt" -n "$n" --temperature 0 2> "$out/$name.gen-at-load.log") \
    || { echo "FAILED: generate $name (see $out/$name.gen-at-load.log)" >&2; continue; }
  t2=$(secs)
  from_file=$("$bin" generate -m "$file" --backend cpu -t "$threads" -p "$prompt" -n "$n" --temperature 0 2> "$out/$name.gen-file.log") \
    || { echo "FAILED: generate from $file (see $out/$name.gen-file.log)" >&2; continue; }
  t3=$(secs)
  q=$(awk "BEGIN{print $t1 - $t0}"); a=$(awk "BEGIN{print $t2 - $t1}"); f=$(awk "BEGIN{print $t3 - $t2}")
  mb=$(awk "BEGIN{printf \"%.1f\", $(stat -c %s "$file") / 1e6}")
  same=no; [ "$at_load" = "$from_file" ] && same=yes
  text=$(printf '%s' "$from_file" | tr '\n|' '  ')
  printf '| %s | %.1f | %s | %.2f | %.2f | %s | %s |\n' "$name" "$q" "$mb" "$a" "$f" "$same" "$text"
  python3 - "$name" "$flags" "$q" "$mb" "$a" "$f" "$same" "$from_file" "$n" "$threads" >> "$out/load.jsonl" <<'EOF'
import json, sys, datetime
n, flags, q, mb, a, f, same, text, toks, threads = sys.argv[1:]
print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  "config": n, "flags": flags, "quantize_s": float(q), "file_mb": float(mb),
  "generate_quantizing_at_load_s": float(a), "generate_from_file_s": float(f),
  "same_text": same == "yes", "greedy_text": text, "tokens": int(toks), "threads": int(threads)}))
EOF
  rm -f "$file"
done <<< "$configs"
