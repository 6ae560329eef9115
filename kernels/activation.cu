// CUDA kernels of the activation table (paper section 2.2) and the row-wise softmax.
//
// The scalar math is act_forward / act_derivative from include/barecnn/activation.h, the very
// functions the CPU reference (host/reference/activation.cpp) applies, so the two can differ only
// by float rounding (CUDA's expf/tanhf/... are within 2 ulp). Formulas: docs/MATH.md.
#include <cstdint>

#include "barecnn/activation.h"
#include "barecnn/cuda_check.h"
#include "barecnn/gpu_ops.h"
#include "launch.cuh"
#include "warp_reduce.cuh"

namespace barecnn {

namespace {

constexpr int kElementwiseBlock = 256;
constexpr int kSoftmaxBlock = 128;  // 4 warps = 4 rows per block
constexpr int kSoftmaxRowsPerBlock = kSoftmaxBlock / kWarpSize;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- elementwise activation --------------------------------------------------------------------

// Block 256, grid-stride loop: each thread computes out[i] = f(inp[i]) for i = tid, tid + stride,
// ... over n floats. No layout assumption (any pointer, any n). `kind` is the same for every
// thread, so the switch inside act_forward does not diverge.
__global__ void activation_forward_kernel(float* out, const float* inp, long long n, Act kind, float alpha) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = act_forward<float>(kind, inp[i], alpha);
}

// Block 256, grid-stride loop over n4 = n / 4 float4 groups: each thread loads 16 bytes of inp
// and stores 16 bytes of out per iteration. Requires both pointers 16-byte aligned and n % 4 == 0
// (checked by the launcher); halves the number of memory instructions of the scalar kernel.
__global__ void activation_forward_vec4_kernel(float4* out, const float4* inp, long long n4, Act kind, float alpha) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 x = inp[i];
    float4 y;
    y.x = act_forward<float>(kind, x.x, alpha);
    y.y = act_forward<float>(kind, x.y, alpha);
    y.z = act_forward<float>(kind, x.z, alpha);
    y.w = act_forward<float>(kind, x.w, alpha);
    out[i] = y;
  }
}

// Block 256, grid-stride loop: each thread computes dinp[i] = dout[i] * f'(inp[i], out[i]) for
// its indices. Any pointers, any n; dinp may alias dout (each element is read before written).
__global__ void activation_backward_kernel(float* dinp, const float* dout, const float* inp, const float* out,
                                           long long n, Act kind, float alpha) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dinp[i] = dout[i] * act_derivative<float>(kind, inp[i], out[i], alpha);
}

// Block 256, grid-stride loop over n4 = n / 4 float4 groups of all four arrays. Requires all four
// pointers 16-byte aligned and n % 4 == 0 (checked by the launcher).
__global__ void activation_backward_vec4_kernel(float4* dinp, const float4* dout, const float4* inp, const float4* out,
                                                long long n4, Act kind, float alpha) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 g = dout[i], x = inp[i], y = out[i];
    float4 d;
    d.x = g.x * act_derivative<float>(kind, x.x, y.x, alpha);
    d.y = g.y * act_derivative<float>(kind, x.y, y.y, alpha);
    d.z = g.z * act_derivative<float>(kind, x.z, y.z, alpha);
    d.w = g.w * act_derivative<float>(kind, x.w, y.w, alpha);
    dinp[i] = d;
  }
}

// ---- softmax -----------------------------------------------------------------------------------

// Block 128 = 4 warps; one warp per row of (N, K), row = blockIdx.x * 4 + warp. Lane l handles
// columns l, l + 32, ... of its row; the row max and the sum of exponentials are combined with
// the xor butterfly (warp_reduce.cuh), a fixed order, so the result is deterministic. Rows are
// contiguous (row-major (N, K)); any K >= 1.
//   out_k = e^(z_k - m) / sum_j e^(z_j - m),  m = max_j z_j  (every exponent <= 0: no overflow)
__global__ void softmax_forward_kernel(float* out, const float* inp, int N, int K) {
  const int row = blockIdx.x * kSoftmaxRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;                       // the whole warp leaves together, so the shuffles below stay full-warp
  const float* z = inp + (long long)row * K;  // (K)
  float* y = out + (long long)row * K;        // (K)

  float m = -INFINITY;
  for (int k = lane; k < K; k += kWarpSize) m = fmaxf(m, z[k]);
  m = warp_max(m);
  float sum = 0.f;
  for (int k = lane; k < K; k += kWarpSize) sum += expf(z[k] - m);
  sum = warp_sum(sum);
  for (int k = lane; k < K; k += kWarpSize) y[k] = expf(z[k] - m) / sum;
}

