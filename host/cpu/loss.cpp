// Fast float CPU softmax cross-entropy: the reference's arithmetic (host/reference/loss.cpp),
// vectorized across samples, with e^x from exp_nearest below instead of glibc's scalar expf.
//
// The reference walks one row at a time: an argmax with a branch per logit, K calls of expf for
// the sum and K more for the gradient, through a switch over the loss table. Here a block of rows
// is transposed so that each step over k is a loop over the samples of the block, which the
// compiler vectorizes (selects, not branches: -fno-trapping-math, CMakeLists.txt): the argmax
// keeps the reference's scan (z[k] > best, so the first index on ties, and a NaN is never
// chosen over an earlier number), the sum of the exponentials runs over k ascending from 0 as the
// reference's, each exponential is computed once and used for the sum and the gradient, and the
// loss (m + log(sum)) - z[c] takes glibc's logf, once a row. Every value matches the float
// reference's except where exp_nearest and expf round e^x differently (it is the nearest float
// but within ~1e-14 of a tie; glibc's expf is within 0.502 ulp).
//
// Other losses of the table call the reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"

namespace barecnn::cpu {

// ---- e^x: the float nearest to e^x, computed in double ----
// x is clamped to [-150, 100] (e^x is 0 in float below -103.98 and inf above 88.73; the clamp
// keeps n below small), then e^x = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 (|r| <= 0.347,
// error ~1e-14 from ln 2's rounding), e^r by its Taylor series to r^11 (remainder < 1e-13
// relative), 2^n built in the exponent bits; the double result is rounded to float once. No
// FMA (this file is built with -ffp-contract=off, CMakeLists.txt), so the baseline, AVX2 and
// AVX-512 builds below, on any machine, give the same bits. Edges as
// expf: NaN -> NaN, -inf -> 0, +inf -> inf, +-0 -> 1; results below the float range round to a
// subnormal or 0 (0 under FTZ, as expf's).
[[gnu::always_inline]] inline float exp_nearest_one(float xf) {
  double x = xf;
  x = x < -150.0 ? -150.0 : x;  // selects keep a NaN a NaN
  x = x > 100.0 ? 100.0 : x;
  const double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double kInvLn2 = 1.4426950408889634, kLn2 = 0.6931471805599453;
  const double t = x * kInvLn2 + kShift;  // n in the low bits of t's mantissa
  const double n = t - kShift;
  const double r = x - n * kLn2;
  double p = 1.0 / 39916800.0;  // 1/11!
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits = (bits << 52) + (uint64_t(1023) << 52);  // 2^n: n + 1023 in the exponent (|n| <= 217)
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return float(p * scale);
}

void detail::exp_nearest(float* out, const float* in, long long n) {
#pragma omp simd
  for (long long i = 0; i < n; ++i) out[i] = exp_nearest_one(in[i]);
}

// ---- softmax cross-entropy over a block of rows ----
static constexpr int kLossRows = 64;  // rows per block: the transposed block stays in L1

// Rows [0, R) of the block (R <= kLossRows); scratch: 2 K kLossRows floats.
[[gnu::always_inline]] inline void softmax_xent_block(float* loss, float* dlogits, int32_t* correct,
                                                      const float* logits, const int32_t* labels, int R, int K,
                                                      float grad_scale, float* scratch) {
  float* zt = scratch;                          // (K, kLossRows): zt[k][i] = logits[i][k]
  float* et = scratch + size_t(K) * kLossRows;  // (K, kLossRows): e^(z - m)
  alignas(64) float best[kLossRows], sum[kLossRows];
  alignas(64) int32_t besti[kLossRows];
  for (int i = 0; i < R; ++i) {
    for (int k = 0; k < K; ++k) zt[k * kLossRows + i] = logits[(long long)i * K + k];
  }
  // argmax: the reference's scan, each row's best so far in a lane
#pragma omp simd
  for (int i = 0; i < R; ++i) best[i] = zt[i], besti[i] = 0;
  for (int k = 1; k < K; ++k) {
    const float* z = zt + k * kLossRows;
#pragma omp simd
    for (int i = 0; i < R; ++i) {
      const bool more = z[i] > best[i];
      best[i] = more ? z[i] : best[i];
      besti[i] = more ? k : besti[i];
    }
  }
  if (correct) {
    for (int i = 0; i < R; ++i) correct[i] = besti[i] == labels[i] ? 1 : 0;
  }
  // sum over k ascending of e^(z_k - m), m = z[best]
#pragma omp simd
  for (int i = 0; i < R; ++i) sum[i] = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* z = zt + k * kLossRows;
    float* e = et + k * kLossRows;
#pragma omp simd
    for (int i = 0; i < R; ++i) {
      e[i] = exp_nearest_one(z[i] - best[i]);
      sum[i] += e[i];
    }
  }
  for (int i = 0; i < R; ++i) loss[i] = best[i] + std::log(sum[i]) - logits[(long long)i * K + labels[i]];
  if (!dlogits) return;
  // dL/dz_k = grad_scale (e_k / sum - y_k), written back row-major
  for (int k = 0; k < K; ++k) {
    float* e = et + k * kLossRows;
#pragma omp simd
    for (int i = 0; i < R; ++i) e[i] = grad_scale * (e[i] / sum[i] - (labels[i] == k ? 1.f : 0.f));
  }
  for (int i = 0; i < R; ++i)
    for (int k = 0; k < K; ++k) dlogits[(long long)i * K + k] = et[k * kLossRows + i];
}

