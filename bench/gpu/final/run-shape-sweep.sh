#!/bin/bash
# Kept as run on the device (through the `device` tool, from the repository root): .peer/ holds
# the matvec bench binary (cargo bench -p lowbit-wgpu --bench matvec --no-run), .gl/ the Vulkan
# loader debs. Decode matvec shape sweep: LANESxROWSxUNROLL forced on every wide matvec, the
# whole 8B int4 layer and each projection as decode runs it (8-bit activations from the SwiGLU).
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export LOWBIT_MATVEC_BENCH=decode
for shape in default 32x8x1 32x8x2 32x4x2 32x16x1 64x8x1 64x8x2 64x4x2 64x4x4 64x16x1 64x2x2 \
    128x8x1 128x4x1 128x4x2 128x2x1 128x1x1 128x16x1 256x4x1 256x8x1 256x2x1 256x1x1; do
  echo "== $shape"
  if [ $shape = default ]; then
    timeout 60 .peer/matvec-bench 2>&1 | grep "^|" | grep -v "^|---\|^| matrix"
  else
    LOWBIT_WGPU_MATVEC=$shape timeout 60 .peer/matvec-bench 2>&1 | grep "^|" | grep -v "^|---\|^| matrix"
  fi
done | tee $OUT/shape-sweep.txt
