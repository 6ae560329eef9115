// What every launcher uses: an NVTX range named after the op, ceil-div grids, checked launches.
#pragma once

#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include "barecnn/cuda_check.h"

// Every launch goes through BARECNN_LAUNCH(kernel, grid, block, smem, stream, args...), in the
// manner of HIP's hipLaunchKernelGGL: under nvcc it is kernel<<<grid, block, smem, stream>>>(args)
// (the launcher checks it with CUDA_CHECK_LAUNCH right after); built against the CUDA emulator
// (tests/emu/, which defines BARECNN_EMU) it runs the grid on the CPU. A template kernel goes in
// parentheses: BARECNN_LAUNCH((k<16, 8>), ...). Shared memory is declared with
// BARECNN_STATIC_SHARED(type, name, count) (a __shared__ array) and BARECNN_DYNAMIC_SHARED(type,
// name) (extern __shared__), so that the emulator can give each block its own and check a launch's
// static plus dynamic shared memory against the device's limit (as HIP-CPU's HIP_DYNAMIC_SHARED).
#ifdef BARECNN_EMU
#define BARECNN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::barecnn_emu::launch(#kernel, kernel, grid, block, smem, stream, ##__VA_ARGS__)
#define BARECNN_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::barecnn_emu::dynamic_shared())
#define BARECNN_STATIC_SHARED(type, name, count) \
  __shared__ type name[count];                   \
  ::barecnn_emu::static_shared(name, sizeof(name))
#else
#define BARECNN_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define BARECNN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define BARECNN_STATIC_SHARED(type, name, count) __shared__ type name[count]
#endif

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
