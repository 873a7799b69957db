#!/usr/bin/env bash
# Kept as run on the device (through the `device` tool, from the repository root): it expects
# .peer/ to hold the lowbit release binary, llamacpp-src.tgz (llama.cpp from the llama-cpp-python
# sdist), make-synthetic-gguf.py, ggml-vocab-llama-bpe.gguf and d2d.cu, and .gl/ the Vulkan loader debs.
# Device run B: the peer, llama.cpp CUDA built from the llama-cpp-python 0.3.36 sdist, on
# synthetic GGUFs of the same shapes lowbit bench --synthetic builds. Args: shapes to run.
set -u
T0=$(date +%s); left() { echo $(( ${PEER_BUDGET:-560} - ($(date +%s) - T0) )); }
P=/tmp/peer; mkdir -p $P; cd $P
if [ ! -x $P/build/bin/llama-bench ]; then
  rm -rf $P/src; tar xzf $OLDPWD/.peer/llamacpp-src.tgz -C $P
  cp $OLDPWD/.peer/make-synthetic-gguf.py $OLDPWD/.peer/ggml-vocab-llama-bpe.gguf $P/
  command -v cmake >/dev/null || pip install -q cmake ninja 2>&1 | tail -1
  cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 > build.log 2>&1 || { tail -20 build.log; exit 1; }
  cmake --build build -j16 --target llama-bench llama-quantize >> build.log 2>&1 || { tail -30 build.log; exit 1; }
  echo "built llama.cpp CUDA in $(( $(date +%s) - T0 )) s"
fi
B=$P/build/bin
for shape in "$@"; do
  case $shape in
    llama-3-8b) args="--preset llama-3-8b";;
    llama-3.2-1b) args="--preset llama-3.2-1b --tie-embeddings";;
    smollm2-135m) args="--n-layer 30 --n-embd 576 --n-ff 1536 --n-head 9 --n-head-kv 3 --rope-base 100000 --tie-embeddings";;
  esac
  f16=$P/$shape-f16.gguf
  [ -f $f16 ] || python3 $P/make-synthetic-gguf.py $f16 --vocab-file $P/ggml-vocab-llama-bpe.gguf $args > /dev/null || { echo "synthetic $shape failed"; continue; }
  for q in ${PEER_QUANTS:-Q8_0 Q4_0 Q3_K_M Q2_K}; do
    [ "$(left)" -lt 60 ] && { echo "out of time before $shape $q"; break 2; }
    out=$P/$shape-$q.gguf
    [ -f $out ] || $B/llama-quantize $f16 $out $q 16 > /dev/null 2>&1 || { echo "quantize $q failed"; continue; }
    timeout $(left) $B/llama-bench -m $out -p 512 -n 128 -ngl 99 -r 3 -o md 2>/dev/null | tee -a $OUT/peer-cuda-$shape.md
    rm -f $out
  done
  rm -f $f16
done
echo "done in $(( $(date +%s) - T0 )) s"
