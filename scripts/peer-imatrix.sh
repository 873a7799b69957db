#!/usr/bin/env bash
# llama.cpp's low-bit quantization at its best, as the peer of lowbit's low-bit quality figures:
# an importance matrix (llama-imatrix) computed on the calibration text, then each of the
# types below made from the F32 GGUF with that matrix, then perplexity on the evaluation text.
#   models/peer/                         (git-ignored) the imatrix files, GGUFs and raw logs
#   OUT/perplexity.md                    perplexity + whole-model bits/weight + tensor types
#   OUT/README.md                        the exact commands, the llama.cpp version, fallbacks
#   tests/fixtures/llamacpp_imatrix_perplexity.json   the same as data
# OUT is bench/results/DATE-DEVICE/peer-imatrix (today, e.g. 2core-x86), or $PEER_OUT.
#
# Usage: scripts/peer-imatrix.sh [--force] [MODEL...]     MODEL: smollm2, gemma3 (default: each one present)
#   Idempotent: each step whose output already exists is skipped, unless --force.
#   The parsed results (json / md) are always rebuilt from the raw logs in models/peer/logs/,
#   for every model whose logs are there (so running one model keeps the other's rows).
# Models (F32 made from the source GGUF by dequantizing when it is missing):
#   smollm2  models/peer/smollm2-f32.gguf <- models/SmolLM2-135M-Instruct.Q4_1.gguf
#   gemma3   models/peer/gemma3-f32.gguf  <- models/gemma-3-270m-q4_k_m.gguf
# Environment:
#   LLAMACPP_BIN   folder of the llama.cpp binaries (default: ../shared/tools/build-llamacpp.sh cpu)
#   PEER_THREADS   threads for llama.cpp (default 2)     PEER_NICE   nice level (default 10)
# Needs: models/brown.txt, models/brown-calib.txt (scripts/fetch-models.sh brown), python3 with
#        numpy (for llama.cpp's gguf-py, to read exact tensor sizes and types).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

force=0
models=()
for a in "$@"; do
  case $a in
    --force) force=1 ;;
    smollm2|gemma3) models+=("$a") ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done

threads=${PEER_THREADS:-2}
nicelvl=${PEER_NICE:-10}
text=models/brown.txt
calib=models/brown-calib.txt
peer=models/peer
logs=$peer/logs
arch=$(uname -m)
out=${PEER_OUT:-bench/results/$(date -u +%F)-$(nproc)core-${arch%_64}/peer-imatrix}
fixture=tests/fixtures/llamacpp_imatrix_perplexity.json
# highest bits first; IQ2_XS and IQ3_XXS cannot be made without an importance matrix
quants=(Q4_K_M Q4_K_S IQ4_XS Q3_K_M Q3_K_S IQ3_XXS Q2_K IQ2_XS)
ppl_ctx=512
ppl_chunks=20
imatrix_ctx=512

src_of() {
  case $1 in
    smollm2) echo models/SmolLM2-135M-Instruct.Q4_1.gguf ;;
    gemma3) echo models/gemma-3-270m-q4_k_m.gguf ;;
  esac
}

# default: every model whose F32 or source GGUF is there
if [ "${#models[@]}" = 0 ]; then
  for m in smollm2 gemma3; do
    if [ -s "models/peer/$m-f32.gguf" ] || [ -s "$(src_of "$m")" ]; then models+=("$m"); fi
  done
  [ "${#models[@]}" -gt 0 ] || { echo "error: no model found (see --help)" >&2; exit 1; }
fi

step() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
for f in "$text" "$calib"; do
  [ -s "$f" ] || die "$f is missing: run scripts/fetch-models.sh brown first"
done
if [ -z "${LLAMACPP_BIN:-}" ]; then
  step "locating llama.cpp (../shared/tools/build-llamacpp.sh cpu)"
  LLAMACPP_BIN=$(bash "$root/../shared/tools/build-llamacpp.sh" cpu)
fi
bin=$LLAMACPP_BIN
for t in llama-quantize llama-imatrix llama-perplexity; do
  [ -x "$bin/$t" ] || die "$bin/$t not found"
