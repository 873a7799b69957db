#!/usr/bin/env bash
# Produces every llama.cpp reference figure lowbit is compared against (the "peer"):
#   models/peer/                         (git-ignored) the F32 / requantized GGUFs and the raw logs
#   OUT/perplexity.md                    perplexity + bits per weight of F32 and each quant type
#   OUT/llama-bench-cpu.md               llama-bench pp128 / tg64 of Q8_0 and Q4_0 on this CPU
#   OUT/README.md                        the exact commands, the llama.cpp version, the CPU
#   tests/fixtures/llamacpp_perplexity.json  the perplexities as data (tests compare against them)
#   tests/fixtures/llamacpp_greedy.json  greedy completions (text + token ids) of 5 plain prompts
# OUT is bench/results/DATE-DEVICE/peer (today, e.g. 2core-x86), or $PEER_OUT.
# With --model gemma3 (Gemma 3 270M): only the F32 model, its perplexity (2 and 20 chunks, and 2
# chunks of 1024 tokens, where the sliding window binds) and the greedy completions, into tests/fixtures/llamacpp_gemma3_{perplexity,greedy}.json and
# OUT = bench/results/DATE-DEVICE/peer-gemma3; no requantized types, no llama-bench.
#
# Usage: scripts/peer-reference.sh [--force] [--browser-ggufs] [--model smollm2|gemma3]
#   Idempotent: each step whose output already exists is skipped, unless --force.
#   The parsed results (json / md) are always rebuilt from the raw logs in models/peer/logs/.
#   --browser-ggufs: only step 1 for Q8_0, Q4_0 and Q2_K (the models of web/bench/browser-bench.mjs);
#   needs only llama-quantize, built alone when no llama.cpp build is there yet.
# Environment:
#   LLAMACPP_BIN   folder of the llama.cpp binaries (default: ../shared/tools/build-llamacpp.sh cpu)
#   PEER_THREADS   threads for llama.cpp (default 2)     PEER_NICE   nice level (default 5)
# Needs: models/SmolLM2-135M-Instruct.Q4_1.gguf and models/brown.txt (scripts/fetch-models.sh),
#        python3 with numpy (for llama.cpp's gguf-py, to read exact tensor sizes), curl.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

force=0
ggufs_only=0
model=smollm2
while [ $# -gt 0 ]; do
  case $1 in
    --force) force=1 ;;
    --browser-ggufs) ggufs_only=1 ;;
    --model) model=${2:-}; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

threads=${PEER_THREADS:-2}
nicelvl=${PEER_NICE:-5}
text=models/brown.txt
peer=models/peer
arch=$(uname -m)
out_base=bench/results/$(date -u +%F)-$(nproc)core-${arch%_64}
fixtures=tests/fixtures
ppl_ctx=512
ppl_chunks=20
case $model in
  smollm2)
    src_model=models/SmolLM2-135M-Instruct.Q4_1.gguf
    title="SmolLM2-135M-Instruct"
    logs=$peer/logs
    out=${PEER_OUT:-$out_base/peer}
    fixture_ppl=$fixtures/llamacpp_perplexity.json
    fixture_greedy=$fixtures/llamacpp_greedy.json
    quants=(Q8_0 Q4_0 Q4_K_M Q3_K_M Q2_K)
    [ "$ggufs_only" = 1 ] && quants=(Q8_0 Q4_0 Q2_K)
    ppl_chunks_quick=4
    long_ctx=0
    bos="none: the model's tokenizer.ggml.add_bos_token is false, llama.cpp's default follows it" ;;
  gemma3)
    [ "$ggufs_only" = 1 ] && { echo "--browser-ggufs is for smollm2" >&2; exit 2; }
    src_model=models/gemma-3-270m-q4_k_m.gguf
    title="Gemma 3 270M"
    logs=$peer/logs-gemma3
    out=${PEER_OUT:-$out_base/peer-gemma3}
    fixture_ppl=$fixtures/llamacpp_gemma3_perplexity.json
    fixture_greedy=$fixtures/llamacpp_gemma3_greedy.json
    quants=()
    ppl_chunks_quick=2
    long_ctx=1024 # past the 512-token sliding window of the local layers
    bos="first: the model's tokenizer.ggml.add_bos_token is true, llama.cpp's default follows it" ;;
  *) echo "unknown model: $model (smollm2 or gemma3)" >&2; exit 2 ;;