// The block compiled three times: the wider vectors hold more doubles of exp_nearest at once
// (the exp is most of the loss: 64 x 10 took 2.9 us with SSE2, 1.2 us with AVX-512); the same operations in
// each, so the same bits.
using BlockFn = void (*)(float*, float*, int32_t*, const float*, const int32_t*, int, int, float, float*);
static void block_generic(float* loss, float* dlogits, int32_t* correct, const float* logits, const int32_t* labels,
                          int R, int K, float grad_scale, float* scratch) {
  softmax_xent_block(loss, dlogits, correct, logits, labels, R, K, grad_scale, scratch);
}
[[gnu::target("avx2")]] static void block_avx2(float* loss, float* dlogits, int32_t* correct, const float* logits,
                                               const int32_t* labels, int R, int K, float grad_scale, float* scratch) {
  softmax_xent_block(loss, dlogits, correct, logits, labels, R, K, grad_scale, scratch);
}
[[gnu::target("avx512f")]] static void block_avx512(float* loss, float* dlogits, int32_t* correct, const float* logits,
                                                    const int32_t* labels, int R, int K, float grad_scale,
                                                    float* scratch) {
  softmax_xent_block(loss, dlogits, correct, logits, labels, R, K, grad_scale, scratch);
}

void loss_forward_backward(float* loss, float* dlogits, int32_t* correct, const float* logits, const int32_t* labels,
                           int N, int K, Loss kind, float grad_scale) {
  if (kind != Loss::SoftmaxCrossEntropy)
    return ref::loss_forward_backward<float>(loss, dlogits, correct, logits, labels, N, K, kind, grad_scale);
  BARECNN_ASSERT(N >= 0 && K >= 1, "cpu::loss_forward_backward: N = ", N, ", K = ", K);
  for (int i = 0; i < N; ++i)
    BARECNN_ASSERT(labels[i] >= 0 && labels[i] < K, "cpu::loss_forward_backward: label ", labels[i], " of sample ", i,
                   " is outside [0, ", K, ")");
  const CpuIsa isa = cpu_isa();
  const BlockFn block = isa == CpuIsa::Avx512 ? block_avx512 : isa == CpuIsa::Avx2 ? block_avx2 : block_generic;
  static thread_local std::vector<float> scratch;
  if (scratch.size() < size_t(2) * K * kLossRows) scratch.resize(size_t(2) * K * kLossRows);
  for (int i0 = 0; i0 < N; i0 += kLossRows) {
    const long long off = (long long)i0 * K;
    block(loss + i0, dlogits ? dlogits + off : nullptr, correct ? correct + i0 : nullptr, logits + off, labels + i0,
          std::min(kLossRows, N - i0), K, grad_scale, scratch.data());
  }
}

}  // namespace barecnn::cpu
