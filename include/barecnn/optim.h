// OptimConfig, shared by the CPU reference, the CUDA launchers and the trainer.
#pragma once

namespace barecnn {

// Optimizer settings. SGD (with optional momentum) and Adam, both with L2 weight decay added to
// the gradient, as in torch.optim.SGD / torch.optim.Adam.
enum class Optim : int { SGD, Adam };
struct OptimConfig {
  Optim kind = Optim::SGD;
  float lr = 0.01f;
  float momentum = 0.f;  // SGD only; 0 = the paper's plain gradient descent
  float weight_decay = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // Adam only
};

}  // namespace barecnn
