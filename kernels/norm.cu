// CUDA kernels of batch normalization and dropout (docs/MATH.md, "Batch normalization" and
// "Dropout"). CPU reference: host/reference/norm.cpp; the index math and the dropout mask are the
// shared __host__ __device__ helpers of include/barecnn/norm.h, so both devices drop the very same
// elements.
//
// Batch normalization, the simplest correct version: one block per channel reduces its M = N*S
// values (thread t takes e = t, t + 256, ... in ascending order, then a fixed shared-memory tree
// adds the 256 partial sums: the same order on every run, no atomics), and an elementwise kernel
// applies the per-channel affine map. The sums are in float (the reference's in double: the parity
// tests allow for it).
#include <cstdint>

#include "barecnn/cuda_check.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/norm.h"
#include "launch.cuh"

namespace barecnn {

namespace {

constexpr int kStatsBlock = 256;
constexpr int kElementwiseBlock = 256;

// The total of one value per thread of a kStatsBlock block, added in a fixed tree; every thread
// gets it. `partial` is the block's shared array of kStatsBlock floats.
__device__ float block_sum(float v, float* partial) {
  __syncthreads();  // (a previous call's readers are done with `partial`)
  partial[threadIdx.x] = v;
  __syncthreads();
  for (int half = kStatsBlock / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  return partial[0];
}

// One block per channel c (grid = C): the batch's mean and 1/sqrt(var + eps) of x (N, C, S), the
// variance over the centred values (two passes), and the running statistics (thread 0).
__global__ void batchnorm_stats_kernel(float* mean, float* invstd, float* running, const float* x, int N, int C,
                                       int S) {
  BARECNN_STATIC_SHARED(float, partial, kStatsBlock);
  const int c = blockIdx.x;
  const long long M = (long long)N * S;
  float s = 0.f;
  for (long long e = threadIdx.x; e < M; e += kStatsBlock) s += x[batchnorm_offset(e, c, C, S)];
  const float mu = block_sum(s, partial) / float(M);
  float q = 0.f;
  for (long long e = threadIdx.x; e < M; e += kStatsBlock) {
    const float d = x[batchnorm_offset(e, c, C, S)] - mu;
    q += d * d;
  }
  const float var = block_sum(q, partial) / float(M);
  if (threadIdx.x != 0) return;
  mean[c] = mu;
  invstd[c] = 1.f / sqrtf(var + float(kBatchNormEps));
  if (running) {
    const float k = float(kBatchNormMomentum), unbiased = var * (float(M) / float(M - 1));
    running[c] = (1.f - k) * running[c] + k * mu;
    running[C + c] = (1.f - k) * running[C + c] + k * unbiased;
    if (c == 0) running[2 * C] += 1.f;
  }
}

// Block 256, grid-stride loop over x (N, C, S): y = (x - mean[c]) * inv * gamma[c] + beta[c], with
// inv = scale[c] (training: the batch's 1/std) or, with from_var, 1/sqrt(scale[c] + eps)
// (evaluation: scale is the running variance).
__global__ void batchnorm_apply_kernel(float* y, const float* x, const float* mean, const float* scale, bool from_var,
                                       const float* gamma, const float* beta, long long total, int C, int S) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = int((i / S) % C);
    const float inv = from_var ? 1.f / sqrtf(scale[c] + float(kBatchNormEps)) : scale[c];
    y[i] = (x[i] - mean[c]) * inv * gamma[c] + beta[c];
  }
}

// One block per channel c: dgamma[c] = sum dy * xhat, dbeta[c] = sum dy.
__global__ void batchnorm_backward_reduce_kernel(float* dgamma, float* dbeta, const float* dy, const float* x,
                                                 const float* mean, const float* invstd, int N, int C, int S) {
  BARECNN_STATIC_SHARED(float, partial, kStatsBlock);
  const int c = blockIdx.x;
  const long long M = (long long)N * S;
  const float m = mean[c], inv = invstd[c];
  float sdy = 0.f, sdyx = 0.f;
  for (long long e = threadIdx.x; e < M; e += kStatsBlock) {
    const long long o = batchnorm_offset(e, c, C, S);
    sdy += dy[o];
    sdyx += dy[o] * ((x[o] - m) * inv);
  }
  const float total_dy = block_sum(sdy, partial);
  const float total_dyx = block_sum(sdyx, partial);
  if (threadIdx.x == 0) {
    dgamma[c] = total_dyx;
    dbeta[c] = total_dy;
  }
}

// Block 256, grid-stride loop: dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M).
__global__ void batchnorm_backward_input_kernel(float* dx, const float* dy, const float* x, const float* gamma,
                                                const float* mean, const float* invstd, const float* dgamma,
                                                const float* dbeta, long long total, int C, int S, long long M) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = int((i / S) % C);
    const float inv = invstd[c], xhat = (x[i] - mean[c]) * inv;
    const float a = dbeta[c] / float(M), b = dgamma[c] / float(M);
    dx[i] = gamma[c] * inv * (dy[i] - a - xhat * b);
  }
}

