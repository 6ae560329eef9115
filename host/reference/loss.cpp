// CPU reference of the loss table (paper section 2.5) and the accuracy count. The names that
// --loss accepts are in host/core/names.cpp.
//
// Every loss compares logits row z = logits[i] (K) with y = one-hot(labels[i]) (K) and returns
// the per-sample loss, its gradient with respect to the logits, and whether the row's argmax is
// the label. The derivations (and why each guard is needed) are in docs/MATH.md.
#include <algorithm>
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"

namespace barecnn {

namespace ref {

// Guards (see docs/MATH.md):
// MAPE divides by max(|y_k|, kMapeEps). With one-hot targets y_k = 0 for K-1 entries, so those
// terms are 100 |z_k| / kMapeEps: huge, as the paper's definition implies, but finite. 1e-7 is
// the epsilon Keras uses for the same loss.
constexpr double kMapeEps = 1e-7;
// MSLE needs log(1 + z), defined for z > -1 only: z is clamped to >= -1 + kMsleEps, and the
// gradient is zero where the clamp is active (as torch.clamp's gradient). kMsleEps = 2^-23
// (FLT_EPSILON, about 1.19e-7) because -1 + 2^-23 is exact in float, so the float and double
// references (and the kernel) clamp to the very same point: log(1 + z) >= -23 log 2 = -15.94.
constexpr double kMsleEps = 1.0 / 8388608.0;

template <typename T>
static T sign(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));  // subgradient sign(0) = 0
}

// log(1 + e^x) without overflow (e^x for x = 1000) or loss of precision (1 + e^-40 == 1).
template <typename T>
static T softplus(T x) {
  return std::max(x, T(0)) + std::log1p(std::exp(-std::fabs(x)));
}

// 1 / (1 + e^-x), evaluated with an exponent <= 0 only.
template <typename T>
static T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

// loss (N), dlogits (N, K) or null, correct (N) or null; logits (N, K); labels (N) in [0, K).
template <typename T>
void loss_forward_backward(T* loss, T* dlogits, int32_t* correct, const T* logits, const int32_t* labels, int N, int K,
                           Loss kind, T grad_scale) {
  BARECNN_ASSERT(N >= 0 && K >= 1, "loss_forward_backward: N = ", N, ", K = ", K);
  const T invK = T(1) / T(K);
  for (int i = 0; i < N; ++i) {
    const T* z = logits + static_cast<long long>(i) * K;                  // (K)
    T* dz = dlogits ? dlogits + static_cast<long long>(i) * K : nullptr;  // (K)
    const int c = labels[i];
    BARECNN_ASSERT(c >= 0 && c < K, "loss_forward_backward: label ", c, " of sample ", i, " is outside [0, ", K, ")");

    // argmax, the first index on ties
    int best = 0;
    for (int k = 1; k < K; ++k)
      if (z[k] > z[best]) best = k;
    if (correct) correct[i] = best == c ? 1 : 0;

    T L = 0;
    switch (kind) {
      case Loss::SoftmaxCrossEntropy: {
        // L = -log softmax(z)_c = logsumexp(z) - z_c, with logsumexp(z) = m + log sum_k e^(z_k - m)
        // and m = max z: the sum is >= 1, so its log is never log(0), and no e^z overflows.
        // dL/dz_k = softmax(z)_k - y_k.
        const T m = z[best];
        T sum = 0;
        for (int k = 0; k < K; ++k) sum += std::exp(z[k] - m);
        L = m + std::log(sum) - z[c];
        if (dz)
          for (int k = 0; k < K; ++k) dz[k] = grad_scale * (std::exp(z[k] - m) / sum - (k == c ? T(1) : T(0)));
        break;
      }
      case Loss::BinaryCrossEntropy: {
        // -[y log s(z) + (1-y) log(1-s(z))] = log(1 + e^z) - y z = softplus(z) - y z, which never
        // takes log of a sigmoid that rounded to 0 or 1. dL/dz_k = s(z_k) - y_k.
        for (int k = 0; k < K; ++k) {
          const T y = k == c ? T(1) : T(0);
          L += softplus(z[k]) - y * z[k];
          if (dz) dz[k] = grad_scale * (sigmoid(z[k]) - y);
        }
        break;
      }
      case Loss::MSE:
      case Loss::L2: {
        // MSE = (1/K) sum (y - z)^2, L2 = sum (y - z)^2; dL/dz_k = 2 (z_k - y_k) [/ K]
        const T scale = kind == Loss::MSE ? invK : T(1);
        for (int k = 0; k < K; ++k) {
          const T diff = z[k] - (k == c ? T(1) : T(0));
          L += diff * diff;
          if (dz) dz[k] = grad_scale * scale * T(2) * diff;
        }
        L *= scale;
        break;
      }
      case Loss::MSLE: {
        // (1/K) sum (log(1 + z_k) - log(1 + y_k))^2 with z_k clamped to >= -1 + eps;
        // dL/dz_k = (2/K) (log(1+z_k) - log(1+y_k)) / (1 + z_k), and 0 where clamped.
        const T lo = T(-1) + T(kMsleEps);
        for (int k = 0; k < K; ++k) {
          const T y = k == c ? T(1) : T(0);
          const bool clamped = z[k] < lo;
          const T zc = clamped ? lo : z[k];
          const T diff = std::log1p(zc) - std::log1p(y);
          L += diff * diff;
          if (dz) dz[k] = clamped ? T(0) : grad_scale * invK * T(2) * diff / (T(1) + zc);
        }
        L *= invK;
        break;
      }
      case Loss::L1:
      case Loss::MAE: {
        // L1 = sum |y - z|, MAE = (1/K) sum |y - z|; dL/dz_k = sign(z_k - y_k) [/ K], sign(0) = 0
        const T scale = kind == Loss::MAE ? invK : T(1);
        for (int k = 0; k < K; ++k) {
          const T diff = z[k] - (k == c ? T(1) : T(0));
          L += std::fabs(diff);
          if (dz) dz[k] = grad_scale * scale * sign(diff);
        }
        L *= scale;
        break;
      }
      case Loss::MAPE: {
        // (100/K) sum |y_k - z_k| / max(|y_k|, eps); dL/dz_k = (100/K) sign(z_k - y_k) / max(|y_k|, eps)
        for (int k = 0; k < K; ++k) {
          const T y = k == c ? T(1) : T(0);
          const T denom = std::max(std::fabs(y), T(kMapeEps));
          const T diff = z[k] - y;
          L += std::fabs(diff) / denom;
          if (dz) dz[k] = grad_scale * T(100) * invK * sign(diff) / denom;
        }
        L *= T(100) * invK;
        break;
      }
      default:
        BARECNN_ASSERT(false, "loss_forward_backward: unknown Loss value ", static_cast<int>(kind));
    }
    loss[i] = L;
  }
}

template void loss_forward_backward<float>(float*, float*, int32_t*, const float*, const int32_t*, int, int, Loss,
                                           float);
template void loss_forward_backward<double>(double*, double*, int32_t*, const double*, const int32_t*, int, int, Loss,
                                            double);

}  // namespace ref
}  // namespace barecnn
