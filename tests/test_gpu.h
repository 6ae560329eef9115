// The GPU gate of the *Gpu* tests (test_util.h stays free of CUDA headers for the CPU tests).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/gpu.h"
#include "barecnn/rng.h"
#include "test_util.h"

// Skips the test (with the reason) where no GPU works. Use at the top of every *Gpu* test.
#define BARECNN_REQUIRE_GPU()                                                                             \
  do {                                                                                                    \
    if (!::barecnn::gpu_available()) GTEST_SKIP() << "no usable GPU: " << ::barecnn::gpu_status().reason; \
  } while (0)

namespace barecnn::test {

// Helpers of the kernel parity tests (test_gpu_*.cpp).

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Host vector -> new device buffer. GpuContext's stream is a blocking stream, ordered after the
// legacy default stream that cudaMemcpy uses, so kernels on ctx.stream() see the copy; the
// synchronize only makes a failed upload show up here, at the upload, not in a later kernel.
template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& v) {
  DeviceBuffer<T> d(v.size(), "test buffer");
  d.copy_from_host(v.data(), v.size());
  CUDA_CHECK(cudaDeviceSynchronize());
  return d;
}

// Device buffer -> host vector, after the work queued on ctx.stream() has finished.
template <typename T>
std::vector<T> download(const GpuContext& ctx, const DeviceBuffer<T>& d) {
  ctx.sync();
  return d.to_host();
}

inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
inline std::vector<float> random_floats(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  return cast_vec<float>(random_vec(n, seed, lo, hi));
}
inline std::vector<int32_t> random_labels(int N, int K, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> v(N);
  for (auto& c : v) c = int32_t(r.next_u64() % uint64_t(K));
  return v;
}

}  // namespace barecnn::test
