// Device-to-device copy bandwidth, as CUDA's bandwidthTest measures it: cudaMemcpy D2D of a
// large buffer, many repetitions, read + write bytes counted. Reference for lowbit's
// "fraction of copy bandwidth".
#include <cstdio>
#include <cuda_runtime.h>
int main() {
  size_t bytes = 1ull << 30; // 1 GiB
  void *a, *b;
  cudaMalloc(&a, bytes); cudaMalloc(&b, bytes);
  cudaMemset(a, 1, bytes);
  cudaEvent_t s, e; cudaEventCreate(&s); cudaEventCreate(&e);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  int reps = 20;
  cudaEventRecord(s);
  for (int i = 0; i < reps; i++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e); cudaEventSynchronize(e);
  float ms; cudaEventElapsedTime(&ms, s, e);
  printf("cuda d2d copy bandwidth (read + write): %.1f GB/s\n", 2.0 * bytes * reps / (ms / 1e3) / 1e9);
  return 0;
}
