// OptimConfig, shared by the CPU reference, the CUDA launchers and the trainer, and the learning
// rate schedule (lr_at), shared by the CPU step and the GPU's begin_step kernel.
#pragma once

#include <math.h>

#include "barecnn/shape.h"  // BARECNN_HD

namespace barecnn {

// The learning rate schedule (docs/MATH.md, "Learning-rate schedules"): what --lr-schedule and
// --warmup-epochs set. A plain struct of fixed size: the GPU's begin_step kernel takes it by value.
enum class LrScheduleKind : int { Constant, Step, Cosine };
struct LrSchedule {
  static constexpr int kMaxMilestones = 16;
  LrScheduleKind kind = LrScheduleKind::Constant;
  int num_milestones = 0;               // Step: milestones[0..num_milestones), increasing, >= 1
  int milestones[kMaxMilestones] = {};  // Step: epochs after which the rate is multiplied by gamma
  float gamma = 0.1f;                   // Step
  int epochs = 0;                       // Cosine: the epochs it anneals over (0: the run's, set at its start)
  int warmup_epochs = 0;                // linear warmup over the first warmup_epochs epochs (0: none)
};

// Optimizer settings. SGD (with optional momentum) and Adam, both with L2 weight decay added to
// the gradient, as in torch.optim.SGD / torch.optim.Adam.
enum class Optim : int { SGD, Adam };
struct OptimConfig {
  Optim kind = Optim::SGD;
  float lr = 0.01f;
  float momentum = 0.f;  // SGD only; 0 = the paper's plain gradient descent
  float weight_decay = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // Adam only
  LrSchedule schedule;                              // the rate of each step (lr_at)
};

// The learning rate of optimizer step t (1-based: the t-th step of the run) with `spe` steps per
// epoch: a pure function of its arguments, so a resumed run recomputes it. In double, rounded to
// float once; the constant schedule without warmup returns cfg.lr itself (bitwise the rate of
// before schedules). With i = t - 1 and W = warmup_epochs * spe warmup steps:
//   Step:     lr * gamma^k, k = the milestones M with M <= i / spe (the epochs done before step t)
//   Cosine:   lr * (1 + cos(pi * s / S)) / 2, s = max(0, i - W), S = epochs * spe - W (0 for s >= S)
//   warmup:   for i < W the schedule's rate times (i + 1) / W
// The host and the GPU evaluate the same expression (gamma^k as k products, not pow); only the
// cosine calls a libm function, whose CUDA and glibc results agree to an ulp of double, far below
// the float rounding that follows.
BARECNN_HD float lr_at(const OptimConfig& cfg, long long t, long long spe) {
  const LrSchedule& s = cfg.schedule;
  if (s.kind == LrScheduleKind::Constant && s.warmup_epochs <= 0) return cfg.lr;
  if (spe < 1) spe = 1;
  const long long i = t > 0 ? t - 1 : 0;
  const long long W = (long long)(s.warmup_epochs > 0 ? s.warmup_epochs : 0) * spe;
  double r = double(cfg.lr);
  if (s.kind == LrScheduleKind::Step) {
    const long long done = i / spe;  // epochs done before step t
    for (int j = 0; j < s.num_milestones && j < LrSchedule::kMaxMilestones; ++j)
      if (s.milestones[j] <= done) r *= double(s.gamma);
  } else if (s.kind == LrScheduleKind::Cosine) {
    const long long S = (long long)s.epochs * spe - W;
    const long long k = i > W ? i - W : 0;
    r = k >= S ? 0.0 : r * (1.0 + cos(3.14159265358979323846 * double(k) / double(S))) * 0.5;
  }
  if (i < W) r = r * double(i + 1) / double(W);
  return float(r);
}

}  // namespace barecnn