done
gguf_py=$(cd "$bin/../.." && pwd)/src/gguf-py
[ -d "$gguf_py" ] || die "llama.cpp's gguf-py not found at $gguf_py"
PYTHONPATH="$gguf_py" python3 -c 'import gguf' 2>/dev/null || die "python3 cannot import gguf-py (needs numpy)"
mkdir -p "$peer" "$logs" "$out" "$(dirname "$fixture")"
calib_sha=$(sha256sum "$calib" | cut -d' ' -f1)

# every command that produces a result is recorded here (with $LLAMA_BIN for the binaries folder)
cmds=()
record() { # pretty-print a command line for README.md
  local s="" a safe='^[-A-Za-z0-9_./=:,+$]+$'
  for a in "$@"; do
    a=${a/#$bin\//\$LLAMA_BIN/}
    if [[ $a =~ $safe ]]; then s+=" $a"; else s+=" '${a//\'/\'\\\'\'}'"; fi
  done
  cmds+=("${s# }")
}
llama() { # tool args... : record, then run niced
  local tool=$1; shift
  record "$bin/$tool" "$@"
  nice -n "$nicelvl" "$bin/$tool" "$@"
}
need() { [ "$force" = 1 ] || [ ! -s "$1" ]; }   # true when the output must be (re)made

lower() { tr '[:upper:]' '[:lower:]' <<<"$1"; }
f32_of() { echo "$peer/$1-f32.gguf"; }
gguf_of() { echo "$peer/$1-imatrix-$(lower "$2").gguf"; }   # model type
imatrix_of() { echo "$peer/$1.imatrix"; }

# ---------------------------------------------------------------- per model
for m in "${models[@]}"; do
  f32=$(f32_of "$m"); imat=$(imatrix_of "$m"); src=$(src_of "$m")
  step "$m: F32, imatrix on $calib (sha256 ${calib_sha:0:12}...), then ${quants[*]}"
  if need "$f32"; then
    [ -s "$src" ] || die "$src is missing (needed to make $f32)"
    info "dequantizing $src -> $f32"
    llama llama-quantize --allow-requantize "$src" "$f32.part" F32 "$threads" >"$logs/quantize-$m-f32.log" 2>&1 \
      || { tail -20 "$logs/quantize-$m-f32.log" >&2; die "llama-quantize F32 failed"; }
    mv "$f32.part" "$f32"
  else
    record "$bin/llama-quantize" --allow-requantize "$src" "$f32" F32 "$threads"
    info "exists: $f32"
  fi

  # the importance matrix: calibrated on models/brown-calib.txt, never on the evaluation text
  if need "$imat"; then
    info "llama-imatrix on $calib (calibration text, disjoint from $text), -c $imatrix_ctx..."
    llama llama-imatrix -m "$f32" -f "$calib" -c "$imatrix_ctx" -t "$threads" -o "$imat.part" \
      >"$logs/imatrix-$m.log" 2>&1 || { tail -20 "$logs/imatrix-$m.log" >&2; die "llama-imatrix failed"; }
    mv "$imat.part" "$imat"
  else
    record "$bin/llama-imatrix" -m "$f32" -f "$calib" -c "$imatrix_ctx" -t "$threads" -o "$imat"
    info "exists: $imat"
  fi
  info "imatrix: $(grep -o 'computing over [0-9]* chunks' "$logs/imatrix-$m.log" || echo '?') of $calib"

  for q in "${quants[@]}"; do
    dst=$(gguf_of "$m" "$q"); log=$logs/quantize-$m-imatrix-$(lower "$q").log
    if need "$dst"; then
      info "quantizing $f32 -> $dst ($q, --imatrix $imat)"
      llama llama-quantize --imatrix "$imat" "$f32" "$dst.part" "$q" "$threads" >"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "llama-quantize $q failed"; }
      mv "$dst.part" "$dst"
    else
      record "$bin/llama-quantize" --imatrix "$imat" "$f32" "$dst" "$q" "$threads"
      info "exists: $dst"
    fi
  done

