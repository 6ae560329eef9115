// CPU reference of the optimizer step over a flat parameter buffer: the paper's gradient descent
// (section 3), with momentum and weight decay as torch.optim.SGD, and Adam as torch.optim.Adam.
// Elementwise and in a fixed order, so it is deterministic. Formulas: docs/MATH.md.
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"

namespace barecnn::ref {

// param (n), grad (n), m (n) momentum buffer / Adam first moment, v (n) Adam second moment.
template <typename T>
void optimizer_step(T* param, const T* grad, T* m, T* v, size_t n, const OptimConfig& cfg, long long step) {
  const T lr = T(cfg.lr), wd = T(cfg.weight_decay);
  switch (cfg.kind) {
    case Optim::SGD: {
      // g = grad + wd*param; m = momentum*m + g; param -= lr*m   (torch.optim.SGD, dampening 0,
      // no Nesterov). torch starts the buffer at g on step 1; ours starts at zero, which gives the
      // same m = momentum*0 + g = g. With momentum 0 this is the paper's param -= lr*grad.
      const T mu = T(cfg.momentum);
      BARECNN_ASSERT(cfg.momentum == 0.f || m != nullptr, "optimizer_step: SGD with momentum ", cfg.momentum,
                     " needs a momentum buffer");
      for (size_t i = 0; i < n; ++i) {
        const T g = grad[i] + wd * param[i];
        if (cfg.momentum != 0.f) {
          m[i] = mu * m[i] + g;
          param[i] -= lr * m[i];
        } else {
          param[i] -= lr * g;
        }
      }
      break;
    }
    case Optim::Adam: {
      // g = grad + wd*param; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
      // param -= lr * mhat / (sqrt(vhat) + eps), mhat = m / (1 - b1^t), vhat = v / (1 - b2^t).
      BARECNN_ASSERT(m != nullptr && v != nullptr, "optimizer_step: Adam needs both moment buffers");
      BARECNN_ASSERT(step >= 1, "optimizer_step: Adam's step count is 1-based, got ", step);
      // Bias corrections once per step in double (torch computes them as Python floats); the
      // CUDA launcher does the same on the host and passes them to the kernel.
      const T bc1 = T(1.0 - std::pow(double(cfg.beta1), double(step)));
      const T bc2 = T(1.0 - std::pow(double(cfg.beta2), double(step)));
      const T b1 = T(cfg.beta1), b2 = T(cfg.beta2), eps = T(cfg.eps);
      for (size_t i = 0; i < n; ++i) {
        const T g = grad[i] + wd * param[i];
        m[i] = b1 * m[i] + (T(1) - b1) * g;
        v[i] = b2 * v[i] + (T(1) - b2) * g * g;
        const T mhat = m[i] / bc1;
        const T vhat = v[i] / bc2;
        param[i] -= lr * mhat / (std::sqrt(vhat) + eps);
      }
      break;
    }
    default:
      BARECNN_ASSERT(false, "optimizer_step: unknown optimizer ", static_cast<int>(cfg.kind));
  }
}

template void optimizer_step<float>(float*, const float*, float*, float*, size_t, const OptimConfig&, long long);
template void optimizer_step<double>(double*, const double*, double*, double*, size_t, const OptimConfig&, long long);

}  // namespace barecnn::ref