esac
f32=$peer/$model-f32.gguf
n_predict=16
prompts=(
  "The capital of France is"
  "Once upon a time, there was a little"
  "def fibonacci(n):"
  "The three primary colors are"
  "In 1969, Neil Armstrong"
)

step() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
for f in "$src_model" "$text"; do
  [ -s "$f" ] || die "$f is missing: run scripts/fetch-models.sh first"
done
# build-llamacpp.sh's default build folder: reused target by target (--browser-ggufs builds one)
default_build=$HOME/.cache/llamacpp-peer/build-cpu
if [ -z "${LLAMACPP_BIN:-}" ] && [ "$ggufs_only" = 1 ] && [ -f "$default_build/CMakeCache.txt" ]; then
  step "building llama-quantize alone in $default_build"
  nice -n "$nicelvl" cmake --build "$default_build" --target llama-quantize -j"$threads" >&2
  LLAMACPP_BIN=$default_build/bin
fi
if [ -z "${LLAMACPP_BIN:-}" ]; then
  step "locating llama.cpp (../shared/tools/build-llamacpp.sh cpu)"
  LLAMACPP_BIN=$(bash "$root/../shared/tools/build-llamacpp.sh" cpu)
fi
bin=$LLAMACPP_BIN
tools=(llama-quantize llama-perplexity llama-completion llama-bench llama-server)
[ "$ggufs_only" = 1 ] && tools=(llama-quantize)
for t in "${tools[@]}"; do
  [ -x "$bin/$t" ] || die "$bin/$t not found"
done
llama_build=$(cd "$bin/.." && pwd)
if [ "$ggufs_only" = 0 ]; then
  if [ ! -x "$bin/llama-tokenize" ]; then
    step "building llama-tokenize (extra target, for prompt token ids)"
    nice -n "$nicelvl" cmake --build "$llama_build" --target llama-tokenize -j"$threads" >&2
  fi
  gguf_py=$(cd "$llama_build/.." && pwd)/src/gguf-py
  [ -d "$gguf_py" ] || die "llama.cpp's gguf-py not found at $gguf_py"
  PYTHONPATH="$gguf_py" python3 -c 'import gguf' 2>/dev/null || die "python3 cannot import gguf-py (needs numpy)"
  command -v curl >/dev/null || die "curl is needed (greedy token ids come from llama-server)"
  mkdir -p "$out" "$fixtures"
fi
mkdir -p "$peer" "$logs"

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
gguf_of() { echo "$peer/$model-$(lower "$1").gguf"; }

# ---------------------------------------------------------------- 1. F32 + requantized models
step "1/5 models: F32 from the original $src_model, then ${quants[*]:-nothing else} from F32"
if need "$f32"; then
  info "dequantizing $src_model -> $f32"
  llama llama-quantize --allow-requantize "$src_model" "$f32.part" F32 "$threads" >"$logs/quantize-f32.log" 2>&1 \
    || { tail -20 "$logs/quantize-f32.log" >&2; die "llama-quantize F32 failed"; }
  mv "$f32.part" "$f32"
else
  record "$bin/llama-quantize" --allow-requantize "$src_model" "$f32" F32 "$threads"
  info "exists: $f32"
fi
for q in ${quants[@]+"${quants[@]}"}; do
  dst=$(gguf_of "$q")
  if need "$dst"; then
    info "quantizing $f32 -> $dst ($q)"
    llama llama-quantize "$f32" "$dst.part" "$q" "$threads" >"$logs/quantize-$(lower "$q").log" 2>&1 \
      || { tail -20 "$logs/quantize-$(lower "$q").log" >&2; die "llama-quantize $q failed"; }
    mv "$dst.part" "$dst"
  else
    record "$bin/llama-quantize" "$f32" "$dst" "$q" "$threads"
    info "exists: $dst"
  fi
done
# README records the final paths, not the .part ones
cmds=("${cmds[@]//.gguf.part/.gguf}")
if [ "$ggufs_only" = 1 ]; then
  step "done: $(for q in "${quants[@]}"; do printf '%s ' "$(gguf_of "$q")"; done)"
  exit 0
fi