  for q in F32 "${quants[@]}"; do
    if [ "$q" = F32 ]; then g=$f32; else g=$(gguf_of "$m" "$q"); fi
    log=$logs/ppl-$m-imatrix-$(lower "$q")-c$ppl_chunks.log
    [ "$q" = F32 ] && log=$logs/ppl-$m-f32-c$ppl_chunks.log
    if need "$log" || ! grep -q 'Final estimate' "$log"; then
      info "llama-perplexity $m $q, $ppl_chunks chunks of $ppl_ctx..."
      t0=$SECONDS
      llama llama-perplexity -m "$g" -f "$text" -c "$ppl_ctx" --chunks "$ppl_chunks" -t "$threads" >"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "llama-perplexity $m $q failed"; }
      info "$(grep -o 'Final estimate.*' "$log")  ($((SECONDS - t0)) s)"
    else
      record "$bin/llama-perplexity" -m "$g" -f "$text" -c "$ppl_ctx" --chunks "$ppl_chunks" -t "$threads"
      info "exists: $log: $(grep -o 'Final estimate.*' "$log")"
    fi
  done
done
# README records the final paths, not the .part ones
cmds=("${cmds[@]//.part/}")

# ---------------------------------------------------------------- results
version=$("$bin/llama-perplexity" --version 2>&1 | grep -E '^(version|built with)' | tr '\n' ';' | sed 's/;$//; s/;/; /')
step "writing $fixture and $out/perplexity.md"
PYTHONPATH="$gguf_py" python3 - "$peer" "$logs" "$out" "$fixture" "$calib" "$calib_sha" "$text" \
  "$ppl_ctx" "$ppl_chunks" "${version:-unknown}" "${quants[*]}" <<'PY'
import hashlib, json, os, re, sys
from collections import Counter
import gguf

peer, logs, out, fixture, calib, calib_sha, text, ctx, chunks, version, quants = sys.argv[1:]
ctx, chunks, quants = int(ctx), int(chunks), quants.split()
MODELS = ["smollm2", "gemma3"]

def field_str(r, key):
    f = r.fields.get(key)
    return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f else None

def model_info(path):
    r = gguf.GGUFReader(path)
    size = sum(int(t.n_bytes) for t in r.tensors)          # = llama.cpp's "model size"
    params = sum(int(t.n_elements) for t in r.tensors)     # = llama.cpp's "n_params"
    kinds = Counter(t.tensor_type.name for t in r.tensors)
    blk = [t for t in r.tensors if t.name.startswith("blk.")]   # the layers: no embedding / output
    blk_bpw = sum(int(t.n_bytes) for t in blk) * 8 / sum(int(t.n_elements) for t in blk)
    emb = next((t.tensor_type.name for t in r.tensors if t.name == "token_embd.weight"), None)
    h = hashlib.sha256()                                    # tensor data only: not the file type
    for t in r.tensors:
        h.update(t.name.encode() + t.tensor_type.name.encode() + t.data.tobytes())
    return dict(size=size, params=params, name=field_str(r, "general.name"), data_sha256=h.hexdigest(),
                blk_bpw=blk_bpw, embd_type=emb,
                output_type=next((t.tensor_type.name for t in r.tensors if t.name == "output.weight"), None),
                kinds=dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))))

def ppl_of(log):
    s = open(log, errors="replace").read()
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", s)
    if not m:
        sys.exit(f"no 'Final estimate' in {log}")
    return float(m.group(1)), float(m.group(2))

def fallbacks(log):
    """llama-quantize's fallback lines: 'warning: blk.0.attn_k.weight - ncols 576 not divisible by
    256 (required for type q4_K) -> falling back to q5_0' -> {'q4_K -> q5_0': n}."""
    if not os.path.exists(log):
        return {}
    s = open(log, errors="replace").read()
    c = Counter(f"{a} -> {b}" for a, b in
                re.findall(r"required for type\s+(\S+)\) -> falling back to\s+(\S+)", s))
    return dict(sorted(c.items(), key=lambda kv: -kv[1]))

def imatrix_used(log):
    """What llama-quantize says it read: the imatrix's datasets and chunks, and how many tensors
    needed a fallback type."""
    s = open(log, errors="replace").read() if os.path.exists(log) else ""
    d = re.search(r"imatrix datasets=\[([^\]]*)\]", s)
    c = re.search(r"importance matrix entries from \S+ computed on (\d+) chunks", s)
    f = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", s)
    return dict(imatrix_datasets=[x.strip(" '\"") for x in d.group(1).split(",")] if d else None,
                imatrix_chunks_used=int(c.group(1)) if c else None,
                fallback_tensors=int(f.group(1)) if f else 0)