// Block 128 = 4 warps; one warp per row, as the forward kernel. Each warp computes
// dot = sum_j dout_j y_j for its row (fixed-order butterfly), then
//   dinp_k = y_k (dout_k - dot).
// dinp may alias dout: every lane reads its dout values for the dot product before the warp
// reduction, which all lanes pass before any dinp store.
__global__ void softmax_backward_kernel(float* dinp, const float* dout, const float* out, int N, int K) {
  const int row = blockIdx.x * kSoftmaxRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;
  const float* y = out + (long long)row * K;    // (K)
  const float* dy = dout + (long long)row * K;  // (K)
  float* dz = dinp + (long long)row * K;        // (K)

  float dot = 0.f;
  for (int k = lane; k < K; k += kWarpSize) dot += dy[k] * y[k];
  dot = warp_sum(dot);
  for (int k = lane; k < K; k += kWarpSize) dz[k] = y[k] * (dy[k] - dot);
}

}  // namespace

namespace gpu {

// out (n) = f(inp) (n)
void activation_forward(float* out, const float* inp, long long n, Activation a, cudaStream_t stream) {
  NvtxRange range("activation_forward");
  BARECNN_ASSERT(n >= 0, "activation_forward: n = ", n);
  if (n == 0) return;
  BARECNN_ASSERT(out != nullptr && inp != nullptr, "activation_forward: null pointer");
  if (n % 4 == 0 && aligned16(out) && aligned16(inp)) {
    const long long n4 = n / 4;
    BARECNN_LAUNCH(activation_forward_vec4_kernel, grid_for(n4, kElementwiseBlock), kElementwiseBlock, 0, stream,
                   reinterpret_cast<float4*>(out), reinterpret_cast<const float4*>(inp), n4, a.kind, a.alpha);
  } else {
    BARECNN_LAUNCH(activation_forward_kernel, grid_for(n, kElementwiseBlock), kElementwiseBlock, 0, stream, out, inp, n,
                   a.kind, a.alpha);
  }
  CUDA_CHECK_LAUNCH("activation_forward", fmt("act=", activation_name(a), " n=", n));
}

// dinp (n) = dout (n) * f'(x); x = inp (n), y = out (n) saved by the forward pass
void activation_backward(float* dinp, const float* dout, const float* inp, const float* out, long long n, Activation a,
                         cudaStream_t stream) {
  NvtxRange range("activation_backward");
  if (dinp == nullptr) return;  // the input gradient is not needed (first layer), as the reference
  BARECNN_ASSERT(n >= 0, "activation_backward: n = ", n);
  if (n == 0) return;
  BARECNN_ASSERT(dout != nullptr && inp != nullptr && out != nullptr,
                 "activation_backward: dout, inp and out are all needed");
  if (n % 4 == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(out)) {
    const long long n4 = n / 4;
    BARECNN_LAUNCH(activation_backward_vec4_kernel, grid_for(n4, kElementwiseBlock), kElementwiseBlock, 0, stream,
                   reinterpret_cast<float4*>(dinp), reinterpret_cast<const float4*>(dout),
                   reinterpret_cast<const float4*>(inp), reinterpret_cast<const float4*>(out), n4, a.kind, a.alpha);
  } else {
    BARECNN_LAUNCH(activation_backward_kernel, grid_for(n, kElementwiseBlock), kElementwiseBlock, 0, stream, dinp, dout,
                   inp, out, n, a.kind, a.alpha);
  }
  CUDA_CHECK_LAUNCH("activation_backward", fmt("act=", activation_name(a), " n=", n));
}

// out (N, K) = softmax of each row of inp (N, K)
void softmax_forward(float* out, const float* inp, int N, int K, cudaStream_t stream) {
  NvtxRange range("softmax_forward");
  BARECNN_ASSERT(N >= 0 && K >= 1, "softmax_forward: N = ", N, ", K = ", K);
  if (N == 0) return;
  BARECNN_ASSERT(out != nullptr && inp != nullptr, "softmax_forward: null pointer");
  const unsigned grid = ceil_div((unsigned)N, (unsigned)kSoftmaxRowsPerBlock);
  BARECNN_LAUNCH(softmax_forward_kernel, grid, kSoftmaxBlock, 0, stream, out, inp, N, K);
  CUDA_CHECK_LAUNCH("softmax_forward", fmt("N=", N, " K=", K));
}

// dinp (N, K) from dout (N, K) and the forward output out (N, K)
void softmax_backward(float* dinp, const float* dout, const float* out, int N, int K, cudaStream_t stream) {
  NvtxRange range("softmax_backward");
  if (dinp == nullptr) return;
  BARECNN_ASSERT(N >= 0 && K >= 1, "softmax_backward: N = ", N, ", K = ", K);
  if (N == 0) return;
  BARECNN_ASSERT(dout != nullptr && out != nullptr, "softmax_backward: null pointer");
  const unsigned grid = ceil_div((unsigned)N, (unsigned)kSoftmaxRowsPerBlock);
  BARECNN_LAUNCH(softmax_backward_kernel, grid, kSoftmaxBlock, 0, stream, dinp, dout, out, N, K);
  CUDA_CHECK_LAUNCH("softmax_backward", fmt("N=", N, " K=", K));
}

}  // namespace gpu
}  // namespace barecnn
