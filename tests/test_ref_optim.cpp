// The CPU reference of the optimizer step: plain SGD (the paper's update), SGD with momentum and
// weight decay (torch.optim.SGD) and Adam (torch.optim.Adam), each against its recurrence written
// out here, plus float against double.
#include <cmath>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "test_util.h"

namespace barecnn {
namespace {

using test::all_close;

OptimConfig sgd(float lr, float momentum = 0.f, float wd = 0.f) {
  OptimConfig c;
  c.kind = Optim::SGD;
  c.lr = lr;
  c.momentum = momentum;
  c.weight_decay = wd;
  return c;
}
OptimConfig adam(float lr, float wd = 0.f) {
  OptimConfig c;
  c.kind = Optim::Adam;
  c.lr = lr;
  c.weight_decay = wd;
  return c;  // beta1 0.9, beta2 0.999, eps 1e-8: torch's defaults
}

// Runs `steps` steps with gradients grads[s] (n each) from param p0; returns the final parameters.
template <typename T>
std::vector<T> run(const std::vector<T>& p0, const std::vector<std::vector<T>>& grads, const OptimConfig& cfg) {
  std::vector<T> p = p0, m(p0.size(), T(0)), v(p0.size(), T(0));
  for (size_t s = 0; s < grads.size(); ++s)
    ref::optimizer_step(p.data(), grads[s].data(), m.data(), v.data(), p.size(), cfg, (long long)s + 1);
  return p;
}

TEST(OptimRef, PlainSgdIsExactlyParamMinusLrGrad) {
  const size_t n = 37;
  std::vector<float> p = test::cast_vec<float>(test::random_vec(n, 71, -2, 2));
  std::vector<float> g = test::cast_vec<float>(test::random_vec(n, 72, -3, 3));
  const float lr = 0.0375f;
  std::vector<float> expect(n);
  for (size_t i = 0; i < n; ++i) expect[i] = p[i] - lr * g[i];
  // no momentum: the momentum buffer is not needed and may be null
  ref::optimizer_step<float>(p.data(), g.data(), nullptr, nullptr, n, sgd(lr), 1);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(p[i], expect[i]) << "at " << i;
}

TEST(OptimRef, SgdMomentumWeightDecayHandValues) {
  // one parameter p0 = 1, gradients 0.5, -0.25, 1; lr = 0.5, momentum = 0.5: every value is a
  // binary fraction, so float and double are exact.
  //   no decay:  m = 0.5, p = 0.75;  m = 0, p = 0.75;  m = 1, p = 0.25
  //   wd = 0.5:  g = 1, m = 1, p = 0.5;  g = 0, m = 0.5, p = 0.25;  g = 1.125, m = 1.375, p = -0.4375
  const std::vector<std::vector<float>> grads = {{0.5f}, {-0.25f}, {1.f}};
  EXPECT_EQ(run<float>({1.f}, grads, sgd(0.5f, 0.5f))[0], 0.25f);
  EXPECT_EQ(run<float>({1.f}, grads, sgd(0.5f, 0.5f, 0.5f))[0], -0.4375f);
  EXPECT_EQ(run<double>({1.0}, {{0.5}, {-0.25}, {1.0}}, sgd(0.5f, 0.5f, 0.5f))[0], -0.4375);
}

TEST(OptimRef, SgdMomentumWeightDecayMatchesRecurrence) {
  const size_t n = 23;
  const OptimConfig cfg = sgd(0.05f, 0.9f, 0.01f);
  std::vector<double> p0 = test::random_vec(n, 81, -1, 1);
  std::vector<std::vector<double>> grads = {test::random_vec(n, 82, -1, 1), test::random_vec(n, 83, -1, 1),
                                            test::random_vec(n, 84, -1, 1)};
  // torch.optim.SGD (dampening 0, no Nesterov), written out in double
  const double lr = cfg.lr, mu = cfg.momentum, wd = cfg.weight_decay;
  std::vector<double> expect = p0, m(n, 0.0);
  for (int s = 0; s < 3; ++s)
    for (size_t i = 0; i < n; ++i) {
      double g = grads[s][i] + wd * expect[i];
      m[i] = s == 0 ? g : mu * m[i] + g;  // torch: the first buffer value is g itself
      expect[i] -= lr * m[i];
    }
  EXPECT_TRUE(all_close(expect, run(p0, grads, cfg), 1e-15, 1e-14));
}

TEST(OptimRef, AdamFirstStepIsLrTimesSign) {
  // step 1: mhat = g, vhat = g^2, so param -= lr * g / (|g| + eps), about lr * sign(g)
  const size_t n = 19;
  const OptimConfig cfg = adam(0.01f);
  std::vector<double> p0 = test::random_vec(n, 91, -1, 1);
  std::vector<double> g = test::tie_free_vec(n, 92, -2, 2);  // |g| well above eps
  std::vector<double> p = run(p0, {g}, cfg), exact(n), approx(n);
  const double lr = cfg.lr, eps = cfg.eps;
  for (size_t i = 0; i < n; ++i) {
    exact[i] = p0[i] - lr * g[i] / (std::fabs(g[i]) + eps);
    approx[i] = p0[i] - lr * (g[i] > 0 ? 1 : -1);
  }
  EXPECT_TRUE(all_close(exact, p, 1e-15, 1e-14));
  EXPECT_TRUE(all_close(approx, p, 1e-7, 0));
}

TEST(OptimRef, AdamMatchesFormulasOverThreeSteps) {
  const size_t n = 29;
  OptimConfig cfg = adam(0.003f, 0.02f);
  cfg.beta1 = 0.8f;  // not the default, so a swapped beta would show
  cfg.beta2 = 0.99f;
  cfg.eps = 1e-6f;
  std::vector<double> p0 = test::random_vec(n, 101, -1, 1);
  std::vector<std::vector<double>> grads = {test::random_vec(n, 102, -1, 1), test::random_vec(n, 103, -1, 1),
                                            test::random_vec(n, 104, -1, 1)};
  const double lr = cfg.lr, wd = cfg.weight_decay, b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
  std::vector<double> expect = p0, m(n, 0.0), v(n, 0.0);
  for (int t = 1; t <= 3; ++t)
    for (size_t i = 0; i < n; ++i) {
      double g = grads[t - 1][i] + wd * expect[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      expect[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  EXPECT_TRUE(all_close(expect, run(p0, grads, cfg), 1e-15, 1e-13));
  // and the moments it leaves behind are the same m and v
  std::vector<double> p = p0, mm(n, 0.0), vv(n, 0.0);
  for (int t = 1; t <= 3; ++t) ref::optimizer_step(p.data(), grads[t - 1].data(), mm.data(), vv.data(), n, cfg, t);
  EXPECT_TRUE(all_close(m, mm, 1e-16, 1e-14));
  EXPECT_TRUE(all_close(v, vv, 1e-16, 1e-14));
}

TEST(OptimRef, FloatMatchesDouble) {
  const size_t n = 101;
  std::vector<double> p0 = test::random_vec(n, 111, -1, 1);
  std::vector<std::vector<double>> grads;
  for (int s = 0; s < 5; ++s) grads.push_back(test::random_vec(n, 112 + s, -1, 1));
  std::vector<std::vector<float>> gradsf;
  for (auto& g : grads) gradsf.push_back(test::cast_vec<float>(g));
  for (const OptimConfig& cfg : {sgd(0.1f), sgd(0.05f, 0.9f, 1e-3f), adam(1e-3f), adam(1e-3f, 0.1f)}) {
    SCOPED_TRACE(cfg.kind == Optim::SGD ? "sgd" : "adam");
    EXPECT_TRUE(all_close(run(p0, grads, cfg), run(test::cast_vec<float>(p0), gradsf, cfg), 1e-6, 1e-5));
  }
}

TEST(OptimRef, CallerBugsThrow) {
  std::vector<float> p(3, 1.f), g(3, 1.f), m(3, 0.f), v(3, 0.f);
  EXPECT_THROW(ref::optimizer_step<float>(p.data(), g.data(), nullptr, nullptr, 3, sgd(0.1f, 0.9f), 1), Error);
  EXPECT_THROW(ref::optimizer_step<float>(p.data(), g.data(), m.data(), nullptr, 3, adam(0.1f), 1), Error);
  EXPECT_THROW(ref::optimizer_step<float>(p.data(), g.data(), m.data(), v.data(), 3, adam(0.1f), 0), Error);
}

}  // namespace
}  // namespace barecnn
