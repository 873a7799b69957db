#!/usr/bin/env bash
# KV-cache quality sweep: perplexity on the Brown text at a long context (CTX, default 2048) for
# lowbit's KV-cache widths 16 (f32) / 8 / 4 / 3 / 2, each with the recent full-precision window
# (keys per channel, KIVI) and without it (keys per token), at fp32 and int4 weights; beside
# llama.cpp's `llama-perplexity -fa on -ctk X -ctv X` (f16, q8_0, q4_0) on the same text, context
# and chunks, from the F32 GGUF (fp32 rows) and the source Q4_1 file (int4 rows: lowbit's int4
# default recovers that grid).
#
# Usage: scripts/kv-sweep.sh [CHUNKS=8]
# Environment: LOWBIT_BIN (default target/release/lowbit), THREADS (default nproc), CTX (2048),
#   OUT (default bench/results/DATE-<nproc>core-ARCH/kv-sweep-CTX), ONLY (a regex over job
#   names), PEER=0 to skip llama.cpp (built by ../shared/tools/build-llamacpp.sh cpu).
# Writes OUT/results.jsonl (lowbit rows, `lowbit perplexity --output`), OUT/peer.jsonl
# (llama.cpp rows: {"engine","weights","ctk","ctv","ctx","chunks","perplexity","stderr"}),
# and each job's log. Rows already in a file are not measured again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
chunks=${1:-8}
ctx=${CTX:-2048}
bin=${LOWBIT_BIN:-target/release/lowbit}
[ -x "$bin" ] || cargo build --release --bin lowbit
threads=${THREADS:-$(nproc)}
arch=$(uname -m)
out=${OUT:-bench/results/$(date -u +%F)-$(nproc)core-${arch%_64}/kv-sweep-$ctx}; mkdir -p "$out"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
text=models/brown.txt
[ -s "$model" ] && [ -s "$text" ] || { echo "kv-sweep: $model / $text missing: scripts/fetch-models.sh" >&2; exit 1; }

# name | lowbit flags
jobs=()
for w in fp32 int4; do
  jobs+=("$w-kv16|-q $w --kv-bits 16")
  for b in 8 4 3 2; do
    jobs+=("$w-kv$b-w128|-q $w --kv-bits $b --kv-window 128 --set kv_cache.group_size=32")
    jobs+=("$w-kv$b-now|-q $w --kv-bits $b --kv-window 0 --set kv_cache.group_size=32 --set kv_cache.key_grouping=token")
  done
done

for j in "${jobs[@]}"; do
  name=${j%%|*}; flags=${j#*|}
  [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && continue
  if [ -s "$out/$name.md" ]; then echo "== $name: done"; continue; fi
  echo "== $name: lowbit perplexity $flags"
  # shellcheck disable=SC2086
  "$bin" perplexity --backend cpu -t "$threads" -m "$model" -f "$text" --ctx "$ctx" \
    --chunks "$chunks" --output "$out/results.jsonl" $flags >"$out/$name.md.part" 2>"$out/$name.log"
  mv "$out/$name.md.part" "$out/$name.md"
  cat "$out/$name.md"
done

[ "${PEER:-1}" = 0 ] && exit 0
llbin=$(bash ../shared/tools/build-llamacpp.sh cpu)
peerdir=models/peer; mkdir -p "$peerdir"
f32=$peerdir/smollm2-f32.gguf
if [ ! -s "$f32" ]; then
  "$llbin/llama-quantize" --allow-requantize "$model" "$f32.part" F32 "$threads" >"$out/quantize-f32.log" 2>&1
  mv "$f32.part" "$f32"
fi
for wf in "fp32|$f32" "int4|$model"; do
  w=${wf%%|*}; file=${wf#*|}
  for t in f16 q8_0 q4_0; do
    name=llamacpp-$w-$t
    [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && continue
    if [ -s "$out/$name.log" ] && grep -q 'Final estimate' "$out/$name.log"; then echo "== $name: done"; continue; fi
    echo "== $name: llama-perplexity -fa on -ctk $t -ctv $t"
    "$llbin/llama-perplexity" -m "$file" -f "$text" -c "$ctx" -b "$ctx" --chunks "$chunks" \
      -t "$threads" -fa on -ctk "$t" -ctv "$t" >"$out/$name.log" 2>&1
    python3 - "$out/$name.log" "$w" "$t" "$ctx" "$chunks" "$out/peer.jsonl" <<'EOF'
import json, re, sys
log, w, t, ctx, chunks, dst = sys.argv[1:]
m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", open(log).read())
if not m:
    sys.exit(f"{log}: no final estimate")
row = {"engine": "llama.cpp", "weights": w, "ctk": t, "ctv": t, "ctx": int(ctx),
       "chunks": int(chunks), "perplexity": float(m.group(1)), "stderr": float(m.group(2))}
open(dst, "a").write(json.dumps(row) + "\n")
print(f"| llama.cpp {w} -ctk {t} -ctv {t} | {row['perplexity']:.4f} | {row['stderr']:.4f} |")
EOF
  done
done
