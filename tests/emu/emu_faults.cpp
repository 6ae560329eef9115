// Planted faults that end a process (a sanitizer report) or that depend on the schedule, run by
// test_emu.cpp as a child process: `emu_faults <fault>`. Prints what it saw; the parent checks.
//   race        threads read a neighbour's shared-memory element with no __syncthreads between
//               the write and the read: prints the number of wrong results (TSan: a data race)
//   race-fixed  the same with the barrier: prints 0 wrong results under every schedule
//   oob         a kernel reads one element past the end of a device buffer (ASan)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "launch.cuh"

namespace {

constexpr int kBlock = 64;

template <bool kBarrier>
__global__ void neighbour_kernel(int* out) {
  __shared__ int s[kBlock];
  const int t = int(threadIdx.x);
  s[t] = int(blockIdx.x) * 1000 + t;
  if (kBarrier) __syncthreads();
  out[blockIdx.x * kBlock + t] = s[(t + 1) % kBlock];
}

__global__ void read_past_end_kernel(float* out, const float* in, int n) {
  // Thread i reads in[i + 1]: the last one reads in[n], one past the end.
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i + 1];
}

int check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::printf("%s: %s\n", what, cudaGetErrorString(e));
    return 1;
  }
  return 0;
}

template <bool kBarrier>
int neighbours() {
  const int blocks = 8, n = blocks * kBlock;
  int* d = nullptr;
  if (check(cudaMalloc(&d, n * sizeof(int)), "cudaMalloc")) return 1;
  BARECNN_LAUNCH((neighbour_kernel<kBarrier>), blocks, kBlock, 0, 0, d);
  if (check(cudaGetLastError(), "launch")) return 1;
  std::vector<int> h(size_t(n), 0);
  if (check(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy")) return 1;
  int wrong = 0;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < kBlock; ++t) wrong += h[size_t(b * kBlock + t)] != b * 1000 + (t + 1) % kBlock;
  std::printf("wrong results: %d of %d\n", wrong, n);
  cudaFree(d);
  return 0;
}

int out_of_bounds() {
  const int n = 100;
  float *in = nullptr, *out = nullptr;
  if (check(cudaMalloc(&in, n * sizeof(float)), "cudaMalloc") ||
      check(cudaMalloc(&out, n * sizeof(float)), "cudaMalloc"))
    return 1;
  cudaMemset(in, 0, n * sizeof(float));
  BARECNN_LAUNCH(read_past_end_kernel, 1, 128, 0, 0, out, in, n);
  std::printf("launch returned: %s\n", cudaGetErrorString(cudaGetLastError()));
  cudaFree(in);
  cudaFree(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: emu_faults race|race-fixed|oob\n");
    return 2;
  }
  if (!std::strcmp(argv[1], "race")) return neighbours<false>();
  if (!std::strcmp(argv[1], "race-fixed")) return neighbours<true>();
  if (!std::strcmp(argv[1], "oob")) return out_of_bounds();
  std::fprintf(stderr, "emu_faults: unknown fault '%s'\n", argv[1]);
  return 2;
}