# ---------------------------------------------------------------- 2. perplexity
step "2/5 perplexity: -c $ppl_ctx --chunks $ppl_chunks on ${text} (F32 also --chunks $ppl_chunks_quick)"
ppl_log() { # type chunks ctx
  local suffix=""
  [ "$3" = "$ppl_ctx" ] || suffix=-ctx$3
  echo "$logs/ppl-$(lower "$1")-c$2$suffix.log"
}
ppl_run() { # type chunks [ctx]
  local t=$1 n=$2 ctx=${3:-$ppl_ctx} m log
  m=$(gguf_of "$t"); log=$(ppl_log "$t" "$n" "$ctx")
  if need "$log" || ! grep -q 'Final estimate' "$log"; then
    info "llama-perplexity $t, $n chunks of $ctx (this takes a minute or two)..."
    local t0=$SECONDS
    llama llama-perplexity -m "$m" -f "$text" -c "$ctx" --chunks "$n" -t "$threads" >"$log" 2>&1 \
      || { tail -20 "$log" >&2; die "llama-perplexity $t failed"; }
    info "$(grep -o 'Final estimate.*' "$log")  ($((SECONDS - t0)) s)"
  else
    record "$bin/llama-perplexity" -m "$m" -f "$text" -c "$ctx" --chunks "$n" -t "$threads"
    info "exists: $log: $(grep -o 'Final estimate.*' "$log")"
  fi
}
ppl_run F32 "$ppl_chunks_quick"
ppl_run F32 "$ppl_chunks"
[ "$long_ctx" = 0 ] || ppl_run F32 "$ppl_chunks_quick" "$long_ctx"
for q in ${quants[@]+"${quants[@]}"}; do ppl_run "$q" "$ppl_chunks"; done

step "writing $fixture_ppl and $out/perplexity.md"
PEER_PPL_JSON=$fixture_ppl PEER_MODEL=$model PEER_TITLE=$title PEER_LONG_CTX=$long_ctx PYTHONPATH="$gguf_py" \
  python3 - "$peer" "$logs" "$out" "$ppl_ctx" "$ppl_chunks_quick" "$ppl_chunks" F32 ${quants[@]+"${quants[@]}"} <<'PY'
import json, os, re, sys
from collections import Counter
import gguf

peer, logs, out, ctx, quick, full, *types = sys.argv[1:]
ctx, quick, full = int(ctx), int(quick), int(full)

def model_info(path):
    r = gguf.GGUFReader(path)
    size = sum(int(t.n_bytes) for t in r.tensors)          # = llama.cpp's "model size"
    params = sum(int(t.n_elements) for t in r.tensors)     # = llama.cpp's "n_params"
    kinds = Counter(t.tensor_type.name for t in r.tensors)
    return size, params, dict(sorted(kinds.items(), key=lambda kv: -kv[1])), os.path.getsize(path)

def ppl_of(log):
    s = open(log, errors="replace").read()
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", s)
    if not m:
        sys.exit(f"no 'Final estimate' in {log}")
    by_chunk = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", s)]
    return float(m.group(1)), float(m.group(2)), by_chunk

rows = []
for t in types:
    path = os.path.join(peer, f"{os.environ['PEER_MODEL']}-{t.lower()}.gguf")
    size, params, kinds, file_bytes = model_info(path)
    runs = [(quick, ctx), (full, ctx)] if t == "F32" else [(full, ctx)]
    long_ctx = int(os.environ.get("PEER_LONG_CTX", "0"))
    if t == "F32" and long_ctx:
        runs.append((quick, long_ctx))
    for n, c in runs:
        suffix = "" if c == ctx else f"-ctx{c}"
        ppl, err, by_chunk = ppl_of(os.path.join(logs, f"ppl-{t.lower()}-c{n}{suffix}.log"))
        rows.append(dict(type=t, bits_per_weight=round(size * 8 / params, 4), size_bytes=size,
                         file_bytes=file_bytes, n_params=params, ppl=ppl, ppl_err=err,
                         chunks=n, ctx=c, ppl_by_chunk=by_chunk, tensor_types=kinds,
                         model=os.path.basename(path)))

with open(os.environ["PEER_PPL_JSON"], "w") as f:
    json.dump(rows, f, indent=1)
    f.write("\n")

