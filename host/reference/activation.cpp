// CPU reference of the activation table (paper section 2.2) and of the row-wise softmax.
//
// The scalar math lives in include/barecnn/activation.h (act_forward / act_derivative) and is
// shared with kernels/activation.cu, so this file only states how it is applied: elementwise,
// and for the backward pass by the chain rule dinp = dout * f'(x). Formulas: docs/MATH.md.
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"

namespace barecnn {

namespace ref {

// out (n) = f(inp) (n)
template <typename T>
void activation_forward(T* out, const T* inp, long long n, Activation a) {
  BARECNN_ASSERT(n >= 0, "activation_forward: n = ", n);
  const T alpha = T(a.alpha);
  for (long long i = 0; i < n; ++i) out[i] = act_forward<T>(a.kind, inp[i], alpha);
}

// dinp (n) = dout (n) * f'(x), with x = inp (n) and y = out (n) both saved by the forward pass:
// some derivatives are cheapest from x (arctan, relu), others from y (sigmoid, tanh, elu).
template <typename T>
void activation_backward(T* dinp, const T* dout, const T* inp, const T* out, long long n, Activation a) {
  if (dinp == nullptr) return;  // the input gradient is not needed (first layer)
  BARECNN_ASSERT(n >= 0, "activation_backward: n = ", n);
  const T alpha = T(a.alpha);
  for (long long i = 0; i < n; ++i) dinp[i] = dout[i] * act_derivative<T>(a.kind, inp[i], out[i], alpha);
}

// out (N, K) = softmax of each row of inp (N, K):
//   out_k = e^(z_k - m) / sum_j e^(z_j - m),   m = max_j z_j.
// Subtracting the row max changes nothing mathematically but keeps every exponent <= 0, so no
// e^z overflows and the sum is >= 1 (the max term is e^0).
template <typename T>
void softmax_forward(T* out, const T* inp, int N, int K) {
  BARECNN_ASSERT(N >= 0 && K >= 1, "softmax_forward: N = ", N, ", K = ", K);
  for (int i = 0; i < N; ++i) {
    const T* z = inp + static_cast<long long>(i) * K;  // (K)
    T* y = out + static_cast<long long>(i) * K;        // (K)
    T m = z[0];
    for (int k = 1; k < K; ++k) m = z[k] > m ? z[k] : m;
    T sum = 0;
    for (int k = 0; k < K; ++k) {
      y[k] = std::exp(z[k] - m);
      sum += y[k];
    }
    for (int k = 0; k < K; ++k) y[k] /= sum;
  }
}

// dinp (N, K) = J^T dout for each row, with the softmax Jacobian J_jk = y_j (delta_jk - y_k):
//   dinp_k = y_k (dout_k - sum_j dout_j y_j).
// Needs only the forward output y = out (N, K).
template <typename T>
void softmax_backward(T* dinp, const T* dout, const T* out, int N, int K) {
  if (dinp == nullptr) return;
  BARECNN_ASSERT(N >= 0 && K >= 1, "softmax_backward: N = ", N, ", K = ", K);
  for (int i = 0; i < N; ++i) {
    const T* y = out + static_cast<long long>(i) * K;    // (K)
    const T* dy = dout + static_cast<long long>(i) * K;  // (K)
    T* dz = dinp + static_cast<long long>(i) * K;        // (K)
    T dot = 0;
    for (int k = 0; k < K; ++k) dot += dy[k] * y[k];
    for (int k = 0; k < K; ++k) dz[k] = y[k] * (dy[k] - dot);
  }
}

#define BARECNN_INSTANTIATE(T)                                                                   \
  template void activation_forward<T>(T*, const T*, long long, Activation);                      \
  template void activation_backward<T>(T*, const T*, const T*, const T*, long long, Activation); \
  template void softmax_forward<T>(T*, const T*, int, int);                                      \
  template void softmax_backward<T>(T*, const T*, const T*, int, int);
BARECNN_INSTANTIATE(float)
BARECNN_INSTANTIATE(double)
#undef BARECNN_INSTANTIATE

}  // namespace ref
}  // namespace barecnn
