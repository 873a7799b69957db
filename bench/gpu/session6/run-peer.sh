#!/usr/bin/env bash
# The peer for the device tool (run from the repository root): llama.cpp built on the device
# from the llama-cpp-python 0.3.36 sdist with CUDA or Vulkan, `llama-bench -p 512 -n 128
# -ngl 99 -r 3` on synthetic GGUFs of the shapes `lowbit bench --synthetic` builds.
# Usage: PEER=cuda|vulkan [PEER_BUDGET=s] [PEER_QUANTS="Q8_0 Q4_0 ..."] run-peer.sh SHAPE...
#
# Carried folders (git-excluded, made here before the call):
#   .peer/: llamacpp-src.tgz (vendor/llama.cpp of the sdist as src/, without docs/ and model
#           files), ggml-vocab-llama-bpe.gguf (from the sdist's models/), make-synthetic-gguf.py
#           (shared/tools), d2d.cu (bench/gpu/final)
#   .gl/:   the Vulkan loader debs (device/README.md)
#   .vk/:   Vulkan only, the build's debs: glslc and libshaderc1 from Debian bookworm
#           (apt-get download glslc libshaderc1), libvulkan-dev and spirv-headers from trixie
#           (bookworm's 1.3.239 headers lack VK_EXT_layer_settings, which ggml-vulkan uses):
#           printf 'deb http://deb.debian.org/debian trixie main\n' > /tmp/t.list; o="-oDir::Etc::SourceList=/tmp/t.list
#           -oDir::Etc::SourceParts=/dev/null -oDir::State::Lists=/tmp/tl -oAPT::Architecture=amd64";
#           mkdir -p /tmp/tl/partial; apt-get $o update; apt-get $o download libvulkan-dev spirv-headers
#           (bookworm's glslc 2023.2 has no GL_KHR_cooperative_matrix nor GL_EXT_integer_dot_product,
#           so llama.cpp builds its Vulkan backend without those shader variants).
# Output: $OUT/peer-$PEER-SHAPE.md
set -u
PEER=${PEER:-cuda}
T0=$(date +%s); left() { echo $(( ${PEER_BUDGET:-560} - ($(date +%s) - T0) )); }
R=$PWD; P=/tmp/peer-$PEER; mkdir -p $P; cd $P
if [ ! -x $P/build/bin/llama-bench ]; then
  rm -rf $P/src; tar xzf $R/.peer/llamacpp-src.tgz -C $P
  cp $R/.peer/make-synthetic-gguf.py $R/.peer/ggml-vocab-llama-bpe.gguf $P/
  command -v cmake >/dev/null || pip install -q cmake ninja 2>&1 | tail -1
  flags="-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  if [ $PEER = vulkan ]; then
    V=/tmp/vkroot/usr; mkdir -p /tmp/vkroot
    for f in $R/.vk/*.deb $R/.gl/libvulkan1_*.deb; do dpkg -x $f /tmp/vkroot; done
    export LD_LIBRARY_PATH=$V/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    flags="$flags -DGGML_VULKAN=ON -DCMAKE_PREFIX_PATH=$V -DVulkan_INCLUDE_DIR=$V/include -DVulkan_LIBRARY=$V/lib/x86_64-linux-gnu/libvulkan.so -DVulkan_GLSLC_EXECUTABLE=$V/bin/glslc"
  else
    flags="$flags -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
  fi
  cmake -S src -B build -G Ninja $flags > build.log 2>&1 || { tail -20 build.log; exit 1; }
  cmake --build build -j16 --target llama-bench llama-quantize >> build.log 2>&1 || { tail -30 build.log; exit 1; }
  echo "built llama.cpp $PEER in $(( $(date +%s) - T0 )) s"
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
    timeout $(left) $B/llama-bench -m $out -p 512 -n 128 -ngl 99 -r 3 -o md 2>/dev/null | tee -a $OUT/peer-$PEER-$shape.md
    rm -f $out
  done
  rm -f $f16
done
echo "done in $(( $(date +%s) - T0 )) s"