ref = next(r for r in rows if r["type"] == "F32" and r["chunks"] == full)
md = [f"# llama.cpp perplexity, {os.environ['PEER_TITLE']}, Brown corpus",
      "",
      f"`llama-perplexity -c {ctx} --chunks {full}` on `models/brown.txt` ({full} x {ctx} tokens; the first half of each",
      "window is context, the second half is scored). F32 = the original GGUF dequantized; every quant",
      "type is made from that F32 file by `llama-quantize`. size = tensor data (llama.cpp's \"model size\"),",
      "bits/weight = size x 8 / params. Generated by `scripts/peer-reference.sh`.",
      "",
      "| type | bits/weight | size (MiB) | PPL | ± | ΔPPL vs F32 | tensor types |",
      "|---|---:|---:|---:|---:|---:|---|"]
for r in rows:
    if r["chunks"] != full:
        continue
    d = (r["ppl"] / ref["ppl"] - 1) * 100
    kinds = ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items())
    md.append(f"| {r['type']} | {r['bits_per_weight']:.3f} | {r['size_bytes'] / 2**20:.2f} | {r['ppl']:.4f} | "
              f"{r['ppl_err']:.4f} | {d:+.2f}% | {kinds} |")
q = next(r for r in rows if r["type"] == "F32" and r["chunks"] == quick and r["ctx"] == ctx)
md += ["", f"Quick check (CI): F32, `--chunks {quick}`: PPL = {q['ppl']:.4f} ± {q['ppl_err']:.4f}", ""]
for r in rows:
    if r["ctx"] != ctx:
        md += [f"Longer windows: F32, `-c {r['ctx']} --chunks {r['chunks']}`: PPL = {r['ppl']:.4f} ± {r['ppl_err']:.4f}", ""]
with open(os.path.join(out, "perplexity.md"), "w") as f:
    f.write("\n".join(md))
print("\n".join(md))
PY

# ---------------------------------------------------------------- 3. greedy reference
step "3/5 greedy completions of ${#prompts[@]} prompts with the F32 model (-n $n_predict --temp 0)"
for i in "${!prompts[@]}"; do
  p=${prompts[$i]}
  # (a) llama-completion: the text. stdout = the generated text + a final "\n\n" it always prints.
  o=$logs/greedy-$i.completion.txt
  if need "$o"; then
    info "llama-completion: \"$p\""
    llama llama-completion -m "$f32" -p "$p" -n "$n_predict" --temp 0 --top-k 1 -t "$threads" \
      -no-cnv --no-display-prompt --no-escape --verbose-prompt >"$o.part" 2>"$logs/greedy-$i.completion.log" \
      || { tail -20 "$logs/greedy-$i.completion.log" >&2; die "llama-completion failed"; }
    mv "$o.part" "$o"
  else
    record "$bin/llama-completion" -m "$f32" -p "$p" -n "$n_predict" --temp 0 --top-k 1 -t "$threads" \
      -no-cnv --no-display-prompt --no-escape --verbose-prompt
    info "exists: $o"
  fi
  # (b) llama-tokenize: the prompt's token ids (BOS as the model's metadata says: add_bos_token)
  o=$logs/greedy-$i.prompt-ids.txt
  if need "$o"; then
    llama llama-tokenize -m "$f32" -p "$p" --ids --log-disable >"$o.part" 2>/dev/null \
      || die "llama-tokenize failed"
    mv "$o.part" "$o"
  else
    record "$bin/llama-tokenize" -m "$f32" -p "$p" --ids --log-disable
  fi
done

# (c) llama-server /completion with return_tokens: the generated token ids (llama-completion does
#     not print them); its text must equal llama-completion's.
server_needed=0
for i in "${!prompts[@]}"; do need "$logs/greedy-$i.server.json" && server_needed=1; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
record "$bin/llama-server" -m "$f32" -t "$threads" -c 2048 -np 1 --host 127.0.0.1 --port PORT
for i in "${!prompts[@]}"; do
  cmds+=("curl -s http://127.0.0.1:PORT/completion -d '$(python3 -c 'import json,sys; print(json.dumps(dict(prompt=sys.argv[1], n_predict=int(sys.argv[2]), temperature=0, top_k=1, return_tokens=True, cache_prompt=False)))' "${prompts[$i]}" "$n_predict")'")
