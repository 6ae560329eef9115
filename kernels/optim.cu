// CUDA kernel of the optimizer step over the flat parameter buffer: SGD (momentum, weight decay)
// as torch.optim.SGD and Adam as torch.optim.Adam, formula for formula the CPU reference
// host/reference/optim.cpp. One fused elementwise pass: each parameter is read and written once
// per step, together with its optimizer state. Formulas: docs/MATH.md.
#include "barecnn/ops.h"
#include "launch.cuh"

#include <cmath>

namespace barecnn {

namespace {

constexpr int kOptimBlock = 256;

// Block 256, grid-stride loop over the n parameters of the flat buffer; each thread updates
// param[i] and m[i] for its indices (elementwise, so the order of threads does not matter and the
// step is deterministic).
//   g = grad + wd*param; with momentum: m = mu*m + g, param -= lr*m; else param -= lr*g.
// m is only read when use_momentum (it may be null otherwise).
__global__ void sgd_step_kernel(float* param, const float* grad, float* m, size_t n, float lr, float wd, float mu,
                                bool use_momentum) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = grad[i] + wd * param[i];
    if (use_momentum) {
      const float mi = mu * m[i] + g;
      m[i] = mi;
      param[i] -= lr * mi;
    } else {
      param[i] -= lr * g;
    }
  }
}

// Block 256, grid-stride loop over the n parameters; each thread updates param[i], m[i], v[i]:
//   g = grad + wd*param; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   param -= lr * (m / bc1) / (sqrt(v / bc2) + eps),
// with the bias corrections bc1 = 1 - b1^t, bc2 = 1 - b2^t computed once on the host in double.
__global__ void adam_step_kernel(float* param, const float* grad, float* m, float* v, size_t n, float lr, float wd,
                                 float b1, float b2, float eps, float bc1, float bc2) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = grad[i] + wd * param[i];
    const float mi = b1 * m[i] + (1.f - b1) * g;
    const float vi = b2 * v[i] + (1.f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / bc1;
    const float vhat = vi / bc2;
    param[i] -= lr * mhat / (sqrtf(vhat) + eps);
  }
}

}  // namespace

namespace gpu {

// param (n), grad (n), m (n) momentum buffer / Adam first moment, v (n) Adam second moment
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    long long step, cudaStream_t stream) {
  NvtxRange range("optimizer_step");
  if (n == 0) return;
  BARECNN_ASSERT(param != nullptr && grad != nullptr, "optimizer_step: null parameter or gradient buffer");
  const unsigned grid = grid_for((long long)n, kOptimBlock);
  switch (cfg.kind) {
    case Optim::SGD: {
      const bool use_momentum = cfg.momentum != 0.f;
      BARECNN_ASSERT(!use_momentum || m != nullptr, "optimizer_step: SGD with momentum ", cfg.momentum,
                     " needs a momentum buffer");
      sgd_step_kernel<<<grid, kOptimBlock, 0, stream>>>(param, grad, m, n, cfg.lr, cfg.weight_decay, cfg.momentum,
                                                        use_momentum);
      CUDA_CHECK_LAUNCH("optimizer_step (sgd)", fmt("n=", n));
      break;
    }
    case Optim::Adam: {
      BARECNN_ASSERT(m != nullptr && v != nullptr, "optimizer_step: Adam needs both moment buffers");
      BARECNN_ASSERT(step >= 1, "optimizer_step: Adam's step count is 1-based, got ", step);
      // Bias corrections once per step, in double on the host (as the reference and torch),
      // rounded to float once.
      const float bc1 = float(1.0 - std::pow(double(cfg.beta1), double(step)));
      const float bc2 = float(1.0 - std::pow(double(cfg.beta2), double(step)));
      adam_step_kernel<<<grid, kOptimBlock, 0, stream>>>(param, grad, m, v, n, cfg.lr, cfg.weight_decay, cfg.beta1,
                                                         cfg.beta2, cfg.eps, bc1, bc2);
      CUDA_CHECK_LAUNCH("optimizer_step (adam)", fmt("n=", n, " step=", step));
      break;
    }
    default:
      BARECNN_ASSERT(false, "optimizer_step: unknown optimizer ", static_cast<int>(cfg.kind));
  }
}

}  // namespace gpu
}  // namespace barecnn
