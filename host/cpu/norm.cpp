// Fast float CPU batch normalization: ref::batchnorm_forward_train and ref::batchnorm_backward
// (host/reference/norm.cpp, docs/MATH.md "Batch normalization") with each channel's double sums
// kept in kLanes interleaved partial sums instead of one running sum. The reference's sum waits
// for every add before the next (one double add's latency per value); the lanes do not, and the
// compiler vectorizes them. Value s of a sample's row of S goes to lane s % kLanes, and the lanes
// are added pairwise at the end: a fixed order that depends on the shape only. One channel per
// OpenMP task, as in the reference, so no result depends on the number of threads.
//
// The sums are of the same double terms as the reference's, in another order: they differ by
// double rounding (~1e-16 relative), far below a float's half ulp, so mean, 1/std, the outputs and
// the gradients round to the reference's floats except where a double sum falls within ~1e-16 of
// a float rounding boundary. Rows shorter than kLanes (S = 1: a batch norm over features) have
// too few values for lanes to pay: the reference itself runs there.
#include <cmath>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/norm.h"
#include "barecnn/ref_ops.h"

namespace barecnn::cpu {

namespace {

constexpr int kLanes = 8;
typedef double V2d __attribute__((vector_size(16)));  // (GCC and Clang: element-wise + and *)
constexpr long long kMinParallel = 1LL << 15;         // as the reference: small calls on one thread

struct Lanes {
  double a[kLanes] = {};
  double total() const { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }
};

// lanes.a[s % kLanes] += term(s) for s = 0..S-1.
template <typename Term>
inline void add_row(Lanes& lanes, int S, Term&& term) {
  int s = 0;
  for (; s + kLanes <= S; s += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes.a[l] += term(s + l);
  for (; s < S; ++s) lanes.a[s % kLanes] += term(s);
}

}  // namespace

void batchnorm_forward_train(float* y, float* mean, float* invstd, float* running, const float* x, const float* gamma,
                             const float* beta, int N, int C, int S) {
  const long long M = 1LL * N * S;
  BARECNN_ASSERT(N >= 1 && C >= 1 && S >= 1, "cpu::batchnorm_forward_train: N=", N, " C=", C, " S=", S);
  BARECNN_ASSERT(M >= 2, "cpu::batchnorm_forward_train: a channel of ", M,
                 " value needs at least 2 to train (the variance of one value is undefined)");
  if (S < kLanes) return ref::batchnorm_forward_train(y, mean, invstd, running, x, gamma, beta, N, C, S);
#pragma omp parallel for schedule(static) if (M * C >= kMinParallel)
  for (int c = 0; c < C; ++c) {
    Lanes sum;
    for (int n = 0; n < N; ++n) {
      const float* r = x + (1LL * n * C + c) * S;
      add_row(sum, S, [&](int s) { return double(r[s]); });
    }
    const double mu = sum.total() / double(M);
    Lanes sq;
    for (int n = 0; n < N; ++n) {
      const float* r = x + (1LL * n * C + c) * S;
      add_row(sq, S, [&](int s) {
        const double d = double(r[s]) - mu;
        return d * d;
      });
    }
    const double var = sq.total() / double(M);
    const float m = float(mu), inv = float(1.0 / std::sqrt(var + kBatchNormEps)), g = gamma[c], b = beta[c];
    mean[c] = m;
    invstd[c] = inv;
    for (int n = 0; n < N; ++n) {
      const long long row = (1LL * n * C + c) * S;
      for (int s = 0; s < S; ++s) y[row + s] = (x[row + s] - m) * inv * g + b;
    }
    if (running) {
      const double k = kBatchNormMomentum, unbiased = var * double(M) / double(M - 1);
      running[c] = float((1 - k) * double(running[c]) + k * mu);
      running[C + c] = float((1 - k) * double(running[C + c]) + k * unbiased);
    }
  }
  if (running) running[2 * C] += 1.f;
}

void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* gamma,
                        const float* mean, const float* invstd, int N, int C, int S) {
  BARECNN_ASSERT(N >= 1 && C >= 1 && S >= 1, "cpu::batchnorm_backward: N=", N, " C=", C, " S=", S);
  if (S < kLanes) return ref::batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, N, C, S);
  const long long M = 1LL * N * S;
#pragma omp parallel for schedule(static) if (M * C >= kMinParallel)
  for (int c = 0; c < C; ++c) {
    const float m = mean[c], inv = invstd[c];
    Lanes sdy, sdyx;
    for (int n = 0; n < N; ++n) {
      const long long row = (1LL * n * C + c) * S;
      const float *xr = x + row, *dr = dy + row;
      // (both sums in one pass, as add_row would take them: value s in lane s % kLanes)
      int s = 0;
      for (; s + kLanes <= S; s += kLanes)
        for (int h = 0; h < kLanes; h += 2) {  // two lanes at a time: one SSE2 register of doubles
          const V2d d = {double(dr[s + h]), double(dr[s + h + 1])};
          const V2d xhat = {double((xr[s + h] - m) * inv), double((xr[s + h + 1] - m) * inv)};
          V2d a = {sdy.a[h], sdy.a[h + 1]}, b = {sdyx.a[h], sdyx.a[h + 1]};
          a += d;
          b += d * xhat;
          sdy.a[h] = a[0], sdy.a[h + 1] = a[1], sdyx.a[h] = b[0], sdyx.a[h + 1] = b[1];
        }
      for (; s < S; ++s) {
        const double d = dr[s], xhat = (xr[s] - m) * inv;
        sdy.a[s % kLanes] += d;
        sdyx.a[s % kLanes] += d * xhat;
      }
    }
    const double tdy = sdy.total(), tdyx = sdyx.total();
    dgamma[c] = float(tdyx);
    dbeta[c] = float(tdy);
    if (!dx) continue;
    const float k = gamma[c] * inv, a = float(tdy / double(M)), b = float(tdyx / double(M));
    for (int n = 0; n < N; ++n) {
      const long long row = (1LL * n * C + c) * S;
      for (int s = 0; s < S; ++s) {
        const float xhat = (x[row + s] - m) * inv;
        dx[row + s] = k * (dy[row + s] - a - xhat * b);
      }
    }
  }
}

}  // namespace barecnn::cpu