done
if [ "$server_needed" = 1 ]; then
  info "starting llama-server on 127.0.0.1:$port for the generated token ids"
  nice -n "$nicelvl" "$bin/llama-server" -m "$f32" -t "$threads" -c 2048 -np 1 --host 127.0.0.1 --port "$port" \
    >"$logs/server.log" 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { tail -20 "$logs/server.log" >&2; die "llama-server exited"; }
    sleep 1
  done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || die "llama-server did not come up"
  for i in "${!prompts[@]}"; do
    o=$logs/greedy-$i.server.json
    need "$o" || continue
    info "llama-server /completion: \"${prompts[$i]}\""
    body=$(python3 -c 'import json,sys; print(json.dumps(dict(prompt=sys.argv[1], n_predict=int(sys.argv[2]), temperature=0, top_k=1, return_tokens=True, cache_prompt=False)))' "${prompts[$i]}" "$n_predict")
    curl -sf "http://127.0.0.1:$port/completion" -H 'Content-Type: application/json' -d "$body" >"$o.part" \
      || die "llama-server request failed"
    mv "$o.part" "$o"
  done
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  trap - EXIT
fi

step "writing $fixture_greedy"
made_by=scripts/peer-reference.sh
[ "$model" = smollm2 ] || made_by+=" --model $model"
PEER_F32=$f32 PEER_SRC=$src_model PEER_BOS=$bos PEER_MADE_BY=$made_by \
  python3 - "$logs" "$fixture_greedy" "$n_predict" "${prompts[@]}" <<'PY'
import os
import json, sys
logs, dst, n_predict, *prompts = sys.argv[1:]
n_predict = int(n_predict)
rows, bad = [], 0
for i, p in enumerate(prompts):
    raw = open(f"{logs}/greedy-{i}.completion.txt", "rb").read().decode("utf-8")
    if not raw.endswith("\n\n"):
        sys.exit(f"unexpected llama-completion output for prompt {i}: {raw!r}")
    text = raw[:-2]                      # llama-completion always ends with LOG("\n\n")
    ids = json.loads(open(f"{logs}/greedy-{i}.prompt-ids.txt").read())
    srv = json.load(open(f"{logs}/greedy-{i}.server.json"))
    row = dict(prompt=p, n_predict=n_predict, text=text, prompt_token_ids=ids,
               token_ids=srv["tokens"], n_generated=len(srv["tokens"]),
               stop_reason=srv.get("stop_type", "unknown"))
    if srv["content"] != text:
        bad += 1
        row["server_text"] = srv["content"]
        print(f"WARNING: llama-server text differs from llama-completion for {p!r}:\n  {srv['content']!r}\n  {text!r}",
              file=sys.stderr)
    rows.append(row)
    print(f"    {p!r} -> {text!r}\n      prompt ids {ids}\n      generated ids {srv['tokens']}", file=sys.stderr)
meta = dict(model=f"{os.path.basename(os.environ['PEER_SRC'])} dequantized to F32 ({os.environ['PEER_F32']})",
            generator="llama.cpp llama-completion -n 16 --temp 0 --top-k 1 -no-cnv --no-display-prompt "
                      "(text); llama-server /completion return_tokens (generated ids); llama-tokenize (prompt ids)",
            bos=os.environ["PEER_BOS"],
            made_by=os.environ["PEER_MADE_BY"])
with open(dst, "w") as f:
    json.dump(rows, f, indent=1, ensure_ascii=False)
    f.write("\n")
