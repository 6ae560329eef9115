// The gradient check's verdict on one entry, shared by `barecnn gradcheck` (host/nn/gradcheck.cpp)
// and the op tests (tests/test_util.h): an analytic derivative `a` against the central difference
// (f(x+h) - f(x-h)) / 2h, under Caffe's criterion |a - n| <= tol * max(|a|, |n|, 1), widened only
// by the rounding floor of the difference quotient (a few ulps of f divided by h). An entry within
// h of a kink (ReLU at 0, a max-pool switch, a clamp) has one-sided slopes that disagree: the
// function is not differentiable there, and the entry says nothing. docs/MATH.md, "Whole-net
// gradient check".
#pragma once

#include <algorithm>
#include <cmath>

namespace barecnn {

enum class GradVerdict { Pass, Fail, Kink };

struct GradEntry {
  GradVerdict verdict = GradVerdict::Pass;
  double numeric = 0;  // the central difference
  double rel = 0;      // |a - n| / max(|a|, |n|, 1)
};

// fp = f(x + h), fm = f(x - h), f0 = f(x).
inline GradEntry check_grad_entry(double a, double fp, double fm, double f0, double h, double tol) {
  GradEntry e;
  e.numeric = (fp - fm) / (2 * h);
  const double scale = std::max({std::fabs(a), std::fabs(e.numeric), 1.0});
  const double floor = 8 * 2.2e-16 * std::max(std::fabs(fp), std::fabs(fm)) / h;
  const double err = std::fabs(a - e.numeric);
  e.rel = err / scale;
  if (err <= tol * scale + floor) return e;
  const double right = (fp - f0) / h, left = (f0 - fm) / h;
  e.verdict = std::fabs(right - left) > 100 * tol * scale + 2 * floor ? GradVerdict::Kink : GradVerdict::Fail;
  return e;
}

}  // namespace barecnn
