#!/usr/bin/env bash
# Perplexity and real bits/weight of every lowbit precision on SmolLM2 + the Brown corpus
# (ctx 512, N chunks), printed beside llama.cpp's figures from
# tests/fixtures/llamacpp_perplexity.json (made by scripts/peer-reference.sh on the same F32
# model and text). Each run's JSON and every row as a JSON line (results.jsonl) go to OUT:
# bench/results/DATE-DEVICE/quality (today, e.g. 2core-x86), or $QUALITY_OUT; an existing
# run's JSON is reused, so an interrupted table resumes.
# Usage: scripts/quality-table.sh [CHUNKS=20] [THREADS=2]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
chunks=${1:-20}; threads=${2:-2}
arch=$(uname -m)
out=${QUALITY_OUT:-bench/results/$(date -u +%F)-$(nproc)core-${arch%_64}/quality}; mkdir -p "$out"
# A private copy of the binary, so a rebuild during the (long) run cannot mix versions.
src=${LOWBIT_BIN:-target/release/lowbit}
[ -x "$src" ] || cargo build --release --bin lowbit
bin=$(mktemp -d)/lowbit; cp "$src" "$bin"
run() { # name args...
  local f=$out/$1.json; shift
  if [ ! -s "$f" ]; then
    echo "== lowbit perplexity $*" >&2
    $bin perplexity --json -f models/brown.txt --ctx 512 --chunks "$chunks" --threads "$threads" \
      --output "$out/results.jsonl" "$@" > "$f.part"
    mv "$f.part" "$f"
  fi
}
run fp32 --quant fp32
for g in 32 128; do for s in sym asym; do
  run "int-g$g-$s" --quants int8,int4,int3,int2 --group-size $g --scheme $s
done; done
python3 - "$out" "$chunks" <<'PY'
import json, sys, glob, os
out, chunks = sys.argv[1], int(sys.argv[2])
rows = []
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    for r in json.load(open(f))["runs"]:
        rows.append(("lowbit", r["precision"], r["bits_per_weight"], r["result"]["perplexity"], r["result"]["perplexity_stderr"]))
base = next((r[3] for r in rows if r[1] == "fp32"), None)
peer = json.load(open("tests/fixtures/llamacpp_perplexity.json"))
peer = peer if isinstance(peer, list) else peer.get("rows", peer)
for p in peer:
    if p.get("chunks") == chunks:
        rows.append(("llama.cpp", p["type"], p["bits_per_weight"], p["ppl"], p["ppl_err"]))
pbase = next((r[3] for r in rows if r[0] == "llama.cpp" and r[1] == "F32"), None)
print(f"| engine | precision | bits/weight | perplexity | ± | vs own fp32 |")
print("|---|---|---|---|---|---|")
order = lambda r: (r[0] != "lowbit", -r[2])
for e, name, bpw, ppl, err in sorted(rows, key=order):
    b = base if e == "lowbit" else pbase
    rel = f"{(ppl / b - 1) * 100:+.2f}%" if b else "-"
    print(f"| {e} | {name} | {bpw:.3f} | {ppl:.4f} | {err:.4f} | {rel} |")
PY
