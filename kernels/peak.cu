// The card's measured peaks, the roofline `barecnn bench` holds each layer to (include/barecnn/peak.h):
// FP32 FMA throughput on the CUDA cores and DRAM copy bandwidth. Each is a kernel that does nothing
// but the one thing, sized to fill every SM, timed with CUDA events after a warm-up, best of a few.
#include <cuda_runtime.h>

#include <algorithm>

#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/error.h"
#include "barecnn/peak.h"
#include "launch.cuh"

namespace barecnn {

namespace {

constexpr int kPeakBlock = 256;
constexpr int kPeakRuns = 5;  // timed runs; the best one counts

// ---- FP32 FMA throughput -----------------------------------------------------------------------

// Independent FMA chains per thread: FFMA's latency is about 4 cycles and each SM sub-partition
// issues one warp instruction per cycle, so a warp needs >= 4 independent FMAs in flight; 8 leaves
// room and keeps registers low enough for full occupancy.
constexpr int kFmaChains = 8;
// Loop iterations unrolled: 16 x 8 = 128 FFMAs per pass against ~3 loop-control instructions, which
// would otherwise take issue slots from the FMAs.
constexpr int kFmaUnroll = 16;
constexpr int kFmaIters = 1 << 15;  // per thread; a multiple of kFmaUnroll

// Block 256, grid = every SM filled to its occupancy limit. Each thread runs kFmaChains chains of
// x = x * a + b for `iters` steps (2 FLOPs each) and writes the chains' sum, so the compiler cannot
// drop the work. a and b are kernel arguments, so nothing folds at compile time; a = 1 - b keeps
// every chain finite (its fixed point is 1).
__global__ void fma_peak_kernel(float* out, float a, float b, int iters) {
  float x[kFmaChains];
#pragma unroll
  for (int c = 0; c < kFmaChains; ++c) x[c] = float(threadIdx.x + c) * 1e-3f;
#pragma unroll kFmaUnroll
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int c = 0; c < kFmaChains; ++c) x[c] = fmaf(x[c], a, b);
  }
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < kFmaChains; ++c) s += x[c];
  out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// ---- DRAM bandwidth ----------------------------------------------------------------------------

constexpr int kCopyUnroll = 4;  // float4 loads in flight per thread before the stores

// Block 256, grid = every SM filled. Grid-stride copy of n4 float4 (16-byte) elements; each thread
// issues kCopyUnroll independent 16-byte loads before storing them, so enough requests are in flight
// to cover DRAM latency. Both pointers come from cudaMalloc (256-byte aligned).
__global__ void copy_peak_kernel(float4* __restrict__ dst, const float4* __restrict__ src, long long n4) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += kCopyUnroll * stride) {
    float4 v[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u)
      if (i + u * stride < n4) v[u] = src[i + u * stride];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u)
      if (i + u * stride < n4) dst[i + u * stride] = v[u];
  }
}

// ---- timing ------------------------------------------------------------------------------------

// A pair of CUDA events, destroyed with the object.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~EventPair() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
};

// Runs `launch` once untimed (clocks up, code loaded), then kPeakRuns times, each timed alone on
// the legacy default stream; returns the shortest time in seconds.
template <typename F>
double best_seconds(F launch) {
  EventPair ev;
  launch();
  CUDA_CHECK(cudaDeviceSynchronize());
  float best_ms = 0;
  for (int r = 0; r < kPeakRuns; ++r) {
    CUDA_CHECK(cudaEventRecord(ev.start, 0));
    launch();
    CUDA_CHECK(cudaEventRecord(ev.stop, 0));
    CUDA_CHECK(cudaEventSynchronize(ev.stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
    if (r == 0 || ms < best_ms) best_ms = ms;
  }
  BARECNN_ASSERT(best_ms > 0, "a peak-measuring kernel took no measurable time");
  return best_ms * 1e-3;
}

// Blocks of kPeakBlock threads that fill every SM of the current device to the kernel's occupancy.
template <typename K>
int filling_grid(K kernel) {
  int dev = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPeakBlock, 0));
  return sms * std::max(per_sm, 1);
}

double fma_peak() {
  NvtxRange range("peak_fp32_fma");
  const int grid = filling_grid(fma_peak_kernel);
  DeviceBuffer<float> out(size_t(grid) * kPeakBlock, "peak FMA output");  // (grid * 256)
  const float b = 1e-4f, a = 1.f - b;
  double s = best_seconds([&] {
    BARECNN_LAUNCH(fma_peak_kernel, grid, kPeakBlock, 0, 0, out.data(), a, b, kFmaIters);
    CUDA_CHECK_LAUNCH("fma_peak_kernel", fmt("grid ", grid, " x ", kPeakBlock, ", ", kFmaIters, " iterations"));
  });
  double flops = 2.0 * kFmaChains * double(kFmaIters) * double(grid) * kPeakBlock;
  return flops / s;
}

double bandwidth_peak() {
  NvtxRange range("peak_bandwidth");
  // Two buffers of 512 MiB (a 50 MiB L2 cannot hide them), or a quarter of the free memory each
  // on a smaller card.
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  size_t bytes = std::min<size_t>(size_t(512) << 20, free_b / 4) / 16 * 16;
  BARECNN_ASSERT(bytes >= 16, "no device memory free for the bandwidth test (", free_b, " bytes free)");
  const long long n4 = (long long)(bytes / 16);
  DeviceBuffer<float4> src(size_t(n4), "peak bandwidth source");       // (n4)
  DeviceBuffer<float4> dst(size_t(n4), "peak bandwidth destination");  // (n4)
  src.memset_zero();                                                   // pages touched, contents defined
  const int grid = filling_grid(copy_peak_kernel);
  double s = best_seconds([&] {
    BARECNN_LAUNCH(copy_peak_kernel, grid, kPeakBlock, 0, 0, dst.data(), src.data(), n4);
    CUDA_CHECK_LAUNCH("copy_peak_kernel", fmt(n4, " float4"));
  });
  return 2.0 * double(bytes) / s;  // each byte read once and written once
}

}  // namespace

namespace gpu {

// Function-local statics: measured once, thread-safely, on first use. A failed measurement throws
// and is retried on the next call.
double measure_peak_fp32_flops() {
  static const double v = fma_peak();
  return v;
}

double measure_peak_bandwidth() {
  static const double v = bandwidth_peak();
  return v;
}

}  // namespace gpu

}  // namespace barecnn
