// CPU reference of batch normalization and dropout (docs/MATH.md, "Batch normalization" and
// "Dropout"): the specification that kernels/norm.cu is checked against. In float it is also
// what the CPU trains with: each channel is one OpenMP task, its sums taken in double over a fixed
// order, so the result does not depend on the number of threads.
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/norm.h"
#include "barecnn/ref_ops.h"

namespace barecnn::ref {

// Calls f(offset) for the M = N*S values of channel c of (N, C, S), sample-major: the order of
// batchnorm_offset(e, c, C, S) for e = 0..M-1, walked row by row.
template <typename F>
inline void for_channel(int c, int N, int C, int S, F&& f) {
  for (int n = 0; n < N; ++n) {
    const long long row = (1LL * n * C + c) * S;
    for (int s = 0; s < S; ++s) f(row + s);
  }
}

// Below this many values a call runs on one thread (the small calls of a gradient check).
static constexpr long long kMinParallelWork = 1LL << 15;

template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* invstd, T* running, const T* x, const T* gamma, const T* beta, int N,
                             int C, int S) {
  const long long M = 1LL * N * S;
  BARECNN_ASSERT(N >= 1 && C >= 1 && S >= 1, "batchnorm_forward_train: N=", N, " C=", C, " S=", S);
  BARECNN_ASSERT(M >= 2, "batchnorm_forward_train: a channel of ", M,
                 " value needs at least 2 to train (the variance of one value is undefined)");
#pragma omp parallel for schedule(static) if (M * C >= kMinParallelWork)
  for (int c = 0; c < C; ++c) {
    double sum = 0;
    for_channel(c, N, C, S, [&](long long o) { sum += double(x[o]); });
    const double mu = sum / double(M);
    double sq = 0;
    for_channel(c, N, C, S, [&](long long o) {
      const double d = double(x[o]) - mu;
      sq += d * d;
    });
    const double var = sq / double(M);
    const T m = T(mu), inv = T(1.0 / std::sqrt(var + kBatchNormEps)), g = gamma[c], b = beta[c];
    mean[c] = m;
    invstd[c] = inv;
    for_channel(c, N, C, S, [&](long long o) { y[o] = (x[o] - m) * inv * g + b; });
    if (running) {
      const double k = kBatchNormMomentum, unbiased = var * double(M) / double(M - 1);
      running[c] = T((1 - k) * double(running[c]) + k * mu);
      running[C + c] = T((1 - k) * double(running[C + c]) + k * unbiased);
    }
  }
  if (running) running[2 * C] += T(1);
}

template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* gamma, const T* beta, const T* running, int N, int C, int S) {
  BARECNN_ASSERT(N >= 0 && C >= 1 && S >= 1, "batchnorm_forward_eval: N=", N, " C=", C, " S=", S);
  const long long M = 1LL * N * S;
#pragma omp parallel for schedule(static) if (M * C >= kMinParallelWork)
  for (int c = 0; c < C; ++c) {
    const T m = running[c], inv = T(1.0 / std::sqrt(double(running[C + c]) + kBatchNormEps)), g = gamma[c], b = beta[c];
    for_channel(c, N, C, S, [&](long long o) { y[o] = (x[o] - m) * inv * g + b; });
  }
}

template <typename T>
void batchnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                        const T* invstd, int N, int C, int S) {
  BARECNN_ASSERT(N >= 1 && C >= 1 && S >= 1, "batchnorm_backward: N=", N, " C=", C, " S=", S);
  const long long M = 1LL * N * S;
#pragma omp parallel for schedule(static) if (M * C >= kMinParallelWork)
  for (int c = 0; c < C; ++c) {
    const T m = mean[c], inv = invstd[c];
    double sdy = 0, sdyx = 0;
    for_channel(c, N, C, S, [&](long long o) {
      const T xhat = (x[o] - m) * inv;
      sdy += double(dy[o]);
      sdyx += double(dy[o]) * double(xhat);
    });
    dgamma[c] = T(sdyx);
    dbeta[c] = T(sdy);
    if (!dx) continue;
    const T k = gamma[c] * inv, a = T(sdy / double(M)), b = T(sdyx / double(M));
    for_channel(c, N, C, S, [&](long long o) {
      const T xhat = (x[o] - m) * inv;
      dx[o] = k * (dy[o] - a - xhat * b);
    });
  }
}

// out[i] = in[i] * dropout_scale(p) where the mask keeps element i, else 0: the forward (in = x)
// and the backward (in = dy) are the same map.
template <typename T>
static void dropout_map(const char* op, T* out, const T* in, long long n, float p, uint64_t seed, long long step,
                        int layer) {
  BARECNN_ASSERT(n >= 0 && p >= 0.f && p < 1.f, op, ": n=", n, " p=", p);
  const uint32_t threshold = dropout_threshold(p);
  const T scale = T(dropout_scale(p));
  for (long long i = 0; i < n; ++i) out[i] = dropout_keeps(seed, step, layer, i, threshold) ? in[i] * scale : T(0);
}

template <typename T>
void dropout_forward(T* y, const T* x, long long n, float p, uint64_t seed, long long step, int layer) {
  dropout_map("dropout_forward", y, x, n, p, seed, step, layer);
}

template <typename T>
void dropout_backward(T* dx, const T* dy, long long n, float p, uint64_t seed, long long step, int layer) {
  dropout_map("dropout_backward", dx, dy, n, p, seed, step, layer);
}

#define BARECNN_INSTANTIATE(T)                                                                                      \
  template void batchnorm_forward_train<T>(T*, T*, T*, T*, const T*, const T*, const T*, int, int, int);            \
  template void batchnorm_forward_eval<T>(T*, const T*, const T*, const T*, const T*, int, int, int);               \
  template void batchnorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int, int, int); \
  template void dropout_forward<T>(T*, const T*, long long, float, uint64_t, long long, int);                       \
  template void dropout_backward<T>(T*, const T*, long long, float, uint64_t, long long, int);
BARECNN_INSTANTIATE(float)
BARECNN_INSTANTIATE(double)
#undef BARECNN_INSTANTIATE

}  // namespace barecnn::ref