// Block 256, grid-stride loop: out[i] = dropout_keeps(...) ? in[i] * scale : 0, keyed by the
// step's seed and index read from the counters in device memory (a captured graph replays each
// step with its own mask). Forward (in = x) and backward (in = dy) are the same map.
__global__ void dropout_kernel(float* out, const float* in, long long n, uint32_t threshold, float scale,
                               const gpu::StepCounters* c, int layer) {
  const uint64_t seed = c->seed;
  const long long step = c->global_step;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = dropout_keeps(seed, step, layer, i, threshold) ? in[i] * scale : 0.f;
}

void check_shape(const char* op, int N, int C, int S) {
  BARECNN_ASSERT(N >= 1 && C >= 1 && S >= 1, op, ": N=", N, " C=", C, " S=", S);
}

}  // namespace

namespace gpu {

void batchnorm_forward_train(float* y, float* mean, float* invstd, float* running, const float* x, const float* gamma,
                             const float* beta, int N, int C, int S, cudaStream_t stream) {
  NvtxRange range("batchnorm_forward_train");
  check_shape("batchnorm_forward_train", N, C, S);
  const long long M = (long long)N * S, total = M * C;
  BARECNN_ASSERT(M >= 2, "batchnorm_forward_train: a channel of ", M, " value needs at least 2 to train");
  BARECNN_LAUNCH(batchnorm_stats_kernel, C, kStatsBlock, 0, stream, mean, invstd, running, x, N, C, S);
  CUDA_CHECK_LAUNCH("batchnorm_forward_train (stats)", fmt("N=", N, " C=", C, " S=", S));
  BARECNN_LAUNCH(batchnorm_apply_kernel, grid_for(total, kElementwiseBlock), kElementwiseBlock, 0, stream, y, x, mean,
                 invstd, false, gamma, beta, total, C, S);
  CUDA_CHECK_LAUNCH("batchnorm_forward_train (apply)", fmt("N=", N, " C=", C, " S=", S));
}

void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta, const float* running,
                            int N, int C, int S, cudaStream_t stream) {
  NvtxRange range("batchnorm_forward_eval");
  check_shape("batchnorm_forward_eval", N, C, S);
  const long long total = (long long)N * S * C;
  BARECNN_LAUNCH(batchnorm_apply_kernel, grid_for(total, kElementwiseBlock), kElementwiseBlock, 0, stream, y, x,
                 running, running + C, true, gamma, beta, total, C, S);
  CUDA_CHECK_LAUNCH("batchnorm_forward_eval", fmt("N=", N, " C=", C, " S=", S));
}

void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* gamma,
                        const float* mean, const float* invstd, int N, int C, int S, cudaStream_t stream) {
  NvtxRange range("batchnorm_backward");
  check_shape("batchnorm_backward", N, C, S);
  const long long M = (long long)N * S, total = M * C;
  BARECNN_LAUNCH(batchnorm_backward_reduce_kernel, C, kStatsBlock, 0, stream, dgamma, dbeta, dy, x, mean, invstd, N, C,
                 S);
  CUDA_CHECK_LAUNCH("batchnorm_backward (reduce)", fmt("N=", N, " C=", C, " S=", S));
  if (!dx) return;
  BARECNN_LAUNCH(batchnorm_backward_input_kernel, grid_for(total, kElementwiseBlock), kElementwiseBlock, 0, stream, dx,
                 dy, x, gamma, mean, invstd, dgamma, dbeta, total, C, S, M);
  CUDA_CHECK_LAUNCH("batchnorm_backward (input)", fmt("N=", N, " C=", C, " S=", S));
}

namespace {
void launch_dropout(const char* op, float* out, const float* in, long long n, float p, const StepCounters* c, int layer,
                    cudaStream_t stream) {
  BARECNN_ASSERT(n >= 0 && p >= 0.f && p < 1.f, op, ": n=", n, " p=", p);
  BARECNN_ASSERT(c != nullptr, op, ": no step counters (the mask's seed and step)");
  if (n == 0) return;
  BARECNN_LAUNCH(dropout_kernel, grid_for(n, kElementwiseBlock), kElementwiseBlock, 0, stream, out, in, n,
                 dropout_threshold(p), dropout_scale(p), c, layer);
  CUDA_CHECK_LAUNCH(op, fmt("n=", n, " p=", p));
}
}  // namespace

void dropout_forward(float* y, const float* x, long long n, float p, const StepCounters* c, int layer,
                     cudaStream_t stream) {
  NvtxRange range("dropout_forward");
  launch_dropout("dropout_forward", y, x, n, p, c, layer, stream);
}

void dropout_backward(float* dx, const float* dy, long long n, float p, const StepCounters* c, int layer,
                      cudaStream_t stream) {
  NvtxRange range("dropout_backward");
  launch_dropout("dropout_backward", dx, dy, n, p, c, layer, stream);
}

}  // namespace gpu
}  // namespace barecnn
