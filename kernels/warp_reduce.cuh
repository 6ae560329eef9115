// Warp-level reductions shared by the row-wise kernels (softmax, losses).
//
// All of them use the xor butterfly: at each step lane l combines its value with lane l^offset's.
// Floating-point addition and max are commutative, so both lanes of a pair compute the same
// result bit for bit, and after log2(32) steps every lane holds the same total. The order of the
// additions is fixed by the lane numbers, so the result is also the same from run to run
// (deterministic; no atomics).
#pragma once

#include <cuda_runtime.h>

namespace barecnn {

constexpr int kWarpSize = 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Argmax over the warp of (value, index) pairs: the larger value wins, the smaller index on ties,
// so the result is the first index of the maximum, as in the CPU reference's sequential scan
// (for inputs without NaN).
__device__ __forceinline__ void warp_argmax(float* v, int* idx) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    float ov = __shfl_xor_sync(0xffffffffu, *v, offset);
    int oi = __shfl_xor_sync(0xffffffffu, *idx, offset);
    if (ov > *v || (ov == *v && oi < *idx)) {
      *v = ov;
      *idx = oi;
    }
  }
}

}  // namespace barecnn