def imatrix_chunks(log):
    m = re.search(r"computing over (\d+) chunks", open(log, errors="replace").read()) if os.path.exists(log) else None
    return int(m.group(1)) if m else None

rows = []
for model in MODELS:
    f32 = os.path.join(peer, f"{model}-f32.gguf")
    for t in ["F32"] + quants:
        if t == "F32":
            path = f32
            ppl_log = os.path.join(logs, f"ppl-{model}-f32-c{chunks}.log")
        else:
            path = os.path.join(peer, f"{model}-imatrix-{t.lower()}.gguf")
            ppl_log = os.path.join(logs, f"ppl-{model}-imatrix-{t.lower()}-c{chunks}.log")
        if not (os.path.exists(path) and os.path.exists(ppl_log) and "Final estimate" in open(ppl_log, errors="replace").read()):
            continue
        info = model_info(path)
        ppl, err = ppl_of(ppl_log)
        row = dict(model=model, model_name=info["name"], type=t,
                   bits_per_weight=round(info["size"] * 8 / info["params"], 4),
                   bits_per_weight_layers=round(info["blk_bpw"], 4), token_embd_type=info["embd_type"],
                   output_type=info["output_type"] or "tied to token_embd",
                   size_bytes=info["size"], n_params=info["params"], ppl=ppl, ppl_err=err,
                   chunks=chunks, ctx=ctx, text=text, tensor_types=info["kinds"],
                   file=os.path.basename(path), tensor_data_sha256=info["data_sha256"],
                   llama_cpp_version=version)
        if t != "F32":
            row.update(imatrix=f"{model}.imatrix", calibration=calib, calibration_sha256=calib_sha,
                       imatrix_chunks=imatrix_chunks(os.path.join(logs, f"imatrix-{model}.log")), imatrix_ctx=ctx,
                       fallbacks=fallbacks(os.path.join(logs, f"quantize-{model}-imatrix-{t.lower()}.log")),
                       **imatrix_used(os.path.join(logs, f"quantize-{model}-imatrix-{t.lower()}.log")))
        rows.append(row)

with open(fixture, "w") as f:
    json.dump(rows, f, indent=1)
    f.write("\n")

md = ["# llama.cpp with an importance matrix: perplexity vs whole-model bits/weight", "",
      f"`llama-perplexity -c {ctx} --chunks {chunks}` on `{text}`; every quant type made by",
      f"`llama-quantize --imatrix` from the F32 GGUF, with the importance matrix from `llama-imatrix` on",
      f"`{calib}` (sha256 `{calib_sha}`, disjoint from the evaluation text).",
      "bits/weight = tensor data bytes x 8 / parameters over the whole model (embeddings, norms, everything);",
      "layers = the same over the `blk.*` tensors only (no embedding / output matrix).",
      "Generated by `scripts/peer-imatrix.sh`.", ""]
for model in MODELS:
    mr = [r for r in rows if r["model"] == model]
    if not mr:
        continue
    ref = next((r for r in mr if r["type"] == "F32"), None)
    ic = next((r.get("imatrix_chunks") for r in mr if r.get("imatrix_chunks")), "?")
    md += [f"## {model} ({mr[0]['model_name']}, {mr[0]['n_params']:,} parameters)", "",
           f"imatrix: {ic} chunks of {ctx} tokens of `{calib}`. Output matrix: {mr[0]['output_type']}.", "",
           "| type | bits/weight | layers | embedding | size (MiB) | PPL | ± | vs F32 | tensor types | fallbacks (llama-quantize) |",
           "|---|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for r in mr:
        d = f"{(r['ppl'] / ref['ppl'] - 1) * 100:+.2f}%" if ref else "-"
        kinds = ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items())
        fb = ", ".join(f"{k} ×{v}" for k, v in r.get("fallbacks", {}).items()) or "-"
        md.append(f"| {r['type']} | {r['bits_per_weight']:.3f} | {r['bits_per_weight_layers']:.3f} | "
                  f"{r['token_embd_type']} | {r['size_bytes'] / 2**20:.2f} | {r['ppl']:.4f} | "
                  f"{r['ppl_err']:.4f} | {d} | {kinds} | {fb} |")
    same = {}
    for r in mr:
        same.setdefault(r["tensor_data_sha256"], []).append(r["type"])
    for types in same.values():
        if len(types) > 1:
            md += ["", f"{' and '.join(types)} hold the same tensors (names, types and bytes: one sha256 of the tensor data);",
                   "only the file type in the metadata differs: with this model's row widths their mixes fall back alike."]
    md.append("")
