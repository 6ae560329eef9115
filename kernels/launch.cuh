// What every launcher uses: an NVTX range named after the op, ceil-div grids, checked launches.
#pragma once

#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include "barecnn/error.h"

namespace barecnn {

// NVTX range for the lifetime of the object; shows the op in Nsight Systems.
struct NvtxRange {
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

template <typename A, typename B>
__host__ __device__ constexpr A ceil_div(A a, B b) {
  return (a + A(b) - 1) / A(b);
}

// Grid size for a grid-stride loop over n elements (capped; the loop covers the rest).
inline unsigned grid_for(long long n, int block, long long max_blocks = 65535LL * 8) {
  long long g = ceil_div(n, (long long)block);
  if (g < 1) g = 1;
  return unsigned(g < max_blocks ? g : max_blocks);
}

}  // namespace barecnn
