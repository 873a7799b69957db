#!/usr/bin/env bash
# Coverage-guided fuzzing of the untrusted-input readers (fuzz/README.md):
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Builds the libFuzzer harness of fuzz/ on stable Rust, then runs each target (default: all)
# for SECONDS_PER_TARGET (default 60), starting from the committed seeds in fuzz/corpus/<target>.
# Fails on the first crash (panic, abort, timeout, out-of-memory); the input that crashed is
# kept in fuzz/artifacts/<target>/ for a regression test. New inputs found on the way go to a
# scratch directory, not the committed corpus (FUZZ_KEEP=1 merges them in, minimised).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors ct2 weight_store config protocol)

# What `cargo fuzz build -s none` passes, all stable codegen options: SanitizerCoverage edge
# counters and comparison tracing (the coverage guidance), plus overflow checks and debug
# assertions so arithmetic overflow counts as a crash. `--target` keeps the flags off build
# scripts and proc macros, which are not linked against libFuzzer.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions -Coverflow-checks"
# The workspace target dir: the instrumented build lands in target/<host>/, apart from the
# normal build, and reuses its build scripts and proc macros (the flags skip those).
target_dir=${CARGO_TARGET_DIR:-$root/target}
echo "== fuzz: building ${targets[*]} (target dir $target_dir)"
build_start=$SECONDS
cargo build --release --locked --target "$host" --target-dir "$target_dir" \
  $(printf -- '--bin %s ' "${targets[@]}")
echo "== fuzz: built in $((SECONDS - build_start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  echo "== fuzz: $t for ${secs} s"
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a reader must not balloon.
  # The first corpus directory receives new inputs, so the committed seeds come second.
  dict=()
  [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
  if ! "$target_dir/$host/release/$t" "$scratch/$t" "corpus/$t" "${dict[@]}" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
      > "$scratch/$t.log" 2>&1; then
    tail -n 60 "$scratch/$t.log"
    echo "== fuzz: $t CRASHED; the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  # One line per target: executions, speed, coverage (edges) and features.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log")
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$scratch/$t.log" | tail -n 1)
  echo "== fuzz: $t ok: $runs executions in ${secs} s ($speed/s), $cov"
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    "$target_dir/$host/release/$t" -merge=1 "corpus/$t" "$scratch/$t" > /dev/null 2>&1
  fi
done