with open(os.path.join(out, "perplexity.md"), "w") as f:
    f.write("\n".join(md))
print("\n".join(md))
PY

cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
step "writing $out/README.md"
{
  echo "# llama.cpp with an importance matrix (the low-bit peer)"
  echo
  echo "Everything here is produced by \`scripts/peer-imatrix.sh [smollm2] [gemma3]\` (idempotent; \`--force\` redoes it)."
  echo "The imatrix files, GGUFs and raw logs go to \`models/peer/\` (git-ignored); \`perplexity.md\` and"
  echo "\`tests/fixtures/llamacpp_imatrix_perplexity.json\` hold the parsed results (one row per model and type, with"
  echo "tensor-type counts and llama-quantize's fallbacks). \`scripts/quality-plot.py\` plots them beside lowbit's rows."
  echo
  echo "## Method"
  echo
  echo "1. F32 GGUF: the published GGUF dequantized (\`llama-quantize --allow-requantize SRC F32\`); every type below is made"
  echo "   from it, so its error is relative to that F32 model."
  echo "2. Importance matrix: \`llama-imatrix -c $imatrix_ctx\` on the **calibration** text \`$calib\`"
  echo "   (sha256 \`$calib_sha\`), not on the evaluation text."
  echo "3. \`llama-quantize --imatrix\` to ${quants[*]}."
  echo "4. \`llama-perplexity -c $ppl_ctx --chunks $ppl_chunks\` on \`$text\` (the same windows as \`lowbit perplexity\`)."
  echo "5. bits/weight = sum of tensor bytes x 8 / sum of tensor elements (gguf-py), over the whole model."
  echo
  echo "## Version and machine"
  echo
  echo "- llama.cpp as vendored in the \`llama-cpp-python==0.3.36\` sdist (PyPI), built by"
  echo "  \`../shared/tools/build-llamacpp.sh cpu\`; \`llama-perplexity --version\`: ${version:-unknown}"
  echo "- CPU: $cpu, $(nproc) cores; every run with \`-t $threads\` under \`nice -n $nicelvl\` on a shared machine."
  echo
  echo "## Fallbacks"
  echo
  echo "A k-quant or i-quant block covers 256 weights of a row; llama-quantize stores a tensor whose rows are not a"
  echo "multiple of 256 wide in a fallback type instead. SmolLM2 (dim 576, feed-forward 1536): only \`ffn_down\`"
  echo "(rows 1536 wide) divides; every other matrix falls back. Gemma 3 270M (dim 640, 4 query heads of 256, feed-forward"
  echo "2048): \`attn_output\` (1024) and \`ffn_down\` (2048) divide; \`attn_q/k/v\` and \`ffn_gate/up\` (640 wide)"
  echo "fall back. It also keeps norms in F32 and picks its own type for the embedding / output (tied in both models) and"
  echo "some attention and feed-forward tensors per mix (the \`_S\` / \`_M\` suffix). The \`tensor types\` and"
  echo "\`fallbacks\` columns of \`perplexity.md\` count them per file, read from the GGUF and from llama-quantize's log."
  echo
  echo "## Commands"
  echo
  echo "Run from the repository root; \`LLAMA_BIN=$bin\`; every llama.cpp command ran under \`nice -n $nicelvl\`."
  echo
  echo '```sh'
  printf '%s\n' "${cmds[@]}"
  echo '```'
} >"$out/README.md"

step "done"
info "perplexity: $out/perplexity.md, $fixture"
info "commands:   $out/README.md"
