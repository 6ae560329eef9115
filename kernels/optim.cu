// CUDA kernel of the optimizer step over the flat parameter buffer: SGD (momentum, weight decay)
// as torch.optim.SGD and Adam as torch.optim.Adam, formula for formula the CPU reference
// host/reference/optim.cpp. One fused elementwise pass: each parameter is read and written once
// per step, together with its optimizer state. Formulas: docs/MATH.md.
#include "barecnn/cuda_check.h"
#include "barecnn/gpu_ops.h"
#include "launch.cuh"

#include <cmath>

namespace barecnn {

namespace {

constexpr int kOptimBlock = 256;

// Block 256, grid-stride loop over the n parameters of the flat buffer; each thread updates
// param[i] and m[i] for its indices (elementwise, so the order of threads does not matter and the
// step is deterministic).
//   g = grad + wd*param; with momentum: m = mu*m + g, param -= lr*m; else param -= lr*g.
// m is only read when use_momentum (it may be null otherwise). With `c` non-null (the training
// step's counters) the rate is read from it.
__global__ void sgd_step_kernel(float* param, const float* grad, float* m, size_t n, float lr, float wd, float mu,
                                bool use_momentum, const gpu::StepCounters* c) {
  if (c) lr = c->lr;
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
// With `c` non-null (the training step's counters) the rate and the bias corrections are read from it.
__global__ void adam_step_kernel(float* param, const float* grad, float* m, float* v, size_t n, float lr, float wd,
                                 float b1, float b2, float eps, float bc1, float bc2, const gpu::StepCounters* c) {
  if (c) lr = c->lr, bc1 = c->bc1, bc2 = c->bc2;
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

// One thread: the step's counters advance (see gpu::StepCounters). The bias corrections are
// computed as the host computes them (double pow, rounded to float once); CUDA's double pow is
// within 2 ulp of glibc's, far below the float rounding that follows. The learning rate is lr_at
// (optim.h), the very function the CPU step calls.
__global__ void begin_step_kernel(gpu::StepCounters* c, OptimConfig cfg, long long steps_per_epoch) {
  c->batch = c->next_batch++;
  const long long t = ++c->global_step;
  c->bc1 = float(1.0 - pow(double(cfg.beta1), double(t)));
  c->bc2 = float(1.0 - pow(double(cfg.beta2), double(t)));
  c->lr = lr_at(cfg, t, steps_per_epoch);
}

}  // namespace

namespace gpu {

void begin_step(StepCounters* c, const OptimConfig& cfg, long long steps_per_epoch, cudaStream_t stream) {
  NvtxRange range("begin_step");
  BARECNN_ASSERT(c != nullptr, "begin_step: no step counters");
  BARECNN_LAUNCH(begin_step_kernel, 1, 1, 0, stream, c, cfg, steps_per_epoch);
  CUDA_CHECK_LAUNCH("begin_step", "");
}

namespace {

// The launch shared by both optimizer_step overloads: the rate and Adam's bias corrections come
// either as values (cfg.lr, bc1, bc2, from the host) or from the device counters `c`.
void launch_optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                           float bc1, float bc2, const StepCounters* c, long long step, cudaStream_t stream) {
  if (n == 0) return;
  BARECNN_ASSERT(param != nullptr && grad != nullptr, "optimizer_step: null parameter or gradient buffer");
  const unsigned grid = grid_for((long long)n, kOptimBlock);
  switch (cfg.kind) {
    case Optim::SGD: {
      const bool use_momentum = cfg.momentum != 0.f;
      BARECNN_ASSERT(!use_momentum || m != nullptr, "optimizer_step: SGD with momentum ", cfg.momentum,
                     " needs a momentum buffer");
      BARECNN_LAUNCH(sgd_step_kernel, grid, kOptimBlock, 0, stream, param, grad, m, n, cfg.lr, cfg.weight_decay,
                     cfg.momentum, use_momentum, c);
      CUDA_CHECK_LAUNCH("optimizer_step (sgd)", fmt("n=", n));
      break;
    }
    case Optim::Adam: {
      BARECNN_ASSERT(m != nullptr && v != nullptr, "optimizer_step: Adam needs both moment buffers");
      BARECNN_LAUNCH(adam_step_kernel, grid, kOptimBlock, 0, stream, param, grad, m, v, n, cfg.lr, cfg.weight_decay,
                     cfg.beta1, cfg.beta2, cfg.eps, bc1, bc2, c);
      CUDA_CHECK_LAUNCH("optimizer_step (adam)", fmt("n=", n, " step=", step));
      break;
    }
    default:
      BARECNN_ASSERT(false, "optimizer_step: unknown optimizer ", static_cast<int>(cfg.kind));
  }
}

}  // namespace

// param (n), grad (n), m (n) momentum buffer / Adam first moment, v (n) Adam second moment
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    long long step, cudaStream_t stream) {
  NvtxRange range("optimizer_step");
  float bc1 = 1.f, bc2 = 1.f;
  if (cfg.kind == Optim::Adam) {
    BARECNN_ASSERT(step >= 1, "optimizer_step: Adam's step count is 1-based, got ", step);
    // Bias corrections once per step, in double on the host (as the reference and torch),
    // rounded to float once.
    bc1 = float(1.0 - std::pow(double(cfg.beta1), double(step)));
    bc2 = float(1.0 - std::pow(double(cfg.beta2), double(step)));
  }
  launch_optimizer_step(param, grad, m, v, n, cfg, bc1, bc2, nullptr, step, stream);
}

// The same with the rate and the bias corrections from the device counters (after begin_step).
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    const StepCounters* c, cudaStream_t stream) {
  NvtxRange range("optimizer_step");
  BARECNN_ASSERT(c != nullptr, "optimizer_step: no step counters");
  launch_optimizer_step(param, grad, m, v, n, cfg, 1.f, 1.f, c, -1, stream);
}

}  // namespace gpu
}  // namespace barecnn