# provenance goes to a sibling file so that the fixture stays a plain list of records
with open(dst.replace(".json", ".meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")
if bad:
    sys.exit(f"{bad} prompt(s): llama-server and llama-completion disagree")
PY

# ---------------------------------------------------------------- 4. llama-bench
bench_md=$out/llama-bench-cpu.md
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
step "4/5 llama-bench Q8_0, Q4_0: -p 128 -n 64 -t $threads -r 3  (CPU: $cpu)"
q8=$(gguf_of Q8_0); q4=$(gguf_of Q4_0)
if [ "$model" != smollm2 ]; then
  info "skipped: llama-bench runs on SmolLM2's requantized models only"
elif need "$bench_md"; then
  info "running llama-bench (about a minute)..."
  llama llama-bench -m "$q8,$q4" -p 128 -n 64 -t "$threads" -r 3 >"$logs/llama-bench.md" 2>"$logs/llama-bench.log" \
    || { tail -20 "$logs/llama-bench.log" >&2; die "llama-bench failed"; }
  {
    echo "# llama-bench (CPU), SmolLM2-135M-Instruct Q8_0 and Q4_0"
    echo
    echo "CPU: $cpu ($(nproc) cores visible), $threads threads, nice -n $nicelvl (the machine was shared)."
    echo "Date: $(date -u +%Y-%m-%dT%H:%MZ). Models requantized from the F32 dequantization (see README.md)."
    echo
    cat "$logs/llama-bench.md"
  } >"$bench_md.part"
  mv "$bench_md.part" "$bench_md"
  cat "$logs/llama-bench.md" >&2
else
  record "$bin/llama-bench" -m "$q8,$q4" -p 128 -n 64 -t "$threads" -r 3
  info "exists: $bench_md"
fi

# ---------------------------------------------------------------- 5. README
step "5/5 writing $out/README.md"
version=$("$bin/llama-completion" --version 2>&1 | grep -E '^(version|built with)' | tr '\n' ';' | sed 's/;$//; s/;/; /')
bench_build=$(grep -ho 'build: .*' "$logs/llama-bench.md" "$bench_md" 2>/dev/null | head -1 || true)
{
  echo "# llama.cpp reference figures (the peer)"
  echo
  echo "Everything here is produced by \`$made_by\` (idempotent; \`--force\` redoes it)."
  echo "The GGUFs and raw logs go to \`models/peer/\` (git-ignored); this folder and"
  echo "\`$fixture_ppl\` and \`$fixture_greedy\` hold the parsed results ($title)."
  echo
  echo "| file | what |"
  echo "|---|---|"
  echo "| \`perplexity.md\`, \`$fixture_ppl\` | PPL ± error, size, bits/weight of F32 ${quants[*]+and ${quants[*]} }(${ppl_chunks}×${ppl_ctx}), plus F32 with ${ppl_chunks_quick} chunks (CI) |"
  [ "$model" = smollm2 ] && echo "| \`llama-bench-cpu.md\` | llama-bench pp128 / tg64 of Q8_0 and Q4_0, ${threads} threads |"
  echo "| \`$fixture_greedy\` | greedy text + prompt / generated token ids, ${#prompts[@]} prompts, F32 |"
  echo
  echo "## Version"
  echo
  echo "- llama.cpp as vendored in the \`llama-cpp-python==0.3.36\` sdist (PyPI), built by"
  echo "  \`../shared/tools/build-llamacpp.sh cpu\` (Release, AVX2/FMA/F16C, AVX-512 when present, AMX off)."
  echo "- \`llama-completion --version\`: ${version:-unknown}"
  echo "- llama-bench: \`${bench_build:-unknown}\` (the sdist carries no git commit)"
  echo "- CPU: $cpu, $(nproc) cores; every run with \`-t $threads\` under \`nice -n $nicelvl\` on a shared machine"
  echo "  (timings are indicative; perplexities and greedy outputs are deterministic)."
  echo
  echo "## Notes"
  echo
  echo "- F32 = \`$(basename "$src_model")\` dequantized (\`--allow-requantize ... F32\`); all quant types"
  echo "  are made from that F32 file, so their error is relative to it."
  [ "$model" = smollm2 ] && echo "  SmolLM2's dim 576 is not a multiple of 256, so for the K-quants llama-quantize falls back to other"
  [ "$model" = smollm2 ] && echo "  types on many tensors (see \`tensor types\` in perplexity.md)."
  echo "- size_bytes = sum of tensor data (what llama.cpp calls model size), bits_per_weight = size_bytes*8/n_params;"
  echo "  file_bytes = the whole GGUF file."
  echo "- BOS: $bos (perplexity windows and prompts alike)."
  echo "- Greedy: \`--temp 0\` is argmax in llama.cpp (\`--top-k 1\` only makes it explicit). llama-completion's stdout is"
  echo "  the generated text followed by a \"\\n\\n\" it always prints at exit, which is stripped. It does not print the"
  echo "  generated ids, so they come from llama-server's \`/completion\` with \`return_tokens\` on the same F32 model;"
  echo "  the script checks that the server's text equals llama-completion's."
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
info "perplexity: $out/perplexity.md, $fixture_ppl"
info "greedy:     $fixture_greedy"
[ "$model" = smollm2 ] && info "bench:      $bench_md"
info "commands:   $out/README.md"
