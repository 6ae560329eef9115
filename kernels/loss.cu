// CUDA kernels of the loss table (paper section 2.5): one fused pass per sample that gives the
// loss, the gradient with respect to the logits and the correct flag, and the on-device metric
// accumulator. The per-element formulas and guards mirror host/reference/loss.cpp line for line
// (its helpers are file-local, so they are restated here); the derivations are in docs/MATH.md.
#include <cstdint>

#include "barecnn/cuda_check.h"
#include "barecnn/gpu_ops.h"
#include "launch.cuh"
#include "warp_reduce.cuh"

namespace barecnn {

namespace {

constexpr int kLossBlock = 128;  // 4 warps = 4 samples per block
constexpr int kLossRowsPerBlock = kLossBlock / kWarpSize;
constexpr int kMetricsBlock = 256;  // a power of two: the tree reduction halves it

// The reference's guards (host/reference/loss.cpp), with the same values.
constexpr double kMapeEps = 1e-7;
constexpr double kMsleEps = 1.0 / 8388608.0;  // 2^-23: -1 + eps is exact in float

__device__ __forceinline__ float sign(float x) {
  return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);  // subgradient sign(0) = 0
}

// log(1 + e^x) without overflow or loss of precision
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

// 1 / (1 + e^-x), evaluated with an exponent <= 0 only
__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

// Block 128 = 4 warps; one warp per sample row i = blockIdx.x * 4 + warp of logits (N, K),
// row-major. Lane l handles classes l, l + 32, ...: it writes dlogits for those classes and keeps
// a partial loss sum and a partial argmax; the warp combines them with the fixed-order xor
// butterfly (warp_reduce.cuh), so every lane ends with the same, reproducible totals. Lane 0
// writes loss[i] and correct[i]. Any K >= 1.
//
// A label outside [0, K) cannot be reported from here (the reference throws): the row gets a NaN
// loss and NaN gradients, so it is visible in the metrics instead of reading out of bounds.
__global__ void loss_forward_backward_kernel(float* loss, float* dlogits, int32_t* correct, const float* logits,
                                             const int32_t* labels, int N, int K, Loss kind, float grad_scale) {
  const int i = blockIdx.x * kLossRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (i >= N) return;                          // the whole warp leaves together, so the shuffles below stay full-warp
  const float* z = logits + (long long)i * K;  // (K)
  float* dz = dlogits ? dlogits + (long long)i * K : nullptr;  // (K)
  const int c = labels[i];
  if (c < 0 || c >= K) {
    if (dz)
      for (int k = lane; k < K; k += kWarpSize) dz[k] = NAN;
    if (lane == 0) {
      loss[i] = NAN;
      if (correct) correct[i] = 0;
    }
    return;
  }

  // argmax, the first index on ties (as the reference's scan)
  float best_v = -INFINITY;
  int best = 0x7fffffff;
  for (int k = lane; k < K; k += kWarpSize)
    if (z[k] > best_v || best == 0x7fffffff) {
      best_v = z[k];
      best = k;
    }
  warp_argmax(&best_v, &best);

  const float invK = 1.f / float(K);
  float L = 0.f;  // this lane's partial sum, reduced below
  switch (kind) {
    case Loss::SoftmaxCrossEntropy: {
      // L = logsumexp(z) - z_c = m + log sum_k e^(z_k - m) - z_c, m = max z = z[best];
      // dL/dz_k = softmax(z)_k - y_k
      const float m = best_v;
      float sum = 0.f;
      for (int k = lane; k < K; k += kWarpSize) sum += expf(z[k] - m);
      sum = warp_sum(sum);
      L = m + logf(sum) - z[c];
      if (dz)
        for (int k = lane; k < K; k += kWarpSize) dz[k] = grad_scale * (expf(z[k] - m) / sum - (k == c ? 1.f : 0.f));
      break;
    }
    case Loss::BinaryCrossEntropy: {
      // softplus(z_k) - y_k z_k; dL/dz_k = s(z_k) - y_k
      for (int k = lane; k < K; k += kWarpSize) {
        const float y = k == c ? 1.f : 0.f;
        L += softplus(z[k]) - y * z[k];
        if (dz) dz[k] = grad_scale * (sigmoid(z[k]) - y);
      }
      L = warp_sum(L);
      break;
    }
    case Loss::MSE:
    case Loss::L2: {
      // MSE = (1/K) sum (z - y)^2, L2 = sum (z - y)^2; dL/dz_k = 2 (z_k - y_k) [/ K]
      const float scale = kind == Loss::MSE ? invK : 1.f;
      for (int k = lane; k < K; k += kWarpSize) {
        const float diff = z[k] - (k == c ? 1.f : 0.f);
        L += diff * diff;
        if (dz) dz[k] = grad_scale * scale * 2.f * diff;
      }
      L = warp_sum(L) * scale;
      break;
    }
    case Loss::MSLE: {
      // (1/K) sum (log1p(z_k) - log1p(y_k))^2, z_k clamped to >= -1 + eps (gradient 0 there)
      const float lo = -1.f + float(kMsleEps);
      for (int k = lane; k < K; k += kWarpSize) {
        const float y = k == c ? 1.f : 0.f;
        const bool clamped = z[k] < lo;
        const float zc = clamped ? lo : z[k];
        const float diff = log1pf(zc) - log1pf(y);
        L += diff * diff;
        if (dz) dz[k] = clamped ? 0.f : grad_scale * invK * 2.f * diff / (1.f + zc);
      }
      L = warp_sum(L) * invK;
      break;
    }
    case Loss::L1:
    case Loss::MAE: {
      // L1 = sum |z - y|, MAE = (1/K) sum |z - y|; dL/dz_k = sign(z_k - y_k) [/ K]
      const float scale = kind == Loss::MAE ? invK : 1.f;
      for (int k = lane; k < K; k += kWarpSize) {
        const float diff = z[k] - (k == c ? 1.f : 0.f);
        L += fabsf(diff);
        if (dz) dz[k] = grad_scale * scale * sign(diff);
      }
      L = warp_sum(L) * scale;
      break;
    }
    case Loss::MAPE: {
      // (100/K) sum |z_k - y_k| / max(|y_k|, eps); dL/dz_k = (100/K) sign(z_k - y_k) / max(|y_k|, eps)
      for (int k = lane; k < K; k += kWarpSize) {
        const float y = k == c ? 1.f : 0.f;
        const float denom = fmaxf(fabsf(y), float(kMapeEps));
        const float diff = z[k] - y;
        L += fabsf(diff) / denom;
        if (dz) dz[k] = grad_scale * 100.f * invK * sign(diff) / denom;
      }
      L = warp_sum(L) * (100.f * invK);
      break;
    }
  }
  if (lane == 0) {
    loss[i] = L;
    if (correct) correct[i] = best == c ? 1 : 0;
  }
}

// One block of 256 threads (grid = 1): acc[0] += sum(loss (N)), acc[1] += sum(correct (N)).
// Thread t sums elements t, t + 256, ... in ascending order in double; the block then adds the
// 256 partials in a fixed shared-memory tree, and thread 0 updates acc. The order depends only on
// N: deterministic, no atomics, and acc stays on the device (no host sync). A single block is
// enough: this runs once per batch over N = batch size values.
__global__ void accumulate_metrics_kernel(double* acc, const float* loss, const int32_t* correct, int N) {
  BARECNN_STATIC_SHARED(double, loss_part, kMetricsBlock);
  BARECNN_STATIC_SHARED(double, correct_part, kMetricsBlock);
  double ls = 0.0, cs = 0.0;
  for (int i = threadIdx.x; i < N; i += kMetricsBlock) {
    ls += double(loss[i]);
    cs += double(correct[i]);  // integers: exact in double up to 2^53
  }
  loss_part[threadIdx.x] = ls;
  correct_part[threadIdx.x] = cs;
  __syncthreads();
  for (int half = kMetricsBlock / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      loss_part[threadIdx.x] += loss_part[threadIdx.x + half];
      correct_part[threadIdx.x] += correct_part[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    acc[0] += loss_part[0];
    acc[1] += correct_part[0];
  }
}

bool valid_loss(Loss kind) {
  const int k = static_cast<int>(kind);
  return k >= static_cast<int>(Loss::SoftmaxCrossEntropy) && k <= static_cast<int>(Loss::MAPE);
}

}  // namespace

namespace gpu {

// loss (N), dlogits (N, K) or null, correct (N) or null; logits (N, K); labels (N) in [0, K)
void loss_forward_backward(float* loss, float* dlogits, int32_t* correct, const float* logits, const int32_t* labels,
                           int N, int K, Loss kind, float grad_scale, cudaStream_t stream) {
  NvtxRange range("loss_forward_backward");
  BARECNN_ASSERT(N >= 0 && K >= 1, "loss_forward_backward: N = ", N, ", K = ", K);
  BARECNN_ASSERT(valid_loss(kind), "loss_forward_backward: unknown Loss value ", static_cast<int>(kind));
  if (N == 0) return;
  BARECNN_ASSERT(loss != nullptr && logits != nullptr && labels != nullptr, "loss_forward_backward: null pointer");
  const unsigned grid = ceil_div((unsigned)N, (unsigned)kLossRowsPerBlock);
  BARECNN_LAUNCH(loss_forward_backward_kernel, grid, kLossBlock, 0, stream, loss, dlogits, correct, logits, labels, N,
                 K, kind, grad_scale);
  CUDA_CHECK_LAUNCH("loss_forward_backward", fmt("N=", N, " K=", K, " loss=", loss_name(kind)));
}

// acc (2) += (sum of loss (N), sum of correct (N))
void accumulate_metrics(double* acc, const float* loss, const int32_t* correct, int N, cudaStream_t stream) {
  NvtxRange range("accumulate_metrics");
  BARECNN_ASSERT(N >= 0, "accumulate_metrics: N = ", N);
  if (N == 0) return;
  BARECNN_ASSERT(acc != nullptr && loss != nullptr && correct != nullptr, "accumulate_metrics: null pointer");
  BARECNN_LAUNCH(accumulate_metrics_kernel, 1, kMetricsBlock, 0, stream, acc, loss, correct, N);
  CUDA_CHECK_LAUNCH("accumulate_metrics", fmt("N=", N));
}

}  // namespace gpu
}  // namespace barecnn
